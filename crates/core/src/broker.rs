//! The broker: its virtual hosts, the exchange types it knows and the chain of auth backends.
//! One `Arc<Broker>` is shared by every listener and connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::auth::Authorizer;
use crate::error::{CoreError, CoreResult, ErrorKind};
use crate::events::EventBus;
use crate::exchange::ExchangeTypeRegistry;
use crate::persistence::{MessageStore, Storage};
use crate::queue::ConnectionId;
use crate::stats::Connections;
use crate::vhost::VirtualHost;

/// Settings the core needs from the configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The vhost created at start-up.
    pub default_vhost: String,
    /// Bytes of deliveries that may be on their way to one connection, not yet written to its
    /// socket (see [`crate::DeliveryBudget`]).
    pub delivery_budget: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            default_vhost: "/".to_owned(),
            delivery_budget: crate::queue::DEFAULT_DELIVERY_BUDGET,
        }
    }
}

/// The broker model shared by every adapter.
pub struct Broker {
    vhosts: DashMap<String, Arc<VirtualHost>>,
    exchange_types: Arc<ExchangeTypeRegistry>,
    auth: Authorizer,
    next_connection: AtomicU64,
    config: BrokerConfig,
    alarm: watch::Sender<Option<String>>,
    raised: parking_lot::Mutex<std::collections::BTreeMap<&'static str, String>>,
    storage: Storage,
    refused_logins: crate::auth::RefusalLog,
    connections: Arc<Connections>,
    started: std::time::SystemTime,
    events: Arc<EventBus>,
    limits: crate::limits::ConnectionLimits,
}

impl Broker {
    /// Creates a broker with the given exchange types and auth chain, and its default vhost,
    /// keeping nothing on disk.
    pub fn new(
        config: BrokerConfig,
        exchange_types: Arc<ExchangeTypeRegistry>,
        auth: Authorizer,
    ) -> Arc<Self> {
        Self::with_store(config, exchange_types, auth, Storage::default())
    }

    /// Creates a broker whose vhosts record durable definitions and persistent messages in
    /// `storage`, and are restored from it when they are added.
    pub fn with_store(
        config: BrokerConfig,
        exchange_types: Arc<ExchangeTypeRegistry>,
        auth: Authorizer,
        storage: Storage,
    ) -> Arc<Self> {
        let events = Arc::new(EventBus::default());
        auth.set_events(events.clone());
        let broker = Arc::new(Self {
            vhosts: DashMap::new(),
            exchange_types,
            auth,
            next_connection: AtomicU64::new(1),
            config,
            alarm: watch::Sender::new(None),
            raised: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            storage,
            refused_logins: crate::auth::RefusalLog::new(),
            connections: Arc::new(Connections::with_events(events.clone())),
            started: std::time::SystemTime::now(),
            events: events.clone(),
            limits: Default::default(),
        });
        let default_vhost = broker.add_vhost(&broker.config.default_vhost.clone());
        events.attach(&default_vhost);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(events.run());
        }
        broker
    }

    /// The configuration the broker was created with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The registered exchange types.
    pub fn exchange_types(&self) -> &Arc<ExchangeTypeRegistry> {
        &self.exchange_types
    }

    /// The persistent message store, if the broker has one.
    pub fn message_store(&self) -> Option<&Arc<dyn MessageStore>> {
        self.storage.messages.as_ref()
    }

    /// The authoriser: the chain of auth backends and the cache of their answers.
    pub fn auth(&self) -> &Authorizer {
        &self.auth
    }

    /// Which refused logins get a log line: one per peer address, protocol and 10 s.
    pub fn refused_logins(&self) -> &crate::auth::RefusalLog {
        &self.refused_logins
    }

    /// Creates a vhost (or returns the existing one), restoring its stored definitions.
    pub fn add_vhost(&self, name: &str) -> Arc<VirtualHost> {
        self.vhosts
            .entry(name.to_owned())
            .or_insert_with(|| {
                let vhost = VirtualHost::with_store(
                    name,
                    self.exchange_types.clone(),
                    self.storage.clone(),
                );
                vhost.set_events(self.events.clone());
                vhost.set_limits(self.limits.clone());
                if let Some(store) = &self.storage.definitions {
                    match store.load(name) {
                        Ok(definitions) => vhost.restore(definitions),
                        Err(error) => {
                            tracing::error!(vhost = name, %error, "could not load definitions");
                        }
                    }
                }
                vhost
            })
            .value()
            .clone()
    }

    /// Deletes a vhost with everything in it: its queues (and their stored messages), its
    /// exchanges and bindings, and the connections using it, which are closed. False when
    /// there was no such vhost.
    pub async fn delete_vhost(&self, name: &str) -> CoreResult<bool> {
        let Some((_, vhost)) = self.vhosts.remove(name) else {
            return Ok(false);
        };
        for connection in self.connections.snapshots() {
            if connection.vhost == name {
                self.connections
                    .close(connection.id, &format!("vhost '{name}' is deleted"));
            }
        }
        for queue in vhost.queues() {
            let owner = queue.owner().unwrap_or(ConnectionId(0));
            vhost
                .delete_queue(queue.name(), false, false, owner)
                .await?;
        }
        for exchange in vhost.exchanges() {
            if !exchange.name.is_empty() && !exchange.name.starts_with("amq.") {
                vhost.delete_exchange(&exchange.name, false)?;
            }
        }
        Ok(true)
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> CoreResult<Arc<VirtualHost>> {
        self.vhosts
            .get(name)
            .map(|v| v.value().clone())
            .ok_or_else(|| CoreError::new(ErrorKind::NotAllowed, format!("vhost {name} not found")))
    }

    /// Raises (`Some(reason)`) or clears (`None`) the alarm of one resource (`"memory"`,
    /// `"disk"`). While any alarm is raised, adapters stop reading from publishing connections
    /// (AMQP also sends `connection.blocked` with the reasons); consumers keep draining.
    pub fn set_alarm(&self, resource: &'static str, reason: Option<String>) {
        let combined = {
            let mut raised = self.raised.lock();
            match reason {
                Some(reason) => raised.insert(resource, reason),
                None => raised.remove(resource),
            };
            (!raised.is_empty()).then(|| raised.values().cloned().collect::<Vec<_>>().join(" and "))
        };
        self.alarm.send_if_modified(|current| {
            if *current == combined {
                return false;
            }
            *current = combined;
            true
        });
    }

    /// The alarms raised now: resource and reason.
    pub fn alarms(&self) -> Vec<(&'static str, String)> {
        self.raised
            .lock()
            .iter()
            .map(|(resource, reason)| (*resource, reason.clone()))
            .collect()
    }

    /// Watches the resource alarm: `Some(reason)` while raised.
    pub fn alarm(&self) -> watch::Receiver<Option<String>> {
        self.alarm.subscribe()
    }

    /// The connection, channel and queue limits, and what is open against them.
    pub fn limits(&self) -> &crate::limits::ConnectionLimits {
        &self.limits
    }

    /// The logged-in connections of every protocol.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Where the broker's events go (`amq.rabbitmq.event`).
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// When the broker started.
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The vhosts, in name order.
    pub fn vhosts(&self) -> Vec<Arc<VirtualHost>> {
        let mut vhosts: Vec<_> = self.vhosts.iter().map(|v| v.value().clone()).collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        vhosts
    }

    /// A fresh connection identifier.
    pub fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }
}
