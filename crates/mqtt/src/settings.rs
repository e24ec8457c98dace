//! The MQTT listener's settings and the state every MQTT connection of a broker shares.

use std::sync::Arc;

use tokio::sync::watch;

use junction_core::{AdapterStateStore, Broker};

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
    /// Clients that send no user name log in as `anonymous_user`; otherwise they are refused.
    pub allow_anonymous: bool,
    /// The user anonymous clients log in as.
    pub anonymous_user: String,
    /// That user's password.
    pub anonymous_password: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            exchange: "amq.topic".to_owned(),
            max_packet_size: 16 * 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_inflight: 32,
            allow_anonymous: false,
            anonymous_user: "guest".to_owned(),
            anonymous_password: "guest".to_owned(),
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
    pub(crate) connections: Connections,
}

impl Mqtt {
    /// The adapter's shared state; `store` keeps retained messages and persistent sessions
    /// across restarts (loaded now).
    pub fn new(
        broker: Arc<Broker>,
        settings: Settings,
        store: Option<Arc<dyn AdapterStateStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            settings,
            retained: RetainedStore::load(store.clone()),
            sessions: SessionRegistry::new(store),
            connections: Connections::default(),
        })
    }

    /// Closes every MQTT connection, and any opened later, once `shutdown` turns true (or its
    /// sender is gone). Run it as a task beside the listeners; wills are not published.
    pub async fn close_connections_on(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|shutting_down| *shutting_down).await;
        self.connections.shut_down();
    }
}
