//! Who is calling: HTTP basic authentication against the broker's auth backends (the same
//! chain and cache every protocol uses), and RabbitMQ's management tags deciding what the
//! caller may see and do.
//!
//! - `management`: the vhosts it has access to, and its own connections;
//! - `policymaker`: as management (policies are not implemented yet);
//! - `monitoring`: every vhost's objects and every connection, node statistics;
//! - `administrator`: everything, users, vhosts and permissions included.
//!
//! Declaring, deleting, publishing and getting still need the user's permissions in the
//! vhost, whatever its tags, as in RabbitMQ.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use junction_core::{LoginRequest, Permission, Principal, Protocol, ResourceKind};

use crate::Admin;
use crate::error::{ApiError, ApiResult};

/// The tags that open the management API, as RabbitMQ's.
const MANAGEMENT_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

/// An authenticated caller with a management tag.
pub struct Caller {
    /// The logged-in user.
    pub principal: Principal,
}

impl Caller {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.principal.user.name
    }

    /// The user's tags.
    pub fn tags(&self) -> &[String] {
        &self.principal.user.tags
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.tags().iter().any(|t| t == tag)
    }

    /// Whether the caller is an administrator.
    pub fn is_administrator(&self) -> bool {
        self.has_tag("administrator")
    }

    /// Whether the caller sees every vhost and connection (monitoring or administrator).
    pub fn is_monitor(&self) -> bool {
        self.is_administrator() || self.has_tag("monitoring")
    }

    /// Refuses unless the caller is an administrator.
    pub fn require_administrator(&self) -> ApiResult<()> {
        if self.is_administrator() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Refuses unless the caller is a monitor.
    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Whether the caller may see the objects of `vhost`.
    pub async fn sees_vhost(&self, vhost: &str) -> bool {
        self.is_monitor() || self.principal.check_vhost(vhost).await
    }

    /// Refuses unless the caller may use `vhost`.
    pub async fn require_vhost(&self, vhost: &str) -> ApiResult<()> {
        if self.principal.check_vhost(vhost).await {
            Ok(())
        } else {
            Err(ApiError::not_authorised(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                self.name()
            )))
        }
    }

    /// Refuses unless the caller may do `permission` on the named resource of `vhost`
    /// (RabbitMQ's words).
    pub async fn require_permission(
        &self,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> ApiResult<()> {
        self.require_vhost(vhost).await?;
        if self
            .principal
            .check_resource(vhost, kind, name, permission)
            .await
        {
            return Ok(());
        }
        Err(ApiError::not_authorised(format!(
            "access to {} '{name}' in vhost '{vhost}' refused for user '{}'",
            kind.as_str(),
            self.name()
        )))
    }
}

impl Caller {
    /// Refuses unless the caller may have `name` (a queue or exchange being declared) pass
    /// messages to the exchange its `argument` names (`x-dead-letter-exchange`,
    /// `alternate-exchange`) on its behalf: read on `name` and write on that exchange, as
    /// RabbitMQ asks. Nothing is asked when the argument is absent.
    pub async fn require_forwarding(
        &self,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        arguments: &junction_core::FieldTable,
        argument: &str,
    ) -> ApiResult<()> {
        let Some(target) = arguments
            .get(argument)
            .and_then(junction_core::FieldValue::as_str)
        else {
            return Ok(());
        };
        self.require_permission(vhost, kind, name, Permission::Read)
            .await?;
        self.require_permission(vhost, ResourceKind::Exchange, target, Permission::Write)
            .await
    }
}

impl FromRequestParts<Arc<Admin>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, admin: &Arc<Admin>) -> ApiResult<Self> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::credentials_needed());
        }
        let (user, password) =
            basic_credentials(parts).ok_or_else(|| ApiError::not_authorised("Login failed"))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        let request = LoginRequest::new(Protocol::Http, &user, &password).with_peer(peer);
        let principal = admin
            .broker
            .auth()
            .login(&request)
            .await
            .map_err(|_| ApiError::not_authorised("Login failed"))?;
        let caller = Caller { principal };
        if !MANAGEMENT_TAGS.iter().any(|tag| caller.has_tag(tag)) {
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(caller)
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}
