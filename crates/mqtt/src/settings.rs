//! The MQTT listener's settings and the state every MQTT connection of a broker shares.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use dashmap::DashMap;
use junction_core::{AdapterStateStore, Broker, Principal};
use junction_transport::ParkingLot;

use crate::retained::RetainedStore;
use crate::sessions::SessionRegistry;
use crate::signal::Connections;

/// Settings of the MQTT adapter (the `[mqtt]` configuration section).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The topic exchange MQTT topics are routing keys on.
    pub exchange: String,
    /// The largest packet accepted from a connected client, in bytes; larger ones close the
    /// connection.
    pub max_packet_size: usize,
    /// The largest CONNECT accepted (before the client is authenticated), in bytes.
    pub max_connect_size: usize,
    /// Unacknowledged QoS 1 and 2 deliveries per session, at most.
    pub max_inflight: u32,
    /// Messages a session's queue may hold before QoS 0 messages for it are dropped (and
    /// counted), as Mosquitto's `max_queued_messages`; 0 = never dropped. QoS 1 and 2 are
    /// never dropped.
    pub max_queued_qos0: u32,
    /// Whether an idle TCP connection leaves its task for the parking lot.
    pub park_idle_connections: bool,
    /// Clients that send no user name log in as `anonymous_user` (the default, as RabbitMQ
    /// and Mosquitto 2 on loopback: guest may only log in from loopback); otherwise they are
    /// refused.
    pub allow_anonymous: bool,
    /// The user anonymous clients log in as.
    pub anonymous_user: String,
    /// That user's password.
    pub anonymous_password: String,
    /// How long a client has from connecting to sending CONNECT.
    pub connect_timeout: std::time::Duration,
    /// What one client (connection) may publish; past it the connection is not read until
    /// its bucket refills.
    pub publish_rate_per_client: junction_core::limits::PublishRate,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            exchange: "amq.topic".to_owned(),
            max_packet_size: 16 * 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_inflight: 32,
            max_queued_qos0: 1000,
            park_idle_connections: true,
            allow_anonymous: true,
            anonymous_user: "guest".to_owned(),
            anonymous_password: "guest".to_owned(),
            connect_timeout: std::time::Duration::from_secs(10),
            publish_rate_per_client: Default::default(),
        }
    }
}

/// What every MQTT connection of a broker shares: the broker, the settings, retained messages
/// and the session registry. One per broker process, shared by all MQTT listeners (TCP and
/// WebSocket), so a client id is one session whichever way the client comes in.
pub struct Mqtt {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The adapter's settings.
    pub settings: Settings,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Live and saved sessions.
    pub sessions: SessionRegistry,
    /// Every open connection's close signal.
    pub(crate) connections: Arc<Connections>,
    /// Where idle TCP connections wait without a task (made on first use).
    parking: OnceLock<Option<ParkingLot>>,
    /// The principal each user's connections share, by user name.
    principals: DashMap<String, Arc<Principal>>,
    /// Vhost names, shared by the sessions on each vhost.
    vhost_names: DashMap<String, Arc<str>>,
}

impl Mqtt {
    /// The adapter's shared state; `store` keeps retained messages and persistent sessions
    /// across restarts (loaded now).
    pub fn new(
        broker: Arc<Broker>,
        settings: Settings,
        store: Option<Arc<dyn AdapterStateStore>>,
    ) -> Arc<Self> {
        let connections = Arc::new(Connections::default());
        let started = broker
            .started()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        connections.set_started(started);
        broker.connections().add_source(connections.clone());
        Arc::new(Self {
            broker,
            settings,
            retained: RetainedStore::load(store.clone()),
            sessions: SessionRegistry::new(store),
            connections,
            parking: OnceLock::new(),
            principals: DashMap::new(),
            vhost_names: DashMap::new(),
        })
    }

    /// The vhost name `name` as one shared string.
    pub(crate) fn share_vhost_name(&self, name: &str) -> Arc<str> {
        if let Some(shared) = self.vhost_names.get(name) {
            return shared.clone();
        }
        self.vhost_names
            .entry(name.to_owned())
            .or_insert_with(|| name.into())
            .clone()
    }

