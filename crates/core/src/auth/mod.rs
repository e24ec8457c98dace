//! Authentication and authorisation behind the async [`AuthBackend`] trait, asked through one
//! [`Authorizer`] for every protocol.
//!
//! Backends are chained as in RabbitMQ's `auth_backends`: each is asked in order until one
//! decides. A backend answers a login with [`LoginOutcome::Allow`], [`LoginOutcome::Deny`],
//! [`LoginOutcome::Next`] ("not mine, ask the next backend") or
//! [`LoginOutcome::Unavailable`] (it cannot answer now: the login is refused and the reason
//! logged). Authorisation questions (may this user use this vhost, configure/write/read this
//! resource, write/read this routing key on this topic exchange) go first to the backend that
//! authenticated the user, then to the backends after it while they answer
//! [`Decision::Next`]; nobody deciding means no.
//!
//! The [`Authorizer`] caches every answer, for all protocols alike, for a configurable time
//! (`[auth] cache_ttl_ms`), so the publish path does not ask a backend per message; each
//! connection keeps a small memo in front of it ([`AccessCache`]) that looks answers up by
//! `&str`, without allocating. The internal user database ([`InternalUsers`]) is registered
//! through the same trait a plugin uses.

mod authorizer;
mod cache;
mod internal;
mod password;
mod refusals;
mod topic;

use std::net::SocketAddr;

pub use async_trait::async_trait;
pub use authorizer::{Authorizer, LoginRefused, Principal};
pub use cache::AccessCache;
pub use internal::{InternalUsers, UserRecord, VhostPermissions};
pub use password::{ARGON2_ALGORITHM, PasswordHash, SHA256_ALGORITHM};
pub use refusals::{REFUSAL_LOG_WINDOW, RefusalLog};
pub use topic::{TopicPermission, TopicVariables, topic_refusal};

/// The three kinds of permission RabbitMQ knows.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange, bind a queue (write on the queue).
    Write,
    /// Consume from a queue, bind from an exchange (read on the exchange).
    Read,
}

impl Permission {
    /// The word used in error messages and by RabbitMQ's HTTP backend.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

/// What a permission is asked for.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// An exchange.
    Exchange,
    /// A queue.
    Queue,
}

impl ResourceKind {
    /// The word used in error messages and by RabbitMQ's HTTP backend.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Exchange => "exchange",
            ResourceKind::Queue => "queue",
        }
    }
}

/// The protocol a client speaks.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// AMQP 0-9-1.
    Amqp,
    /// MQTT 3.1.1 (over TCP or WebSocket).
    Mqtt,
    /// STOMP (over TCP or WebSocket).
    Stomp,
    /// The management HTTP API.
    Http,
}

impl Protocol {
    /// The protocol's name in logs and backend requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Stomp => "stomp",
            Protocol::Http => "http",
        }
    }
}

/// A login attempt: who, with what secret, from where, over what.
#[non_exhaustive]
#[derive(Clone)]
pub struct LoginRequest {
    /// The user name (any name when the password is a token a backend reads).
    pub username: String,
    /// The password, or a token.
    pub password: String,
    /// The vhost the client asks for, when the protocol names it at login (MQTT's
    /// `vhost:user`, STOMP's `host`); AMQP names it after the login.
    pub vhost: Option<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// The client identifier (MQTT's client id).
    pub client_id: Option<String>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The user name came from a client certificate that TLS verified against the configured
    /// CA (RabbitMQ's `EXTERNAL` mechanism and `ssl_cert_login`): the password is empty and
    /// is not checked; the user must still exist and may connect from where it may.
    pub certificate: bool,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("peer", &self.peer)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl LoginRequest {
    /// A login of `username` with `password` over `protocol`.
    pub fn new(
        protocol: Protocol,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            vhost: None,
            protocol,
            client_id: None,
            peer: None,
            certificate: false,
        }
    }

    /// A login of `username`, the name a verified client certificate carries: no password is
    /// checked (see [`LoginRequest::certificate`]).
    pub fn by_certificate(protocol: Protocol, username: impl Into<String>) -> Self {
        Self {
            certificate: true,
            ..Self::new(protocol, username, "")
        }
    }

    /// The vhost the client asks for.
    pub fn with_vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// The client identifier.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client's address.
    pub fn with_peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }
}

/// What a backend keeps about one login (a token's scopes, say), for its own authorisation
/// answers; it downcasts it back with [`std::sync::Arc::downcast`] or `downcast_ref`.
pub type LoginState = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// An authenticated user.
#[non_exhaustive]
#[derive(Clone)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Tags such as `administrator` or `management`.
    pub tags: Vec<String>,
    /// Per-login state of the backend that logged the user in. When present, answers
    /// cached for this login are not shared with other logins of the same name.
    pub state: Option<LoginState>,
}

impl User {
    /// A user called `name` with `tags`.
    pub fn new(name: impl Into<String>, tags: Vec<String>) -> Self {
        Self {
            name: name.into(),
            tags,
            state: None,
        }
    }

