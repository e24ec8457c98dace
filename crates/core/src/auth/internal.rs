//! The internal user database: users with salted password hashes, tags, per-vhost
//! configure/write/read permission patterns, and users that may only log in from loopback.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use base64::Engine;
use parking_lot::RwLock;
use regex::Regex;
use sha2::{Digest, Sha256};

use super::{AuthBackend, AuthOutcome, LoginRequest, Permission, ResourceKind, User};

/// A password hash in RabbitMQ's `rabbit_password_hashing_sha256` format: base64 of a 4-byte
/// salt followed by SHA-256(salt ++ password). Definitions exported from RabbitMQ import as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash(Vec<u8>);

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; 4] = rand::random();
        Self::with_salt(salt, password)
    }

    fn with_salt(salt: [u8; 4], password: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(&hasher.finalize());
        Self(bytes)
    }

    /// Reads a base64-encoded hash; None when it is not valid.
    pub fn from_base64(encoded: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        (bytes.len() == 36).then_some(Self(bytes))
    }

    /// The hash in base64, as RabbitMQ's definitions store it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Whether `password` matches, compared without early exit.
    pub fn verify(&self, password: &str) -> bool {
        let Some(salt) = self.0.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
            return false;
        };
        let candidate = Self::with_salt(salt, password);
        candidate.0.len() == self.0.len()
            && candidate
                .0
                .iter()
                .zip(&self.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Permission patterns of one user in one vhost. Patterns are unanchored regular expressions,
/// as in RabbitMQ: `.*` allows everything, `^$` nothing but the empty name.
#[derive(Debug, Clone)]
pub struct VhostPermissions {
    configure: Regex,
    write: Regex,
    read: Regex,
}

impl VhostPermissions {
    /// Compiles the three patterns.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            configure: Regex::new(configure)?,
            write: Regex::new(write)?,
            read: Regex::new(read)?,
        })
    }

    /// Full access.
    pub fn all() -> Self {
        Self::new(".*", ".*", ".*").unwrap_or_else(|_| unreachable!("constant patterns compile"))
    }

    fn allows(&self, permission: Permission, name: &str) -> bool {
        let pattern = match permission {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        };
        pattern.is_match(name)
    }
}

/// One user of the internal database.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The password hash.
    pub password: PasswordHash,
    /// Tags such as `administrator`.
    pub tags: Vec<String>,
    /// Permissions by vhost name; a vhost absent here is not accessible.
    pub permissions: HashMap<String, VhostPermissions>,
}

/// The internal user database, the default [`AuthBackend`].
#[derive(Debug, Default)]
pub struct InternalUsers {
    users: RwLock<HashMap<String, UserRecord>>,
    loopback_only: RwLock<HashSet<String>>,
}

impl InternalUsers {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a user.
    pub fn put_user(&self, name: &str, record: UserRecord) {
        self.users.write().insert(name.to_owned(), record);
    }

    /// Adds a user with a plain-text password (hashed here), tags and full access to `vhosts`.
    pub fn add_user(&self, name: &str, password: &str, tags: &[&str], vhosts: &[&str]) {
        let permissions = vhosts
            .iter()
            .map(|v| ((*v).to_owned(), VhostPermissions::all()))
            .collect();
        self.put_user(
            name,
            UserRecord {
                password: PasswordHash::new(password),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                permissions,
            },
        );
    }

    /// Sets a user's permissions in a vhost; false when the user does not exist.
    pub fn set_permissions(&self, user: &str, vhost: &str, permissions: VhostPermissions) -> bool {
        match self.users.write().get_mut(user) {
            Some(record) => {
                record.permissions.insert(vhost.to_owned(), permissions);
                true
            }
            None => false,
        }
    }

    /// Restricts `user` to connections from loopback addresses (RabbitMQ's `loopback_users`).
    pub fn set_loopback_only(&self, user: &str) {
        self.loopback_only.write().insert(user.to_owned());
    }