    /// The principal to keep for a connection that logged in as `principal`: the one other
    /// connections of the same user already share, unless the user or its backend changed.
    /// Thousands of devices often log in as one user; each keeps a pointer, not a copy.
    pub(crate) fn share_principal(&self, principal: Principal) -> Arc<Principal> {
        let mut entry = self
            .principals
            .entry(principal.user.name.clone())
            .or_insert_with(|| Arc::new(principal.clone()));
        if !entry.same_as(&principal) {
            *entry = Arc::new(principal);
        }
        entry.clone()
    }

    /// The parking lot for idle connections; None if parking is off or the lot cannot be
    /// made (connections then keep their tasks). Called from a connection's task, so a runtime is there.
    pub(crate) fn parking_lot(&self) -> Option<&ParkingLot> {
        if !self.settings.park_idle_connections {
            return None;
        }
        self.parking
            .get_or_init(|| match ParkingLot::new() {
                Ok(lot) => Some(lot),
                Err(error) => {
                    tracing::warn!(%error, "cannot make the parking lot: idle MQTT connections keep their tasks");
                    None
                }
            })
            .as_ref()
    }

    /// Closes every MQTT connection, and any opened later, once `shutdown` turns true (or its
    /// sender is gone). Run it as a task beside the listeners; wills are not published.
    pub async fn close_connections_on(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|shutting_down| *shutting_down).await;
        self.connections.shut_down();
    }

    /// Every session as the management API shows it: connected ones with the filters bound
    /// to their queue, and disconnected persistent ones with their saved subscriptions.
    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        // The filters bound to each session queue, gathered once per vhost.
        let mut bound: std::collections::HashMap<(String, String), Vec<String>> =
            std::collections::HashMap::new();
        let mut gathered = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (key, connected, saved) in self.sessions.list() {
            let subscriptions = match saved {
                Some(state) => state
                    .subscriptions
                    .into_iter()
                    .map(|(filter, qos)| (filter, Some(qos)))
                    .collect(),
                None => {
                    if gathered.insert(key.vhost.to_string()) {
                        self.gather_filters(&key.vhost, &mut bound);
                    }
                    bound
                        .remove(&(key.vhost.to_string(), key.queue_name()))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|filter| (filter, None))
                        .collect()
                }
            };
            out.push(SessionSummary {
                vhost: key.vhost.to_string(),
                client_id: key.client_id.clone(),
                connected,
                subscriptions,
            });
        }
        out
    }

    /// The filters bound to each queue of `vhost` on the MQTT exchange (their QoS lives in
    /// the connections), by (vhost, queue name).
    fn gather_filters(
        &self,
        vhost: &str,
        bound: &mut std::collections::HashMap<(String, String), Vec<String>>,
    ) {
        let Ok(host) = self.broker.vhost(vhost) else {
            return;
        };
        let Ok(exchange) = host.exchange(&self.settings.exchange) else {
            return;
        };
        for binding in exchange.bindings() {
            if let junction_core::BindingTarget::Queue(queue) = &binding.target {
                bound
                    .entry((vhost.to_owned(), queue.name().to_owned()))
                    .or_default()
                    .push(crate::topic::binding_key_to_filter(&binding.routing_key));
            }
        }
    }

    /// The retained messages of `vhost`: topic, QoS and payload.
    pub fn retained_messages(&self, vhost: &str) -> Vec<(String, u8, bytes::Bytes)> {
        self.retained
            .matching(vhost, "#")
            .into_iter()
            .map(|(topic, retained)| (topic, retained.qos as u8, retained.payload))
            .collect()
    }

    /// Resolves once every MQTT connection has finished closing after the broker began to
    /// shut down (see [`Mqtt::close_connections_on`]): wills published or not, deliveries
    /// back in their queues, sessions saved. Parked connections have no task for the
    /// listeners to wait on, so the binary waits for this too.
    pub async fn connections_closed(&self) {
        self.connections.all_closed().await;
    }
}

/// One MQTT session, as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its vhost.
    pub vhost: String,
    /// Its client id.
    pub client_id: String,
    /// Whether a connection holds it now.
    pub connected: bool,
    /// Its filters, with the QoS granted when known (a disconnected session's saved state).
    pub subscriptions: Vec<(String, Option<u8>)>,
}
