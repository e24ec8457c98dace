//! Connection and channel limits: the whole broker's `connection_max`, each vhost's
//! `max_connections`, each user's `max_connections` and `max_channels` (RabbitMQ's node
//! limit, vhost limits and user limits), and publish rates per user and per connection.
//! Every protocol asks here once a client has logged in and named its vhost, and holds the
//! [`ConnectionSlot`] it gets until it closes; AMQP also counts its channels through the slot,
//! and every publish is charged to it.
//!
//! A publish rate (messages and bytes per second, which neither RabbitMQ nor Mosquitto
//! offer) is a token bucket holding one second's worth: a publisher past it is not refused
//! and nothing is dropped; its connection is held by flow control ([`FlowHold::until`]),
//! unread until the bucket has refilled, so TCP pushes back on the client. A user's bucket is
//! shared by all its connections (a mutex per user, taken only when that user has a rate).
//!
//! Logins and channel opens are rare next to messages, so one mutex guards the counts. While
//! no connection or channel limit is set, nothing is counted and connections hold no slot
//! (the limits are set from the configuration, before the listeners start).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

use crate::flow::FlowHold;

/// A publish rate limit (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishRate {
    /// Messages per second.
    pub messages: Option<u32>,
    /// Body bytes per second.
    pub bytes: Option<u64>,
}

impl PublishRate {
    fn is_set(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    fn meter(&self) -> Option<Meter> {
        self.is_set().then(|| Meter {
            messages: self.messages.map(|rate| Bucket::new(f64::from(rate))),
            bytes: self.bytes.map(|rate| Bucket::new(rate as f64)),
        })
    }
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let rate = rate.max(1.0);
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes `amount` tokens (going into debt if need be); how long until the debt is paid.
    fn charge(&mut self, amount: f64, now: Instant) -> Duration {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate) - amount;
        self.last = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The buckets of one publish rate.
#[derive(Debug)]
struct Meter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Meter {
    fn charge(&mut self, bytes: usize, now: Instant) -> Duration {
        let messages = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.charge(1.0, now));
        let bytes = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.charge(bytes as f64, now));
        messages.max(bytes)
    }
}

/// Limits of one vhost (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostLimits {
    /// Connections open to the vhost at once.
    pub max_connections: Option<usize>,
    /// Queues the vhost may hold.
    pub max_queues: Option<usize>,
}

/// Limits of one user (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Connections the user may have open at once.
    pub max_connections: Option<usize>,
    /// AMQP channels the user may have open at once, over all its connections.
    pub max_channels: Option<usize>,
    /// What the user may publish, over all its connections.
    pub publish_rate: PublishRate,
}

/// A limit a client ran into; the messages are RabbitMQ's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The broker's `connection_max`.
    #[error("connection refused: node connection limit ({0}) is reached")]
    Node(usize),
    /// The vhost's `max_connections`.
    #[error(
        "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
    )]
    Vhost {
        /// The vhost.
        vhost: String,
        /// The user.
        user: String,
        /// Its limit.
        limit: usize,
    },
    /// The user's `max_connections`.
    #[error("Connection refused for user '{user}': user connection limit ({limit}) is reached")]
    UserConnections {
        /// The user.
        user: String,
        /// Its limit.
        limit: usize,
    },
    /// The user's `max_channels`.
    #[error(
        "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({limit})"
    )]
    UserChannels {
        /// The user.
        user: String,
        /// Its limit.
        limit: usize,
    },
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_vhost: HashMap<String, usize>,
    /// Connections and channels per user.
    by_user: HashMap<String, (usize, usize)>,
}

#[derive(Default)]
struct Shared {
    connection_max: Option<usize>,
    vhosts: HashMap<String, VhostLimits>,
    users: HashMap<String, UserLimits>,
    counts: Counts,
    /// Each rate-limited user's bucket, shared by its connections.
    meters: HashMap<String, Arc<Mutex<Meter>>>,
}

/// The broker's connection limits and what is open against them. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConnectionLimits {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.shared.lock();
        f.debug_struct("ConnectionLimits")
            .field("connection_max", &shared.connection_max)
            .field("open", &shared.counts.total)
            .finish()
    }
}

impl ConnectionLimits {
    /// Sets the whole broker's limit on logged-in connections (None: unlimited).
    pub fn set_connection_max(&self, max: Option<usize>) {
        self.shared.lock().connection_max = max;
    }

    /// Sets a vhost's limits.
    pub fn set_vhost_limits(&self, vhost: &str, limits: VhostLimits) {
        self.shared.lock().vhosts.insert(vhost.to_owned(), limits);
    }

    /// A vhost's limits.
    pub fn vhost_limits(&self, vhost: &str) -> VhostLimits {
        self.shared
            .lock()
            .vhosts
            .get(vhost)
            .copied()
            .unwrap_or_default()
    }

    /// Sets a user's limits.
    pub fn set_user_limits(&self, user: &str, limits: UserLimits) {
        self.shared.lock().users.insert(user.to_owned(), limits);
    }