    fn permissions(&self, user: &str, vhost: &str) -> Option<VhostPermissions> {
        self.users
            .read()
            .get(user)
            .and_then(|r| r.permissions.get(vhost).cloned())
    }
}

fn is_loopback(peer: Option<IpAddr>) -> bool {
    match peer {
        None => true,
        Some(IpAddr::V4(v4)) => v4.is_loopback(),
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl AuthBackend for InternalUsers {
    fn name(&self) -> &str {
        "internal"
    }

    fn authenticate(&self, request: &LoginRequest<'_>) -> AuthOutcome {
        let users = self.users.read();
        let Some(record) = users.get(request.username) else {
            return AuthOutcome::Unknown;
        };
        // RabbitMQ's internal backend refuses a blank password whatever the stored hash says,
        // so a user created with an empty password cannot log in with one.
        if request.password.is_empty() {
            return AuthOutcome::Refused(format!(
                "user '{}' attempted to log in with a blank password, which is prohibited by the internal authN backend",
                request.username
            ));
        }
        if !record.password.verify(request.password) {
            return AuthOutcome::Refused(format!(
                "user '{}' - invalid credentials",
                request.username
            ));
        }
        if self.loopback_only.read().contains(request.username) && !is_loopback(request.peer) {
            return AuthOutcome::Refused(format!(
                "user '{}' can only connect via localhost",
                request.username
            ));
        }
        AuthOutcome::Authenticated(User {
            name: request.username.to_owned(),
            tags: record.tags.clone(),
        })
    }

    fn check_vhost(&self, user: &User, vhost: &str) -> bool {
        self.permissions(&user.name, vhost).is_some()
    }

    fn check_resource(
        &self,
        user: &User,
        vhost: &str,
        _kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool {
        self.permissions(&user.name, vhost)
            .is_some_and(|p| p.allows(permission, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trips_through_base64() {
        let hash = PasswordHash::new("s3cret");
        let again = PasswordHash::from_base64(&hash.to_base64()).expect("valid");
        assert!(again.verify("s3cret"));
        assert!(!again.verify("wrong"));
    }

    #[test]
    fn a_blank_password_is_refused_even_when_it_is_the_stored_one() {
        let users = InternalUsers::new();
        users.add_user("blank", "", &[], &["/"]);
        let outcome = users.authenticate(&LoginRequest {
            username: "blank",
            password: "",
            peer: None,
        });
        assert!(
            matches!(&outcome, AuthOutcome::Refused(reason) if reason.contains("blank password")),
            "{outcome:?}"
        );
    }

    #[test]
    fn loopback_users_are_refused_from_elsewhere() {
        let users = InternalUsers::new();
        users.add_user("guest", "guest", &[], &["/"]);
        users.set_loopback_only("guest");
        let login = |peer: &str| {
            users.authenticate(&LoginRequest {
                username: "guest",
                password: "guest",
                peer: Some(peer.parse().expect("ip")),
            })
        };
        assert!(matches!(login("127.0.0.1"), AuthOutcome::Authenticated(_)));
        assert!(matches!(login("::1"), AuthOutcome::Authenticated(_)));
        assert!(matches!(login("10.1.2.3"), AuthOutcome::Refused(_)));
    }

    #[test]
    fn permission_patterns_are_unanchored_regexes() {
        let users = InternalUsers::new();
        users.add_user("app", "pw", &[], &[]);
        let perms = VhostPermissions::new("^app-", "^(app-.*|amq\\.default)$", ".*").expect("re");
        users.set_permissions("app", "/", perms);
        let user = User {
            name: "app".into(),
            tags: vec![],
        };
        let check = |name: &str, p| users.check_resource(&user, "/", ResourceKind::Queue, name, p);
        assert!(check("app-jobs", Permission::Configure));
        assert!(!check("other", Permission::Configure));
        assert!(check("amq.default", Permission::Write));
        assert!(!check("xapp-1", Permission::Write));
        assert!(!users.check_vhost(&user, "other"));
    }
}
