//! The one authoriser every protocol asks: it runs logins down the chain of backends and
//! caches every authorisation answer for `ttl`, shared by all connections and protocols.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::exchange::Exchange;

use super::{
    AuthBackend, Decision, LoginOutcome, LoginRequest, Permission, Protocol, ResourceKind,
    ResourceRequest, TopicRequest, TopicVariables, User, VhostRequest,
};

/// Answers kept at most; beyond it the cache starts again (a client naming ever new
/// resources must not grow it without limit).
const MAX_ANSWERS: usize = 10_000;

/// Why a login was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct LoginRefused {
    /// What the backend (or the chain) said.
    pub reason: String,
    /// Whether a backend could not answer (its server is down): not the client's fault.
    pub unavailable: bool,
}

/// A question whose answer is cached: who asks (the backend that logged them in and their
/// identity) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Question {
    Vhost(VhostRequest),
    Resource(ResourceRequest),
    Topic(TopicRequest),
}

/// Who asks: the index of the backend that logged them in, and their identity.
type Asker = (usize, Arc<str>);

struct Inner {
    backends: Vec<Arc<dyn AuthBackend>>,
    ttl: Duration,
    answers: Mutex<HashMap<(Asker, Question), (bool, Instant)>>,
    logins: AtomicU64,
    events: std::sync::OnceLock<Arc<crate::events::EventBus>>,
}