    /// A user's limits.
    pub fn user_limits(&self, user: &str) -> UserLimits {
        self.shared
            .lock()
            .users
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    /// Admits a connection of `user` to `vhost`, with `own` publish rate for itself alone,
    /// or says which limit it would exceed. The slot counts it until dropped; None when no
    /// connection, channel or rate limit is set.
    pub fn admit(
        &self,
        user: &str,
        vhost: &str,
        own: PublishRate,
    ) -> Result<Option<ConnectionSlot>, LimitExceeded> {
        let mut shared = self.shared.lock();
        let shared = &mut *shared;
        let any_limit = own.is_set()
            || shared.connection_max.is_some()
            || shared.vhosts.values().any(|l| l.max_connections.is_some())
            || shared.users.values().any(|l| {
                l.max_connections.is_some() || l.max_channels.is_some() || l.publish_rate.is_set()
            });
        if !any_limit {
            return Ok(None);
        }
        if let Some(max) = shared.connection_max
            && shared.counts.total >= max
        {
            return Err(LimitExceeded::Node(max));
        }
        let in_vhost = shared.counts.by_vhost.get(vhost).copied().unwrap_or(0);
        if let Some(limit) = shared.vhosts.get(vhost).and_then(|l| l.max_connections)
            && in_vhost >= limit
        {
            return Err(LimitExceeded::Vhost {
                vhost: vhost.to_owned(),
                user: user.to_owned(),
                limit,
            });
        }
        let (of_user, _) = shared.counts.by_user.get(user).copied().unwrap_or((0, 0));
        if let Some(limit) = shared.users.get(user).and_then(|l| l.max_connections)
            && of_user >= limit
        {
            return Err(LimitExceeded::UserConnections {
                user: user.to_owned(),
                limit,
            });
        }
        shared.counts.total += 1;
        *shared.counts.by_vhost.entry(vhost.to_owned()).or_default() += 1;
        shared.counts.by_user.entry(user.to_owned()).or_default().0 += 1;
        let user_meter = match shared.users.get(user).and_then(|l| l.publish_rate.meter()) {
            None => None,
            Some(meter) => Some(
                shared
                    .meters
                    .entry(user.to_owned())
                    .or_insert_with(|| Arc::new(Mutex::new(meter)))
                    .clone(),
            ),
        };
        Ok(Some(ConnectionSlot {
            limits: self.clone(),
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            channels: 0,
            user_meter,
            own_meter: own.meter(),
            paused_until: None,
        }))
    }

    /// Connections open now (logged in), in all.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().counts.total
    }
}

/// One admitted connection, counted until dropped.
pub struct ConnectionSlot {
    limits: ConnectionLimits,
    user: String,
    vhost: String,
    channels: usize,
    user_meter: Option<Arc<Mutex<Meter>>>,
    own_meter: Option<Meter>,
    /// Until when the publisher is paused by its rate.
    paused_until: Option<Instant>,
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .field("channels", &self.channels)
            .finish()
    }
}

impl ConnectionSlot {
    /// Charges one published message of `bytes` to the user's and the connection's rates;
    /// past either, holds the connection (in `flow`, unless something holds it already)
    /// until the debt is paid.
    pub fn charge_publish(&mut self, bytes: usize, flow: &mut Option<FlowHold>) {
        if self.user_meter.is_none() && self.own_meter.is_none() {
            return;
        }
        let now = Instant::now();
        let mut wait = self
            .own_meter
            .as_mut()
            .map_or(Duration::ZERO, |meter| meter.charge(bytes, now));
        if let Some(meter) = &self.user_meter {
            wait = wait.max(meter.lock().charge(bytes, now));
        }
        if !wait.is_zero() {
            tracing::debug!(user = %self.user, ?wait, "publisher held by its publish rate");
            self.paused_until = Some(now + wait);
            if flow.is_none() {
                *flow = Some(FlowHold::until(now + wait));
            }
        }
    }

    /// Whether the next publish must wait for the rate's pause to end: the adapter leaves it
    /// unhandled in its buffer (a read brings many), and the connection is held (in `flow`)
    /// until then.
    pub fn holds_publish(&mut self, flow: &mut Option<FlowHold>) -> bool {
        match self.paused_until {
            Some(until) if Instant::now() < until => {
                if flow.is_none() {
                    *flow = Some(FlowHold::until(until));
                }
                true
            }
            _ => {
                self.paused_until = None;
                false
            }
        }
    }

    /// Counts a channel this connection opens, or refuses it: the user's `max_channels`.
    pub fn open_channel(&mut self) -> Result<(), LimitExceeded> {
        let mut shared = self.limits.shared.lock();
        let shared = &mut *shared;
        let limit = shared.users.get(&self.user).and_then(|l| l.max_channels);
        let counts = shared.counts.by_user.entry(self.user.clone()).or_default();
        if let Some(limit) = limit
            && counts.1 >= limit
        {
            return Err(LimitExceeded::UserChannels {
                user: self.user.clone(),
                limit,
            });
        }
        counts.1 += 1;
        self.channels += 1;
        Ok(())
    }

