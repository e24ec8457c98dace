//! Broker events on the `amq.rabbitmq.event` topic exchange, as RabbitMQ's event exchange
//! plugin publishes them: `connection.created`/`closed`, `queue.created`/`deleted`,
//! `consumer.created`/`deleted`, `user.authentication.success`/`failure`. The routing key is
//! the event's name, the body is empty and the event's properties are headers (with
//! `timestamp_in_ms`). Any protocol can bind to the exchange (MQTT through a topic filter on
//! it, STOMP through `/exchange/amq.rabbitmq.event/...`).
//!
//! Events go to the default vhost's exchange, and only while something is bound to it: an
//! event nobody listens for costs one lookup. They are published by one task, in order,
//! through the normal pipeline; beyond [`EVENT_BACKLOG`] waiting events, new ones are dropped
//! and counted rather than hold up the connection or queue that caused them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::field::{FieldTable, FieldValue};
use crate::message::{Message, Properties};
use crate::publish::Publication;
use crate::vhost::VirtualHost;

/// The exchange events are published to.
pub const EVENT_EXCHANGE: &str = "amq.rabbitmq.event";
/// Events waiting to be published at most.
pub const EVENT_BACKLOG: usize = 10_000;

/// One event: its name (the routing key) and its properties.
#[derive(Debug)]
pub struct Event {
    kind: &'static str,
    headers: FieldTable,
}

/// Where events go: the default vhost's event exchange, through one publishing task.
pub struct EventBus {
    tx: mpsc::Sender<Event>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    vhost: OnceLock<Weak<VirtualHost>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(EVENT_BACKLOG);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            vhost: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }
}

/// A string header value.
pub fn text(value: impl Into<String>) -> FieldValue {
    FieldValue::string(value)
}

impl EventBus {
    /// Publishes events into `vhost`'s event exchange (once; later calls change nothing).
    pub(crate) fn attach(&self, vhost: &Arc<VirtualHost>) {
        let _ = self.vhost.set(Arc::downgrade(vhost));
    }

    /// Whether something is bound to the event exchange.
    pub fn is_wanted(&self) -> bool {
        self.vhost
            .get()
            .and_then(Weak::upgrade)
            .and_then(|vhost| vhost.exchange(EVENT_EXCHANGE).ok())
            .is_some_and(|exchange| exchange.binding_count() > 0)
    }

    /// Emits event `kind` with the headers `fill` sets, when someone listens.
    pub fn emit(&self, kind: &'static str, fill: impl FnOnce(&mut FieldTable)) {
        if !self.is_wanted() {
            return;
        }
        let mut headers = FieldTable::new();
        fill(&mut headers);
        if self.tx.try_send(Event { kind, headers }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because too many were waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Publishes events as they come, until the bus is dropped (run once; a second call
    /// returns at once).
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        let bus = Arc::downgrade(&self);
        drop(self);
        while let Some(event) = rx.recv().await {
            let Some(vhost) = bus
                .upgrade()
                .and_then(|bus| bus.vhost.get().and_then(Weak::upgrade))
            else {
                return;
            };
            let Ok(exchange) = vhost.exchange(EVENT_EXCHANGE) else {
                continue;
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let mut headers = event.headers;
            headers.insert(
                "timestamp_in_ms",
                FieldValue::I64(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
            );
            let properties = Properties {
                headers: Some(headers),
                timestamp: Some(now.as_secs()),
                ..Properties::default()
            };
            let message = Message::new(EVENT_EXCHANGE, event.kind, properties, Bytes::new());
            vhost.publish(Publication::new(&exchange, message)).await;
        }
    }
}
