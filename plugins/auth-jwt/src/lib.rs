//! An [`AuthBackend`] that takes a JSON Web Token as the password, in the manner of RabbitMQ's
//! OAuth 2.0 plugin (`rabbitmq_auth_backend_oauth2`): the user name may be anything, the token's
//! signature is checked against keys from the configuration (HS256 shared secrets, RS256
//! public keys), its `exp` is enforced (and `aud` must name the resource server), and its
//! scopes become the user's permissions, on every protocol alike.
//!
//! Scopes look like RabbitMQ's: `<resource_server_id>.<permission>:<vhost>/<name>[/<routing
//! key>]`, with `*` a wildcard, for example `rabbitmq.read:*/*` (read anything anywhere) or
//! `rabbitmq.write:prod/orders` (publish to `orders` in vhost `prod`); the routing-key part
//! limits topic permissions. `<resource_server_id>.tag:<tag>` gives the user a tag. The
//! `scope` claim may be a space-separated string or an array. The user is named by the
//! token's `sub` claim (the name the client gave when there is none).
//!
//! The token's scopes are kept with the login ([`User::state`]), so the broker's cache of
//! answers is per login, never shared with another token of the same subject.

mod scopes;

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use junction_core::auth::{
    AuthBackend, Decision, LoginOutcome, LoginRequest, ResourceRequest, TopicRequest, User,
    VhostRequest, async_trait,
};

pub use scopes::{Scope, Scopes};

/// One signing key the backend accepts.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// The key id: a token whose header names this `kid` is checked with this key.
    pub id: String,
    /// `HS256` (a shared secret) or `RS256` (an RSA public key).
    pub algorithm: String,
    /// HS256: the shared secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256: the public key in PEM.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// RS256: a file holding the public key in PEM.
    #[serde(default)]
    pub public_key_file: Option<std::path::PathBuf>,
}

/// The backend's settings: `[auth.jwt]` in the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The resource server's id: the audience tokens must name and the prefix of scopes.
    #[serde(default = "default_resource_server_id")]
    pub resource_server_id: String,
    /// Whether the `aud` claim must name the resource server (RabbitMQ's `verify_aud`).
    #[serde(default = "yes")]
    pub verify_aud: bool,
    /// The keys tokens may be signed with.
    pub keys: Vec<KeySettings>,
    /// The key for tokens whose header names none (the first key when absent).
    #[serde(default)]
    pub default_key: Option<String>,
}

fn default_resource_server_id() -> String {
    "rabbitmq".to_owned()
}

fn yes() -> bool {
    true
}

/// Why the settings cannot make a backend.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A key is incomplete or unreadable.
    #[error("key '{id}': {reason}")]
    Key {
        /// The key id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// No key is configured.
    #[error("[auth.jwt] keys is empty")]
    NoKeys,
}

struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// The JWT backend.
pub struct JwtBackend {
    settings: Settings,
    keys: HashMap<String, Key>,
    default_key: String,
}

fn key_error(id: &str, reason: impl std::fmt::Display) -> SettingsError {
    SettingsError::Key {
        id: id.to_owned(),
        reason: reason.to_string(),
    }
}

