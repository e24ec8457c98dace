//! The internal user database: users with salted password hashes, tags, per-vhost
//! configure/write/read permission patterns, and users that may only log in from loopback.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use regex::Regex;
use sha2::{Digest, Sha256};

use super::{
    AuthBackend, Decision, LoginOutcome, LoginRequest, PasswordHash, Permission, ResourceRequest,
    TopicPermission, TopicRequest, User, VhostRequest, async_trait,
};

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

    /// The configure pattern, as given.
    pub fn configure_pattern(&self) -> &str {
        self.configure.as_str()
    }

    /// The write pattern, as given.
    pub fn write_pattern(&self) -> &str {
        self.write.as_str()
    }

    /// The read pattern, as given.
    pub fn read_pattern(&self) -> &str {
        self.read.as_str()
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
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The password hash.
    pub password: PasswordHash,
    /// Tags such as `administrator`.
    pub tags: Vec<String>,
    /// Permissions by vhost name; a vhost absent here is not accessible.
    pub permissions: HashMap<String, VhostPermissions>,
    /// Topic permissions (none: every routing key is allowed, as in RabbitMQ).
    pub topic_permissions: Vec<Arc<TopicPermission>>,
}

impl UserRecord {
    /// A user with `password` and `tags`, no permissions yet.
    pub fn new(password: PasswordHash, tags: Vec<String>) -> Self {
        Self {
            password,
            tags,
            permissions: HashMap::new(),
            topic_permissions: Vec::new(),
        }
    }
}

/// The internal user database, the default [`AuthBackend`].
#[derive(Debug)]
pub struct InternalUsers {
    users: RwLock<HashMap<String, UserRecord>>,
    loopback_only: RwLock<HashSet<String>>,
    /// Per user, SHA-256 of the stored hash and the last password that matched it: a client
    /// that reconnects with the same password skips the Argon2 check (tens of milliseconds
    /// and 19 MiB each). A changed password or hash no longer matches its entry.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Argon2 checks running at once, at most: a flood of wrong passwords waits here instead
    /// of taking 19 MiB per attempt.
    slow_checks: Arc<tokio::sync::Semaphore>,
    /// Argon2 checks run so far (for the tests).
    #[cfg(test)]
    argon2_runs: std::sync::atomic::AtomicUsize,
}

impl Default for InternalUsers {
    fn default() -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            users: RwLock::default(),
            loopback_only: RwLock::default(),
            verified: Mutex::default(),
            slow_checks: Arc::new(tokio::sync::Semaphore::new(parallel)),
            #[cfg(test)]
            argon2_runs: Default::default(),
        }
    }
}

impl InternalUsers {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `memo` is the password `user` last logged in with (see `verified`).
    fn remembers(&self, user: &str, memo: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .get(user)
            .is_some_and(|known| super::password::same_bytes(known, memo))
    }

    /// Whether `password` matches `user`'s stored `hash`; Argon2 checks run on threads of
    /// their own, a few at a time, and are remembered (see `verified`).
    async fn password_matches(&self, user: &str, hash: PasswordHash, password: &str) -> bool {
        if !hash.is_slow() {
            return hash.verify(password);
        }
        let mut memo = Sha256::new();
        memo.update(hash.encoded().as_bytes());
        memo.update([0]);
        memo.update(password.as_bytes());
        let memo: [u8; 32] = memo.finalize().into();
        if self.remembers(user, &memo) {
            return true;
        }
        let Ok(_permit) = self.slow_checks.clone().acquire_owned().await else {
            return false;
        };
        // A burst of logins (a reconnect storm) waits here behind the first check; once that
        // one has matched, the rest find it remembered and run no Argon2 of their own.
        if self.remembers(user, &memo) {
            return true;
        }
        #[cfg(test)]
        self.argon2_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = password.to_owned();
        let matches = super::password::on_own_thread(move || hash.verify(&password))
            .await
            .unwrap_or(false);
        if matches {
            self.verified.lock().insert(user.to_owned(), memo);
        }
        matches
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
        let mut record = UserRecord::new(
            PasswordHash::new(password),
            tags.iter().map(|t| (*t).to_owned()).collect(),
        );
        record.permissions = permissions;
        self.put_user(name, record);
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

    /// Every user, in name order.
    pub fn users(&self) -> Vec<(String, UserRecord)> {
        let mut users: Vec<_> = self
            .users
            .read()
            .iter()
            .map(|(name, record)| (name.clone(), record.clone()))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<UserRecord> {
        self.users.read().get(name).cloned()
    }

    /// Removes a user; false when there was none.
    pub fn delete_user(&self, name: &str) -> bool {
        self.verified.lock().remove(name);
        self.users.write().remove(name).is_some()
    }

    /// Removes a user's permissions in a vhost; false when it had none there.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> bool {
        self.users
            .write()
            .get_mut(user)
            .is_some_and(|record| record.permissions.remove(vhost).is_some())
    }

    /// Removes a user's topic permissions in a vhost (on `exchange` only, when given);
    /// false when it had none.
    pub fn clear_topic_permissions(&self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let mut users = self.users.write();
        let Some(record) = users.get_mut(user) else {
            return false;
        };
        let before = record.topic_permissions.len();
        record
            .topic_permissions
            .retain(|t| !(t.vhost() == vhost && exchange.is_none_or(|x| t.exchange() == x)));
        record.topic_permissions.len() != before
    }

    /// Whether `user` may only log in from loopback addresses.
    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.loopback_only.read().contains(user)
    }

