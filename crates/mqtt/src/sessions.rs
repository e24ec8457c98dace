//! Sessions: which connection holds each client id (so a second CONNECT with the same id takes
//! the session over), and what a persistent session (`clean_session = 0`) keeps between
//! connections.
//!
//! A persistent session's subscriptions are written to the adapter state store (table
//! `mqtt.sessions`, JSON), and its queue is a durable queue, so both survive a restart. The
//! packet-identifier state (deliveries in flight, QoS 2 exchanges half done) is kept in memory
//! between connections of one broker run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::QoS;
use crate::signal::Signal;
use dashmap::DashMap;
use junction_core::queue::MessageSeq;
use junction_core::{AdapterStateStore, ConnectionId};
use tokio::sync::Notify;

const TABLE: &str = "mqtt.sessions";

/// How long a new connection waits for the one it takes over from to finish closing.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// A session's identity: vhost and client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The vhost (its name is shared by every session on it).
    pub vhost: Arc<str>,
    /// The client identifier.
    pub client_id: String,
}

impl SessionKey {
    fn store_key(&self) -> String {
        format!("{}\0{}", self.vhost, self.client_id)
    }

    /// The name of the queue that holds the session's messages.
    pub fn queue_name(&self) -> String {
        format!("mqtt-subscription-{}", self.client_id)
    }
}

/// What a session keeps between connections.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    /// Filters and the QoS granted for each.
    pub subscriptions: BTreeMap<String, u8>,
    /// Packet identifiers of deliveries not yet acknowledged, by queue position, so a
    /// delivery resent on reconnect keeps its identifier.
    #[serde(skip)]
    pub outbound: HashMap<MessageSeq, u16>,
    /// Packet identifiers whose PUBREL was sent and whose PUBCOMP has not arrived.
    #[serde(skip)]
    pub released: BTreeSet<u16>,
    /// Identifiers of QoS 2 publications received whose PUBREL has not arrived: a PUBLISH
    /// that repeats one of them is a duplicate and is not routed again.
    #[serde(skip)]
    pub incoming: BTreeSet<u16>,
}

impl SessionState {
    /// Whether there is nothing to keep: no subscriptions, no packet identifiers in use.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
            && self.outbound.is_empty()
            && self.released.is_empty()
            && self.incoming.is_empty()
    }

    /// The granted QoS of the subscriptions matching `topic`, highest first (None: none match).
    pub fn granted_qos(&self, topic: &str) -> Option<QoS> {
        self.subscriptions
            .iter()
            .filter(|(filter, _)| crate::topic::matches(filter, topic))
            .filter_map(|(_, qos)| QoS::from_u8(*qos))
            .max()
    }
}

struct Live {
    connection: ConnectionId,
    signal: Arc<Signal>,
}

/// A connection's hold on a client id, given back with [`SessionRegistry::release`].
pub struct Claim {
    /// The session (shared with the registry's record of it).
    pub key: Arc<SessionKey>,
}

/// Live sessions by client id, and saved state of persistent ones.
pub struct SessionRegistry {
    live: DashMap<Arc<SessionKey>, Live>,
    saved: DashMap<SessionKey, SessionState>,
    /// Sessions with a record in the store: only they cost a write to forget (a clean
    /// session's CONNECT must not write to disk).
    stored: DashMap<SessionKey, ()>,
    store: Option<Arc<dyn AdapterStateStore>>,
    /// Told whenever a claim is released (a takeover waits for its predecessor's).
    released: Notify,
}

impl SessionRegistry {
    /// A registry holding the persistent sessions `store` kept.
    pub fn new(store: Option<Arc<dyn AdapterStateStore>>) -> Self {
        let saved = DashMap::new();
        let stored = DashMap::new();
        let records = match &store {
            Some(store) => store.load_state(TABLE).unwrap_or_else(|error| {
                tracing::error!(%error, "cannot load MQTT sessions");
                Vec::new()
            }),
            None => Vec::new(),
        };
        for (key, bytes) in records {
            let parsed = key.split_once('\0').map(|(vhost, client_id)| SessionKey {
                vhost: vhost.into(),
                client_id: client_id.to_owned(),
            });
            match (parsed, serde_json::from_slice::<SessionState>(&bytes)) {
                (Some(key), Ok(state)) => {
                    stored.insert(key.clone(), ());
                    saved.insert(key, state);
                }
                _ => {
                    tracing::error!(key = %key.replace('\0', " "), "unreadable MQTT session skipped")
                }
            }
        }
        Self {
            live: DashMap::new(),
            saved,
            stored,
            store,
            released: Notify::new(),
        }
    }

