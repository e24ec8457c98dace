//! Authentication and authorisation behind the [`AuthBackend`] trait.
//!
//! Backends are chained as in RabbitMQ's `auth_backends`: the first backend that recognises a
//! user authenticates it and then answers every authorisation question for that login. The
//! internal user database ([`InternalUsers`]) is the default backend and is registered through
//! the same trait a plugin would use. Adapters keep the resulting [`Principal`] per connection
//! and cache its answers, so the publish path does not call a backend per message.

mod cache;
mod internal;
mod refusals;

use std::net::IpAddr;
use std::sync::Arc;

pub use cache::PermissionCache;
pub use internal::{InternalUsers, PasswordHash, UserRecord, VhostPermissions};
pub use refusals::{REFUSAL_LOG_WINDOW, RefusalLog};

/// The three kinds of permission RabbitMQ knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange, bind a queue (write on the queue).
    Write,
    /// Consume from a queue, bind from an exchange (read on the exchange).
    Read,
}

/// What a permission is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// An exchange.
    Exchange,
    /// A queue.
    Queue,
}

impl ResourceKind {
    /// The word used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Exchange => "exchange",
            ResourceKind::Queue => "queue",
        }
    }
}

impl Permission {
    /// The word used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

/// A login attempt.
#[derive(Debug, Clone)]
pub struct LoginRequest<'a> {
    /// The user name.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
    /// The client's address (loopback-only users are refused elsewhere).
    pub peer: Option<IpAddr>,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Tags such as `administrator` or `management`.
    pub tags: Vec<String>,
}

/// A backend's answer to a login.
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// The backend knows the user and the credentials are right.
    Authenticated(User),
    /// The backend knows the user and refuses the login, for the reason given.
    Refused(String),
    /// The backend does not know the user; the next backend is asked.
    Unknown,
}

/// An authentication and authorisation backend.
pub trait AuthBackend: Send + Sync + 'static {
    /// The backend's name, for logs.
    fn name(&self) -> &str;

    /// Checks credentials.
    fn authenticate(&self, request: &LoginRequest<'_>) -> AuthOutcome;

    /// Whether `user` may use virtual host `vhost`.
    fn check_vhost(&self, user: &User, vhost: &str) -> bool;

    /// Whether `user` may do `permission` on the resource `name` of kind `kind` in `vhost`.
    fn check_resource(
        &self,
        user: &User,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool;
}

/// A logged-in user and the backend that answers for it.
#[derive(Clone)]
pub struct Principal {
    /// The user.
    pub user: User,
    backend: Arc<dyn AuthBackend>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("user", &self.user.name)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Principal {
    /// Whether `other` is the same user (name and tags) answered for by the same backend:
    /// one may stand for the other (connections of one user can share one principal).
    pub fn same_as(&self, other: &Principal) -> bool {
        self.user == other.user && Arc::ptr_eq(&self.backend, &other.backend)
    }

    /// Whether the user may use `vhost`.
    pub fn check_vhost(&self, vhost: &str) -> bool {
        self.backend.check_vhost(&self.user, vhost)
    }

    /// Whether the user may do `permission` on a resource.
    pub fn check_resource(
        &self,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool {
        // RabbitMQ checks the default exchange under the name `amq.default`.
        let name = if kind == ResourceKind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        self.backend
            .check_resource(&self.user, vhost, kind, name, permission)
    }
}

/// The chain of backends, asked in order.
#[derive(Clone, Default)]
pub struct AuthChain {
    backends: Vec<Arc<dyn AuthBackend>>,
}

impl AuthChain {
    /// An empty chain (refuses everyone).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a backend.
    pub fn push(&mut self, backend: Arc<dyn AuthBackend>) {
        self.backends.push(backend);
    }

    /// Authenticates with the first backend that knows the user.
    pub fn authenticate(&self, request: &LoginRequest<'_>) -> Result<Principal, String> {
        for backend in &self.backends {
            match backend.authenticate(request) {
                AuthOutcome::Authenticated(user) => {
                    return Ok(Principal {
                        user,
                        backend: backend.clone(),
                    });
                }
                AuthOutcome::Refused(reason) => return Err(reason),
                AuthOutcome::Unknown => continue,
            }
        }
        Err(format!("user '{}' - invalid credentials", request.username))
    }
}
