//! Junction's management: the HTTP API under `/api`, compatible with RabbitMQ's management
//! plugin for the endpoints its tools use (rabbitmqadmin, the management UI's calls, health
//! checks), with RabbitMQ's JSON shapes, errors and user tags. It reads the core's own
//! counters and state ([`junction_core::stats`]); no protocol crate owns a metric.
//!
//! [`Admin`] holds what the API needs (the broker, the internal user database, the store
//! where users and vhosts made through the API are kept, the node's listeners and resource
//! probe) and [`Admin::router`] serves it; the binary merges it into the HTTP listener.

mod access;
mod auth;
mod bindings;
mod connections;
mod console;
pub mod definitions;
mod error;
mod exchanges;
mod json;
mod listing;
mod metrics;
pub mod mqtt;
mod node;
mod queues;
mod rates;
mod stats_json;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use junction_core::auth::InternalUsers;
use junction_core::{AdapterStateStore, Broker};
use parking_lot::Mutex;

pub use access::ManagedState;
pub use node::{NodeResources, ResourceProbe};

/// What the management API works on.
pub struct Admin {
    broker: Arc<Broker>,
    managed: ManagedState,
    node_name: String,
    listeners: Mutex<Vec<Listener>>,
    probe: Mutex<Option<ResourceProbe>>,
    rates: rates::Rates,
    mqtt: Mutex<Option<Arc<dyn mqtt::MqttView>>>,
}