impl JwtBackend {
    /// A backend with `settings`; fails when a key cannot be read.
    pub fn new(settings: Settings) -> Result<Self, SettingsError> {
        let mut keys = HashMap::new();
        for key in &settings.keys {
            let (algorithm, decoding) = match key.algorithm.to_ascii_uppercase().as_str() {
                "HS256" => {
                    let secret = key
                        .secret
                        .as_ref()
                        .ok_or_else(|| key_error(&key.id, "HS256 needs `secret`"))?;
                    (
                        Algorithm::HS256,
                        DecodingKey::from_secret(secret.as_bytes()),
                    )
                }
                "RS256" => {
                    let pem = match (&key.public_key_pem, &key.public_key_file) {
                        (Some(pem), _) => pem.clone(),
                        (None, Some(file)) => std::fs::read_to_string(file).map_err(|error| {
                            key_error(&key.id, format!("{}: {error}", file.display()))
                        })?,
                        (None, None) => {
                            return Err(key_error(
                                &key.id,
                                "RS256 needs `public_key_pem` or `public_key_file`",
                            ));
                        }
                    };
                    let decoding = DecodingKey::from_rsa_pem(pem.as_bytes())
                        .map_err(|error| key_error(&key.id, error))?;
                    (Algorithm::RS256, decoding)
                }
                other => {
                    return Err(key_error(
                        &key.id,
                        format!("unsupported algorithm '{other}'"),
                    ));
                }
            };
            keys.insert(
                key.id.clone(),
                Key {
                    algorithm,
                    decoding,
                },
            );
        }
        let default_key = match &settings.default_key {
            Some(id) if keys.contains_key(id) => id.clone(),
            Some(id) => return Err(key_error(id, "default_key names no key")),
            None => settings
                .keys
                .first()
                .ok_or(SettingsError::NoKeys)?
                .id
                .clone(),
        };
        Ok(Self {
            settings,
            keys,
            default_key,
        })
    }

    /// The token's subject and scopes, when its signature, expiry and audience hold.
    fn verify(&self, token: &str) -> Result<(Option<String>, Scopes), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| error.to_string())?;
        let id = header.kid.as_deref().unwrap_or(&self.default_key);
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| format!("unknown signing key '{id}'"))?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = 0;
        if self.settings.verify_aud {
            validation.set_audience(&[&self.settings.resource_server_id]);
        } else {
            validation.validate_aud = false;
        }
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation)
            .map_err(|error| error.to_string())?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let prefix = format!("{}.", self.settings.resource_server_id);
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
        let scopes = Scopes::from_claim(claims.get("scope"), &prefix).until(exp);
        Ok((subject, scopes))
    }
}

/// The scopes of a JWT login; an expired token's grant nothing.
fn scopes_of(user: &User) -> Option<&Scopes> {
    static NOTHING: std::sync::OnceLock<Scopes> = std::sync::OnceLock::new();
    let scopes = user.state.as_ref()?.downcast_ref::<Scopes>()?;
    Some(if scopes.expired() {
        NOTHING.get_or_init(Scopes::default)
    } else {
        scopes
    })
}

#[async_trait]
impl AuthBackend for JwtBackend {
    fn name(&self) -> &str {
        "jwt"
    }

    async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
        // A password that is not a JWT at all is some other backend's business.
        if request.password.split('.').count() != 3 {
            return LoginOutcome::Next;
        }
        match self.verify(&request.password) {
            Ok((subject, scopes)) => {
                let name = subject.unwrap_or_else(|| request.username.clone());
                let tags = scopes.tags();
                LoginOutcome::Allow(User::new(name, tags).with_state(Arc::new(scopes)))
            }
            Err(reason) => LoginOutcome::Deny(format!("invalid token: {reason}")),
        }
    }

    async fn check_vhost(&self, user: &User, request: &VhostRequest) -> Decision {
        match scopes_of(user) {
            Some(scopes) => Decision::from_bool(scopes.allows_vhost(&request.vhost)),
            None => Decision::Next,
        }
    }

    async fn check_resource(&self, user: &User, request: &ResourceRequest) -> Decision {
        match scopes_of(user) {
            Some(scopes) => Decision::from_bool(scopes.allows_resource(
                request.permission,
                &request.vhost,
                &request.name,
            )),
            None => Decision::Next,
        }
    }

    async fn check_topic(&self, user: &User, request: &TopicRequest) -> Decision {
        match scopes_of(user) {
            Some(scopes) => Decision::from_bool(scopes.allows_topic(
                request.permission,
                &request.vhost,
                &request.exchange,
                &request.routing_key,
            )),
            None => Decision::Next,
        }
    }
}

#[cfg(test)]
mod tests;