    /// Restricts `user` to connections from loopback addresses (RabbitMQ's `loopback_users`).
    pub fn set_loopback_only(&self, user: &str) {
        self.loopback_only.write().insert(user.to_owned());
    }

    /// Adds a topic permission to a user; false when the user does not exist.
    pub fn add_topic_permission(&self, user: &str, permission: TopicPermission) -> bool {
        match self.users.write().get_mut(user) {
            Some(record) => {
                record.topic_permissions.push(Arc::new(permission));
                true
            }
            None => false,
        }
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

#[async_trait]
impl AuthBackend for InternalUsers {
    fn name(&self) -> &str {
        "internal"
    }

    async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
        let (hash, tags) = match self.users.read().get(&request.username) {
            Some(record) => (record.password.clone(), record.tags.clone()),
            None => return LoginOutcome::Next,
        };
        // RabbitMQ's internal backend refuses a blank password whatever the stored hash says,
        // so a user created with an empty password cannot log in with one. A certificate
        // login has no password to check: TLS verified the name.
        if !request.certificate {
            if request.password.is_empty() {
                return LoginOutcome::Deny(format!(
                    "user '{}' attempted to log in with a blank password, which is prohibited by the internal authN backend",
                    request.username
                ));
            }
            if !self
                .password_matches(&request.username, hash, &request.password)
                .await
            {
                return LoginOutcome::Deny(format!(
                    "user '{}' - invalid credentials",
                    request.username
                ));
            }
        }
        if self.loopback_only.read().contains(&request.username)
            && !is_loopback(request.peer.map(|peer| peer.ip()))
        {
            return LoginOutcome::Deny(format!(
                "user '{}' can only connect via localhost",
                request.username
            ));
        }
        LoginOutcome::Allow(User::new(request.username.clone(), tags))
    }

    async fn check_vhost(&self, user: &User, request: &VhostRequest) -> Decision {
        Decision::from_bool(self.permissions(&user.name, &request.vhost).is_some())
    }

    async fn check_resource(&self, user: &User, request: &ResourceRequest) -> Decision {
        Decision::from_bool(
            self.permissions(&user.name, &request.vhost)
                .is_some_and(|p| p.allows(request.permission, &request.name)),
        )
    }

    async fn check_topic(&self, user: &User, request: &TopicRequest) -> Decision {
        let applying: Vec<Arc<TopicPermission>> = match self.users.read().get(&user.name) {
            Some(record) => record
                .topic_permissions
                .iter()
                .filter(|p| p.applies_to(&request.vhost, &request.exchange))
                .cloned()
                .collect(),
            None => return Decision::Deny,
        };
        // As RabbitMQ: no topic permission for this exchange allows every key; otherwise one
        // of them must allow it.
        Decision::from_bool(
            applying.is_empty()
                || applying.iter().any(|p| {
                    p.allows(request.permission, &request.routing_key, &request.variables)
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_logins_runs_one_argon2_check() {
        let users = Arc::new(InternalUsers::new());
        users.add_user("fleet", "pw", &[], &["/"]);
        let logins: Vec<_> = (0..50)
            .map(|_| {
                let users = users.clone();
                tokio::spawn(async move {
                    users
                        .authenticate(&LoginRequest::new(Protocol::Mqtt, "fleet", "pw"))
                        .await
                })
            })
            .collect();
        for login in logins {
            assert!(matches!(
                login.await.expect("joined"),
                LoginOutcome::Allow(_)
            ));
        }
        let runs = users.argon2_runs.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            runs <= 2,
            "{runs} Argon2 checks for one password (at most one per permit)"
        );
    }

    #[tokio::test]
    async fn argon2_logins_are_checked_once_per_password_then_remembered() {
        let users = InternalUsers::new();
        users.add_user("ann", "first", &[], &["/"]);
        let login = |password: &str| LoginRequest::new(Protocol::Amqp, "ann", password);
        assert!(matches!(
            users.authenticate(&login("first")).await,
            LoginOutcome::Allow(_)
        ));
        assert!(users.verified.lock().contains_key("ann"));
        assert!(matches!(
            users.authenticate(&login("first")).await,
            LoginOutcome::Allow(_)
        ));
        assert!(matches!(
            users.authenticate(&login("wrong")).await,
            LoginOutcome::Deny(_)
        ));
        // A new password: the remembered one no longer logs in.
        users.add_user("ann", "second", &[], &["/"]);
        assert!(matches!(
            users.authenticate(&login("first")).await,
            LoginOutcome::Deny(_)
        ));
        assert!(matches!(
            users.authenticate(&login("second")).await,
            LoginOutcome::Allow(_)
        ));
    }

    use crate::auth::{Protocol, ResourceKind, TopicVariables};

    #[tokio::test]
    async fn a_blank_password_is_refused_even_when_it_is_the_stored_one() {
        let users = InternalUsers::new();
        users.add_user("blank", "", &[], &["/"]);
        let outcome = users
            .authenticate(&LoginRequest::new(Protocol::Amqp, "blank", ""))
            .await;
        assert!(
            matches!(&outcome, LoginOutcome::Deny(reason) if reason.contains("blank password")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_certificate_login_needs_no_password_but_a_known_user_from_an_allowed_place() {
        let users = InternalUsers::new();
        users.add_user("device-7", "pw", &[], &["/"]);
        users.add_user("guest", "guest", &[], &["/"]);
        users.set_loopback_only("guest");
        let remote = Some("10.1.2.3:1".parse().expect("address"));
        let device = LoginRequest::by_certificate(Protocol::Mqtt, "device-7").with_peer(remote);
        assert!(matches!(
            users.authenticate(&device).await,
            LoginOutcome::Allow(user) if user.name == "device-7"
        ));
        // Without the certificate flag the same empty password is refused.
        let forged = LoginRequest::new(Protocol::Mqtt, "device-7", "").with_peer(remote);
        assert!(matches!(
            users.authenticate(&forged).await,
            LoginOutcome::Deny(_)
        ));
        let guest = LoginRequest::by_certificate(Protocol::Amqp, "guest").with_peer(remote);
        assert!(matches!(
            users.authenticate(&guest).await,
            LoginOutcome::Deny(reason) if reason.contains("localhost")
        ));
        let unknown = LoginRequest::by_certificate(Protocol::Stomp, "stranger");
        assert!(matches!(
            users.authenticate(&unknown).await,
            LoginOutcome::Next
        ));
    }

    #[tokio::test]
    async fn loopback_users_are_refused_from_elsewhere() {
        let users = InternalUsers::new();
        users.add_user("guest", "guest", &[], &["/"]);
        users.set_loopback_only("guest");
        for (peer, allowed) in [
            ("127.0.0.1:1", true),
            ("[::1]:1", true),
            ("10.1.2.3:1", false),
        ] {
            let request = LoginRequest::new(Protocol::Stomp, "guest", "guest")
                .with_peer(Some(peer.parse().expect("address")));
            let outcome = users.authenticate(&request).await;
            assert_eq!(matches!(outcome, LoginOutcome::Allow(_)), allowed, "{peer}");
        }
        let unknown = LoginRequest::new(Protocol::Mqtt, "nobody", "x");
        assert!(matches!(
            users.authenticate(&unknown).await,
            LoginOutcome::Next
        ));
    }

    #[tokio::test]
    async fn permission_patterns_are_unanchored_regexes() {
        let users = InternalUsers::new();
        users.add_user("app", "pw", &[], &[]);
        let perms = VhostPermissions::new("^app-", "^(app-.*|amq\\.default)$", ".*").expect("re");
        users.set_permissions("app", "/", perms);
        let user = User::new("app", vec![]);
        let check = |name: &str, p| {
            let request = ResourceRequest::new("/", ResourceKind::Queue, name, p);
            let users = &users;
            let user = &user;
            async move { users.check_resource(user, &request).await == Decision::Allow }
        };
        assert!(check("app-jobs", Permission::Configure).await);
        assert!(!check("other", Permission::Configure).await);
        assert!(check("amq.default", Permission::Write).await);
        assert!(!check("xapp-1", Permission::Write).await);
        let other = VhostRequest::new("other", None);
        assert_eq!(users.check_vhost(&user, &other).await, Decision::Deny);
    }

    #[tokio::test]
    async fn topic_permissions_apply_per_exchange_and_allow_everything_without_one() {
        let users = InternalUsers::new();
        users.add_user("dev", "pw", &[], &["/"]);
        let permission =
            TopicPermission::new("/", "amq.topic", "^sensors\\.", "^alerts\\.").expect("valid");
        assert!(users.add_topic_permission("dev", permission));
        let user = User::new("dev", vec![]);
        let ask = |exchange: &str, key: &str, permission| {
            let variables = TopicVariables::new("dev", "/", None);
            let request = TopicRequest::new("/", exchange, key, permission, variables);
            let users = &users;
            let user = &user;
            async move { users.check_topic(user, &request).await == Decision::Allow }
        };
        assert!(ask("amq.topic", "sensors.t1", Permission::Write).await);
        assert!(!ask("amq.topic", "alerts.t1", Permission::Write).await);
        assert!(ask("amq.topic", "alerts.t1", Permission::Read).await);
        assert!(!ask("amq.topic", "sensors.t1", Permission::Read).await);
        assert!(
            ask("other.topic", "anything", Permission::Write).await,
            "no permission there"
        );
    }
}