    /// The user with per-login state (see [`User::state`]).
    pub fn with_state(mut self, state: LoginState) -> Self {
        self.state = Some(state);
        self
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("tags", &self.tags)
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// Users are equal when their names and tags are, and they share the same login state.
impl PartialEq for User {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.tags == other.tags
            && match (&self.state, &other.state) {
                (None, None) => true,
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for User {}

/// A backend's answer to a login.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// The credentials are right: this user is logged in, and this backend answers its
    /// authorisation questions first.
    Allow(User),
    /// The backend refuses the login, for the reason given (logged; the client gets its
    /// protocol's refusal).
    Deny(String),
    /// Not this backend's user: the next backend is asked.
    Next,
    /// The backend cannot answer now (its server is down, say): the login is refused and
    /// the reason logged.
    Unavailable(String),
}

/// A backend's answer to an authorisation question.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Not this backend's to decide: the next backend is asked.
    Next,
    /// The backend cannot answer now: refused, and the reason logged.
    Unavailable(String),
}

impl Decision {
    /// [`Decision::Allow`] when `allowed`, [`Decision::Deny`] otherwise.
    pub fn from_bool(allowed: bool) -> Self {
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// May a user use a virtual host?
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VhostRequest {
    /// The vhost.
    pub vhost: String,
    /// The client's address (without its port, so answers are shared by its connections).
    pub peer: Option<std::net::IpAddr>,
}

impl VhostRequest {
    /// The question for `vhost`, asked by a client at `peer`.
    pub fn new(vhost: &str, peer: Option<std::net::IpAddr>) -> Self {
        Self {
            vhost: vhost.to_owned(),
            peer,
        }
    }
}

/// May a user do `permission` on a queue or exchange?
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceRequest {
    /// The vhost.
    pub vhost: String,
    /// Queue or exchange.
    pub kind: ResourceKind,
    /// Its name (the default exchange is asked as `amq.default`).
    pub name: String,
    /// What the user wants to do.
    pub permission: Permission,
}

impl ResourceRequest {
    /// The question for `permission` on resource `name` of `kind` in `vhost`.
    pub fn new(vhost: &str, kind: ResourceKind, name: &str, permission: Permission) -> Self {
        // RabbitMQ checks the default exchange under the name `amq.default`.
        let name = if kind == ResourceKind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        Self {
            vhost: vhost.to_owned(),
            kind,
            name: name.to_owned(),
            permission,
        }
    }
}

/// May a user publish (write) with, or bind (read) with, a routing key on a topic exchange?
/// RabbitMQ's topic authorisation.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicRequest {
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// The routing key published with, or the binding key (AMQP form: MQTT topics arrive
    /// with `/` turned into `.`).
    pub routing_key: String,
    /// [`Permission::Write`] to publish, [`Permission::Read`] to bind or subscribe.
    pub permission: Permission,
    /// The values the patterns' `{username}`, `{vhost}` and `{client_id}` stand for.
    pub variables: TopicVariables,
}

impl TopicRequest {
    /// The question for `permission` with `routing_key` on `exchange`.
    pub fn new(
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        permission: Permission,
        variables: TopicVariables,
    ) -> Self {
        Self {
            vhost: vhost.to_owned(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            permission,
            variables,
        }
    }
}

/// An authentication and authorisation backend. Every method may wait (on a remote server,
/// say): the broker awaits it outside any lock, caches what it answers, and never asks it per
/// message once an answer is cached.
///
/// Implement it with [`async_trait`] (re-exported here):
///
/// ```
/// use junction_core::auth::{
///     async_trait, AuthBackend, Decision, LoginOutcome, LoginRequest, ResourceRequest, User,
///     VhostRequest,
/// };
///
/// /// Lets `robot` in with one fixed password and lets it read, nothing else.
/// struct Robots;
///
/// #[async_trait]
/// impl AuthBackend for Robots {
///     fn name(&self) -> &str {
///         "robots"
///     }
///     async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
///         match (request.username.as_str(), request.password.as_str()) {
///             ("robot", "beep") => LoginOutcome::Allow(User::new("robot", vec![])),
///             ("robot", _) => LoginOutcome::Deny("wrong password".into()),
///             _ => LoginOutcome::Next,
///         }
///     }
///     async fn check_vhost(&self, _user: &User, request: &VhostRequest) -> Decision {
///         Decision::from_bool(request.vhost == "/")
///     }
///     async fn check_resource(&self, _user: &User, request: &ResourceRequest) -> Decision {
///         Decision::from_bool(request.permission == junction_core::Permission::Read)
///     }
/// }
/// ```
#[async_trait]
pub trait AuthBackend: Send + Sync + 'static {
    /// The backend's name, for logs and the `[auth] backends` list.
    fn name(&self) -> &str;

    /// Checks a login.
    async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome;

    /// May `user` use the virtual host `request` names?
    async fn check_vhost(&self, user: &User, request: &VhostRequest) -> Decision;

    /// May `user` do what `request` asks on a queue or exchange?
    async fn check_resource(&self, user: &User, request: &ResourceRequest) -> Decision;

    /// May `user` use a routing key on a topic exchange? The default allows, as RabbitMQ
    /// does for a user without topic permissions.
    async fn check_topic(&self, _user: &User, _request: &TopicRequest) -> Decision {
        Decision::Allow
    }
}