    /// Uncounts channels this connection had opened until `open` are left.
    pub fn channels_left(&mut self, open: usize) {
        while self.channels > open {
            self.close_channel();
        }
    }

    /// Uncounts a channel this connection had opened.
    pub fn close_channel(&mut self) {
        if self.channels == 0 {
            return;
        }
        self.channels -= 1;
        let mut shared = self.limits.shared.lock();
        if let Some(counts) = shared.counts.by_user.get_mut(&self.user) {
            counts.1 = counts.1.saturating_sub(1);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut shared = self.limits.shared.lock();
        let counts = &mut shared.counts;
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_vhost.get_mut(&self.vhost) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_vhost.remove(&self.vhost);
            }
        }
        if let Some((connections, channels)) = counts.by_user.get_mut(&self.user) {
            *connections = connections.saturating_sub(1);
            *channels = channels.saturating_sub(self.channels);
            if *connections == 0 && *channels == 0 {
                counts.by_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ConnectionLimits {
        fn admit_plain(
            &self,
            user: &str,
            vhost: &str,
        ) -> Result<Option<ConnectionSlot>, LimitExceeded> {
            self.admit(user, vhost, PublishRate::default())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_past_its_rate_is_held_until_the_bucket_refills() {
        let limits = ConnectionLimits::default();
        limits.set_user_limits(
            "sensor",
            UserLimits {
                publish_rate: PublishRate {
                    messages: Some(10),
                    bytes: None,
                },
                ..Default::default()
            },
        );
        let mut first = limits
            .admit_plain("sensor", "/")
            .expect("in")
            .expect("slot");
        let mut second = limits
            .admit_plain("sensor", "/")
            .expect("in")
            .expect("slot");
        let mut flow = None;
        // One second's worth is there at once, shared by the user's connections.
        for _ in 0..5 {
            first.charge_publish(10, &mut flow);
            second.charge_publish(10, &mut flow);
        }
        assert!(flow.is_none());
        second.charge_publish(10, &mut flow);
        let mut held = flow.take().expect("held past 10 messages");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(held.poll_caught_up(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(
            held.poll_caught_up(&mut cx).is_ready(),
            "a tenth of a second pays one message"
        );
        // A byte rate of its own, for one connection only (MQTT's per-client rate).
        let mut own = limits
            .admit(
                "other",
                "/",
                PublishRate {
                    messages: None,
                    bytes: Some(1000),
                },
            )
            .expect("in")
            .expect("slot");
        own.charge_publish(1000, &mut flow);
        assert!(flow.is_none());
        own.charge_publish(500, &mut flow);
        assert!(flow.is_some());
    }

    #[test]
    fn without_limits_nothing_is_counted() {
        let limits = ConnectionLimits::default();
        assert!(limits.admit_plain("ann", "/").expect("admitted").is_none());
        assert_eq!(limits.open_connections(), 0);
    }

    #[test]
    fn each_limit_refuses_the_connection_past_it_and_frees_its_place_on_drop() {
        let limits = ConnectionLimits::default();
        limits.set_connection_max(Some(3));
        limits.set_vhost_limits(
            "small",
            VhostLimits {
                max_connections: Some(1),
                max_queues: None,
            },
        );
        limits.set_user_limits(
            "ann",
            UserLimits {
                max_connections: Some(1),
                max_channels: Some(2),
                publish_rate: PublishRate::default(),
            },
        );
        let first = limits
            .admit_plain("bob", "small")
            .expect("first in small")
            .expect("counted");
        assert!(matches!(
            limits.admit_plain("cy", "small"),
            Err(LimitExceeded::Vhost { limit: 1, .. })
        ));
        let mut ann = limits
            .admit_plain("ann", "/")
            .expect("ann")
            .expect("counted");
        assert!(matches!(
            limits.admit_plain("ann", "/"),
            Err(LimitExceeded::UserConnections { limit: 1, .. })
        ));
        let _bob = limits.admit_plain("bob", "/").expect("bob");
        assert_eq!(
            limits.admit_plain("dee", "/").err(),
            Some(LimitExceeded::Node(3))
        );
        drop(first);
        let _cy = limits
            .admit_plain("cy", "small")
            .expect("a place was freed");

        ann.open_channel().expect("1");
        ann.open_channel().expect("2");
        assert!(matches!(
            ann.open_channel(),
            Err(LimitExceeded::UserChannels { limit: 2, .. })
        ));
        ann.close_channel();
        ann.open_channel().expect("a channel was closed");
        drop(ann);
        let mut again = limits
            .admit_plain("ann", "/")
            .expect("ann's slot was freed")
            .expect("counted");
        again
            .open_channel()
            .expect("her channels were uncounted with her connection");
    }
}