/// A listener the node runs, as `/api/overview` lists it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// RabbitMQ's protocol name (`amqp`, `mqtt`, `stomp`, `http`, `http/web-stomp`, ...).
    pub protocol: String,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl Admin {
    /// The management of `broker`. `users` is the internal user database when the
    /// `internal` backend is enabled (users, vhosts and permissions can then be managed);
    /// `store` keeps what is changed through the API across restarts.
    pub fn new(
        broker: Arc<Broker>,
        users: Option<Arc<InternalUsers>>,
        store: Option<Arc<dyn AdapterStateStore>>,
    ) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Arc::new(Self {
            managed: ManagedState::new(users, store),
            broker,
            node_name: format!("junction@{host}"),
            listeners: Mutex::new(Vec::new()),
            probe: Mutex::new(None),
            rates: rates::Rates::default(),
            mqtt: Mutex::new(None),
        })
    }

    /// Applies the users, permissions and vhosts changed through the API before the last
    /// stop, over those of the configuration.
    pub async fn restore(&self) -> Result<(), String> {
        self.managed.restore(&self.broker).await
    }

    /// Records a listener of the node.
    pub fn add_listener(&self, protocol: &str, addr: std::net::SocketAddr) {
        self.listeners.lock().push(Listener {
            protocol: protocol.to_owned(),
            addr,
        });
    }

    /// Shows MQTT's sessions and retained messages through `view`.
    pub fn set_mqtt_view(&self, view: Arc<dyn mqtt::MqttView>) {
        *self.mqtt.lock() = Some(view);
    }

    /// Sets how the node's resources (memory, disk, file descriptors) are measured.
    pub fn set_resource_probe(&self, probe: ResourceProbe) {
        *self.probe.lock() = Some(probe);
    }

    /// The connection identity the API declares, binds and deletes as: no connection, so
    /// it owns nothing (another connection's exclusive queue stays its own).
    pub(crate) fn api_connection(&self) -> junction_core::ConnectionId {
        junction_core::ConnectionId(0)
    }

    /// The node's name, as the API shows it (`junction@host`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Samples every counter for the rates, every [`rates::SAMPLE_INTERVAL`], until
    /// `shutdown` turns true.
    pub async fn sample_rates(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(rates::SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.rates.sample(stats_json::sample(&self)),
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// The management API's routes, under `/api`, and the web console at `/`.
    pub fn router(self: &Arc<Self>) -> Router {
        let api = Router::new()
            .route("/overview", get(node::overview))
            .route("/cluster-name", get(node::cluster_name))
            .route("/nodes", get(node::nodes))
            .route("/nodes/{name}", get(node::node))
            .route("/whoami", get(access::whoami))
            .route("/aliveness-test/{vhost}", get(node::aliveness))
            .route("/health/checks/alarms", get(node::alarms))
            .route("/health/checks/local-alarms", get(node::alarms))
            .route("/health/checks/virtual-hosts", get(node::virtual_hosts))
            .route(
                "/health/checks/port-listener/{port}",
                get(node::port_listener),
            )
            .route(
                "/health/checks/protocol-listener/{protocol}",
                get(node::protocol_listener),
            )
            .route("/extensions", get(node::extensions))
            .route("/connections", get(connections::list))
            .route(
                "/connections/{name}",
                get(connections::one).delete(connections::close),
            )
            .route(
                "/connections/username/{user}",
                get(connections::of_user).delete(connections::close_of_user),
            )
            .route(
                "/connections/{name}/channels",
                get(connections::channels_of),
            )
            .route(
                "/vhosts/{vhost}/connections",
                get(connections::list_in_vhost),
            )
            .route("/channels", get(connections::channels))
            .route(
                "/vhosts/{vhost}/channels",
                get(connections::channels_in_vhost),
            )
            .route("/consumers", get(queues::consumers))
            .route("/consumers/{vhost}", get(queues::consumers_in_vhost))
            .route("/exchanges", get(exchanges::list))
            .route("/exchanges/{vhost}", get(exchanges::list_in_vhost))
            .route(
                "/exchanges/{vhost}/{name}",
                get(exchanges::one)
                    .put(exchanges::declare)
                    .delete(exchanges::delete),
            )
            .route(
                "/exchanges/{vhost}/{name}/publish",
                post(exchanges::publish),
            )
            .route(
                "/exchanges/{vhost}/{name}/bindings/source",
                get(bindings::from_exchange),
            )
            .route(
                "/exchanges/{vhost}/{name}/bindings/destination",
                get(bindings::to_exchange),
            )
            .route("/queues", get(queues::list))
            .route("/queues/{vhost}", get(queues::list_in_vhost))
            .route(
                "/queues/{vhost}/{name}",
                get(queues::one).put(queues::declare).delete(queues::delete),
            )
            .route(
                "/queues/{vhost}/{name}/contents",
                axum::routing::delete(queues::purge),
            )
            .route("/queues/{vhost}/{name}/get", post(queues::get))
            .route("/queues/{vhost}/{name}/bindings", get(bindings::to_queue))
            .route("/bindings", get(bindings::list))
            .route("/bindings/{vhost}", get(bindings::list_in_vhost))
            .route(
                "/bindings/{vhost}/e/{source}/{kind}/{destination}",
                get(bindings::between).post(bindings::create),
            )
            .route(
                "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
                get(bindings::one).delete(bindings::delete),
            )
            .route("/vhosts", get(access::vhosts))
            .route(
                "/vhosts/{vhost}",
                get(access::vhost)
                    .put(access::put_vhost)
                    .delete(access::delete_vhost),
            )
            .route(
                "/vhosts/{vhost}/permissions",
                get(access::vhost_permissions),
            )
            .route(
                "/vhosts/{vhost}/topic-permissions",
                get(access::vhost_topic_permissions),
            )
            .route("/users", get(access::users))
            .route(
                "/users/without-permissions",
                get(access::users_without_permissions),
            )
            .route("/users/bulk-delete", post(access::bulk_delete_users))
            .route(
                "/users/{user}",
                get(access::user)
                    .put(access::put_user)
                    .delete(access::delete_user),
            )
            .route("/users/{user}/permissions", get(access::user_permissions))
            .route(
                "/users/{user}/topic-permissions",
                get(access::user_topic_permissions),
            )
            .route("/permissions", get(access::permissions))
            .route(
                "/permissions/{vhost}/{user}",
                get(access::permission)
                    .put(access::put_permission)
                    .delete(access::delete_permission),
            )
            .route("/topic-permissions", get(access::topic_permissions))
            .route(
                "/topic-permissions/{vhost}/{user}",
                get(access::topic_permission)
                    .put(access::put_topic_permission)
                    .delete(access::delete_topic_permission),
            )
            .route(
                "/definitions",
                get(definitions::export).post(definitions::import),
            )
            .route(
                "/definitions/{vhost}",
                get(definitions::export_vhost).post(definitions::import_vhost),
            )
            .route("/mqtt/sessions", get(mqtt::sessions))
            .route("/mqtt/retained/{vhost}", get(mqtt::retained))
            .route("/exchange-types", get(node::exchange_types))
            .route("/parameters", get(node::empty_list))
            .route("/policies", get(node::empty_list))
            .route("/policies/{vhost}", get(node::empty_list))
            .route("/feature-flags", get(node::empty_list))
            .route("/global-parameters", get(node::empty_list))
            .route("/vhost-limits", get(node::empty_list))
            .route("/user-limits", get(node::empty_list))
            .fallback(node::not_found)
            .with_state(self.clone());
        Router::new().nest("/api", api).merge(console::router())
    }
}