/// The chain of backends and the cache of their answers (see the module documentation).
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("backends", &self.backend_names())
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Authorizer {
    /// Asks `backends` in order and keeps their authorisation answers for `ttl` (zero: asks
    /// every time).
    pub fn new(backends: Vec<Arc<dyn AuthBackend>>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                backends,
                ttl,
                answers: Mutex::new(HashMap::new()),
                logins: AtomicU64::new(0),
                events: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The backends' names, in the order they are asked.
    pub fn backend_names(&self) -> Vec<&str> {
        self.inner.backends.iter().map(|b| b.name()).collect()
    }

    /// How long answers are kept.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Reports logins as `user.authentication.success` / `failure` events to `events`.
    pub(crate) fn set_events(&self, events: Arc<crate::events::EventBus>) {
        let _ = self.inner.events.set(events);
    }

    /// Logs in through the chain (see [`Authorizer::authenticate`]) and reports the outcome
    /// as an event.
    pub async fn login(&self, request: &LoginRequest) -> Result<Principal, LoginRefused> {
        let outcome = self.authenticate(request).await;
        // Messaging logins only: the management API logs in on every request.
        if request.protocol != Protocol::Http
            && let Some(events) = self.inner.events.get()
        {
            let kind = match outcome {
                Ok(_) => "user.authentication.success",
                Err(_) => "user.authentication.failure",
            };
            events.emit(kind, |headers| {
                use crate::events::text;
                headers.insert("name", text(request.username.as_str()));
                headers.insert("connection_type", text("network"));
                headers.insert("protocol", text(request.protocol.as_str()));
                if let Some(peer) = request.peer {
                    headers.insert("peer_host", text(peer.ip().to_string()));
                }
                if let Err(refused) = &outcome {
                    headers.insert("error", text(refused.reason.as_str()));
                }
            });
        }
        outcome
    }

    /// Logs in with the first backend that allows or denies. A backend that is unavailable
    /// is logged and passed over, as RabbitMQ passes over a backend that fails; when no later
    /// backend lets the user in, the login is refused as unavailable. A chain where every
    /// backend answers [`LoginOutcome::Next`] refuses with RabbitMQ's "invalid credentials".
    async fn authenticate(&self, request: &LoginRequest) -> Result<Principal, LoginRefused> {
        let mut unavailable = None;
        for (index, backend) in self.inner.backends.iter().enumerate() {
            match backend.authenticate(request).await {
                LoginOutcome::Allow(user) => {
                    let identity: Arc<str> = if user.state.is_some() {
                        // Per-login state (a token's scopes): its answers are its own.
                        let login = self.inner.logins.fetch_add(1, Ordering::Relaxed);
                        format!("{}#{login}", user.name).into()
                    } else {
                        user.name.as_str().into()
                    };
                    return Ok(Principal {
                        user,
                        backend: index,
                        identity,
                        peer: request.peer,
                        protocol: request.protocol,
                        authorizer: self.clone(),
                    });
                }
                LoginOutcome::Deny(reason) => {
                    return Err(LoginRefused {
                        reason,
                        unavailable: false,
                    });
                }
                LoginOutcome::Unavailable(reason) => {
                    tracing::warn!(backend = backend.name(), user = %request.username, %reason, "auth backend unavailable");
                    unavailable.get_or_insert(format!(
                        "auth backend '{}' unavailable: {reason}",
                        backend.name()
                    ));
                }
                LoginOutcome::Next => {}
            }
        }
        Err(match unavailable {
            Some(reason) => LoginRefused {
                reason,
                unavailable: true,
            },
            None => LoginRefused {
                reason: format!("user '{}' - invalid credentials", request.username),
                unavailable: false,
            },
        })
    }

    /// The cached answer to `question` for `principal`, if it is fresh.
    fn cached(&self, principal: &Principal, question: &Question) -> Option<bool> {
        if self.inner.ttl.is_zero() {
            return None;
        }
        let key = (
            (principal.backend, principal.identity.clone()),
            question.clone(),
        );
        let answers = self.inner.answers.lock();
        let (allowed, at) = answers.get(&key)?;
        (at.elapsed() < self.inner.ttl).then_some(*allowed)
    }

    fn remember(&self, principal: &Principal, question: Question, allowed: bool) {
        if self.inner.ttl.is_zero() {
            return;
        }
        let mut answers = self.inner.answers.lock();
        if answers.len() >= MAX_ANSWERS {
            answers.clear();
        }
        answers.insert(
            ((principal.backend, principal.identity.clone()), question),
            (allowed, Instant::now()),
        );
    }

    /// Asks the principal's backend, then those after it while they answer "next". None when
    /// a backend was unavailable (refused, and not to be remembered anywhere).
    async fn decide(&self, principal: &Principal, question: Question) -> Option<bool> {
        if let Some(allowed) = self.cached(principal, &question) {
            return Some(allowed);
        }
        let mut allowed = false;
        for backend in self.inner.backends.iter().skip(principal.backend) {
            let decision = match &question {
                Question::Vhost(request) => backend.check_vhost(&principal.user, request).await,
                Question::Resource(request) => {
                    backend.check_resource(&principal.user, request).await
                }
                Question::Topic(request) => backend.check_topic(&principal.user, request).await,
            };
            match decision {
                Decision::Allow => {
                    allowed = true;
                    break;
                }
                Decision::Deny => break,
                Decision::Unavailable(reason) => {
                    tracing::warn!(backend = backend.name(), user = %principal.user.name, ?question, %reason, "auth backend unavailable; refused");
                    // Not cached: the next question asks again.
                    return None;
                }
                Decision::Next => continue,
            }
        }
        self.remember(principal, question, allowed);
        Some(allowed)
    }
}

/// A logged-in user, the backend that answers for it, and the authoriser to ask.
#[derive(Clone)]
pub struct Principal {
    /// The user.
    pub user: User,
    backend: usize,
    /// The user's name, or a per-login identity when the backend keeps per-login state.
    identity: Arc<str>,
    /// Where the login came from (asked with the vhost question, as RabbitMQ's HTTP backend
    /// does).
    peer: Option<std::net::SocketAddr>,
    protocol: Protocol,
    authorizer: Authorizer,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("user", &self.user.name)
            .field("backend", &self.backend_name())
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Principal {
    /// The name of the backend that logged the user in.
    pub fn backend_name(&self) -> &str {
        self.authorizer
            .inner
            .backends
            .get(self.backend)
            .map_or("", |b| b.name())
    }

    /// How long answers may be remembered (a connection's memo uses it too).
    pub fn ttl(&self) -> Duration {
        self.authorizer.ttl()
    }

    /// Whether `other` is the same login identity answered for by the same backend: one may
    /// stand for the other (connections of one user can share one principal).
    pub fn same_as(&self, other: &Principal) -> bool {
        self.user == other.user
            && self.backend == other.backend
            && self.identity == other.identity
            && Arc::ptr_eq(&self.authorizer.inner, &other.authorizer.inner)
    }

    /// Whether the user may use `vhost` (from the address it logged in from).
    pub async fn check_vhost(&self, vhost: &str) -> bool {
        let request = VhostRequest::new(vhost, self.peer.map(|peer| peer.ip()));
        self.authorizer
            .decide(self, Question::Vhost(request))
            .await
            .unwrap_or(false)
    }

    /// Whether the user may do `permission` on a resource.
    pub async fn check_resource(
        &self,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool {
        self.resource_answer(vhost, kind, name, permission)
            .await
            .unwrap_or(false)
    }

    /// [`Self::check_resource`]; None when a backend was unavailable.
    pub(crate) async fn resource_answer(
        &self,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> Option<bool> {
        let request = ResourceRequest::new(vhost, kind, name, permission);
        self.authorizer
            .decide(self, Question::Resource(request))
            .await
    }

    /// Whether the user may use `routing_key` for `permission` (write: publish; read: bind
    /// or subscribe) on `exchange`, from the connection of `client_id` (MQTT's client id;
    /// patterns may name it). Only topic exchanges are limited, as in RabbitMQ.
    pub async fn check_topic(
        &self,
        vhost: &str,
        exchange: &Exchange,
        routing_key: &str,
        permission: Permission,
        client_id: Option<&str>,
    ) -> bool {
        self.topic_answer(vhost, exchange, routing_key, permission, client_id)
            .await
            .unwrap_or(false)
    }

    /// [`Self::check_topic`]; None when a backend was unavailable.
    pub(crate) async fn topic_answer(
        &self,
        vhost: &str,
        exchange: &Exchange,
        routing_key: &str,
        permission: Permission,
        client_id: Option<&str>,
    ) -> Option<bool> {
        if !super::topic::limits_topics(exchange) {
            return Some(true);
        }
        let variables = TopicVariables::new(&self.user.name, vhost, client_id);
        let request = TopicRequest::new(vhost, &exchange.name, routing_key, permission, variables);
        self.authorizer.decide(self, Question::Topic(request)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::auth::async_trait;

    /// A backend that knows one user, answers resource questions from a switch, and counts
    /// how often it is asked.
    struct Scripted {
        name: &'static str,
        user: &'static str,
        resource: Mutex<Decision>,
        asked: AtomicUsize,
        down: bool,
    }

    impl Scripted {
        fn new(name: &'static str, user: &'static str, resource: Decision) -> Arc<Self> {
            Arc::new(Self {
                name,
                user,
                resource: Mutex::new(resource),
                asked: AtomicUsize::new(0),
                down: false,
            })
        }
    }

    #[async_trait]
    impl AuthBackend for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
            if self.down {
                return LoginOutcome::Unavailable("connection refused".into());
            }
            if request.username == self.user {
                LoginOutcome::Allow(User::new(self.user, vec![]))
            } else {
                LoginOutcome::Next
            }
        }
        async fn check_vhost(&self, _user: &User, _request: &VhostRequest) -> Decision {
            Decision::Allow
        }
        async fn check_resource(&self, _user: &User, _request: &ResourceRequest) -> Decision {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.resource.lock().clone()
        }
    }

    fn login(user: &str) -> LoginRequest {
        LoginRequest::new(Protocol::Amqp, user, "pw")
    }

    #[tokio::test]
    async fn logins_go_down_the_chain_and_answers_come_from_the_first_that_decides() {
        let first = Scripted::new("first", "ann", Decision::Next);
        let second = Scripted::new("second", "bob", Decision::Allow);
        let authorizer =
            Authorizer::new(vec![first.clone(), second.clone()], Duration::from_secs(60));
        let bob = authorizer.login(&login("bob")).await.expect("bob");
        assert_eq!(bob.backend_name(), "second");
        let refused = authorizer
            .login(&login("cy"))
            .await
            .expect_err("nobody knows cy");
        assert_eq!(refused.reason, "user 'cy' - invalid credentials");
        assert!(!refused.unavailable);
        // ann's backend says "next" for resources: the backend after it decides.
        let ann = authorizer.login(&login("ann")).await.expect("ann");
        assert!(
            ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        assert_eq!(first.asked.load(Ordering::Relaxed), 1);
        assert_eq!(second.asked.load(Ordering::Relaxed), 1);
        // Cached: asked again, no backend is.
        assert!(
            ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        assert_eq!(first.asked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_unavailable_backend_refuses_and_its_answer_is_not_cached() {
        let down = Arc::new(Scripted {
            down: true,
            ..Arc::into_inner(Scripted::new("down", "ann", Decision::Allow)).expect("sole owner")
        });
        let authorizer = Authorizer::new(vec![down], Duration::from_secs(60));
        let refused = authorizer.login(&login("ann")).await.expect_err("down");
        assert!(refused.unavailable);

        let flaky = Scripted::new("flaky", "ann", Decision::Unavailable("timeout".into()));
        let authorizer = Authorizer::new(vec![flaky.clone()], Duration::from_secs(60));
        let ann = authorizer.login(&login("ann")).await.expect("ann");
        assert!(
            !ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        // A connection's memo does not keep the refusal either.
        let mut memo = crate::auth::AccessCache::new();
        assert!(
            !memo
                .allowed(&ann, "/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        *flaky.resource.lock() = Decision::Allow;
        assert!(
            ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        assert!(
            memo.allowed(&ann, "/", ResourceKind::Queue, "q", Permission::Read)
                .await,
            "asked again once the backend answers"
        );
    }

    #[tokio::test]
    async fn answers_expire_with_the_ttl() {
        let backend = Scripted::new("b", "ann", Decision::Allow);
        let authorizer = Authorizer::new(vec![backend.clone()], Duration::from_millis(50));
        let ann = authorizer.login(&login("ann")).await.expect("ann");
        assert!(
            ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await
        );
        *backend.resource.lock() = Decision::Deny;
        assert!(
            ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await,
            "still cached"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            !ann.check_resource("/", ResourceKind::Queue, "q", Permission::Read)
                .await,
            "asked again after the TTL"
        );
    }
}