    /// Takes the client id for `connection`. A connection that held it is told to close, and
    /// this waits (a bounded time) until it has finished, so its unacknowledged deliveries are
    /// back in the queue and its state is saved before the new connection starts.
    pub(crate) async fn claim(
        &self,
        key: SessionKey,
        connection: ConnectionId,
        signal: Arc<Signal>,
    ) -> Claim {
        let key = Arc::new(key);
        let previous = self.live.insert(
            key.clone(),
            Live {
                connection,
                signal: signal.clone(),
            },
        );
        if let Some(previous) = previous {
            tracing::info!(client_id = %key.client_id, "client id in use: taking the session over");
            previous.signal.kick();
            let wait = self.finished(&previous.signal);
            if tokio::time::timeout(TAKEOVER_WAIT, wait).await.is_err() {
                tracing::warn!(client_id = %key.client_id, "previous connection did not close in time");
            }
        }
        Claim { key }
    }

    /// Gives the client id back (unless another connection has taken it since); `connection`
    /// and `signal` are the claimant's, as given to [`SessionRegistry::claim`].
    pub(crate) fn release(&self, claim: Claim, connection: ConnectionId, signal: &Signal) {
        self.live
            .remove_if(&*claim.key, |_, live| live.connection == connection);
        signal.finish();
        self.released.notify_waiters();
    }

    /// Resolves once the connection with `signal` has released its claim. (Takeovers are
    /// rare: one notice for the registry wakes every waiting claimant, each checks its own.)
    async fn finished(&self, signal: &Signal) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if signal.is_finished() {
                return;
            }
            released.await;
        }
    }

    /// Takes the saved state of a persistent session (loaded from the store at start-up, or
    /// left by the session's previous connection).
    pub fn take_saved(&self, key: &SessionKey) -> Option<SessionState> {
        self.saved.remove(key).map(|(_, state)| state)
    }

    /// Whether anything is kept for the session (subscriptions or packet identifiers): it
    /// exists then even without a queue.
    pub fn has_saved(&self, key: &SessionKey) -> bool {
        self.saved.get(key).is_some_and(|state| !state.is_empty())
    }

    /// Keeps `state` for the next connection of the session (in memory).
    pub fn save(&self, key: SessionKey, state: SessionState) {
        self.saved.insert(key, state);
    }

    /// Writes the session's subscriptions to the store.
    pub fn persist(&self, key: &SessionKey, state: &SessionState) {
        let Some(store) = &self.store else { return };
        let written = serde_json::to_vec(state)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                store
                    .put_state(TABLE, &key.store_key(), &bytes)
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                self.stored.insert(key.clone(), ());
            }
            Err(error) => {
                tracing::error!(client_id = %key.client_id, %error, "cannot store session")
            }
        }
    }

    /// Every session: (key, connected now, saved state of a disconnected persistent one).
    pub fn list(&self) -> Vec<(SessionKey, bool, Option<SessionState>)> {
        let mut out: Vec<_> = self
            .live
            .iter()
            .map(|entry| (SessionKey::clone(entry.key()), true, None))
            .collect();
        let live: std::collections::HashSet<SessionKey> =
            out.iter().map(|(key, _, _)| key.clone()).collect();
        for entry in self.saved.iter() {
            if !live.contains(entry.key()) {
                out.push((entry.key().clone(), false, Some(entry.value().clone())));
            }
        }
        out.sort_by(|a, b| (&a.0.vhost, &a.0.client_id).cmp(&(&b.0.vhost, &b.0.client_id)));
        out
    }

    /// Forgets a session everywhere.
    pub fn forget(&self, key: &SessionKey) {
        self.saved.remove(key);
        if self.stored.remove(key).is_some()
            && let Some(store) = &self.store
            && let Err(error) = store.delete_state(TABLE, &key.store_key())
        {
            tracing::error!(client_id = %key.client_id, %error, "cannot forget session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client_id: &str) -> SessionKey {
        SessionKey {
            vhost: "/".into(),
            client_id: client_id.into(),
        }
    }

    #[tokio::test]
    async fn a_takeover_kicks_the_holder_and_waits_until_it_has_released() {
        let registry = Arc::new(SessionRegistry::new(None));
        let first_signal = Arc::new(Signal::default());
        let first = registry
            .claim(key("device"), ConnectionId(1), first_signal.clone())
            .await;

        let taker = {
            let registry = registry.clone();
            tokio::spawn(async move {
                let signal = Arc::new(Signal::default());
                registry.claim(key("device"), ConnectionId(2), signal).await
            })
        };
        // The holder is told to close; the taker waits for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while first_signal.close().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never kicked");
            tokio::task::yield_now().await;
        }
        assert!(!taker.is_finished());
        registry.release(first, ConnectionId(1), &first_signal);
        let second = tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("the takeover ends once the holder released")
            .unwrap();
        assert_eq!(second.key.client_id, "device");
        // The old holder's release did not remove the new holder's record.
        assert_eq!(
            registry
                .live
                .get(&key("device"))
                .map(|live| live.connection),
            Some(ConnectionId(2))
        );
    }
}
