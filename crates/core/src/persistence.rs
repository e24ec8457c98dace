//! Persistent messages: the [`MessageStore`] trait through which the core writes persistent
//! messages routed to durable queues, and records their removal, so they survive a restart.
//! The core defines the trait; `junction-store` implements it with an append-only log.
//!
//! Order is the contract: a store applies requests in the order they are made, so a removal
//! can never overtake the publish it refers to, and completions run in request order.

use std::sync::Arc;

use crate::definitions::DefinitionStore;
use crate::message::Message;

/// The stores a broker writes to; either may be absent (an in-memory broker).
#[derive(Clone, Default)]
pub struct Storage {
    /// Durable exchanges, queues and bindings.
    pub definitions: Option<Arc<dyn DefinitionStore>>,
    /// Persistent messages of durable queues.
    pub messages: Option<Arc<dyn MessageStore>>,
}

/// Called once the request it was given with is on disk (after the covering fsync).
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Names a durable queue in the store: its vhost and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    /// The vhost.
    pub vhost: String,
    /// The queue name.
    pub queue: String,
}

/// Where persistent messages are kept.
pub trait MessageStore: Send + Sync + 'static {
    /// A fresh identity for a persistent message.
    fn next_id(&self) -> u64;

    /// Writes a message routed to `queues`; `on_durable` runs once it is on disk.
    fn publish(
        &self,
        id: u64,
        queues: &[QueueKey],
        message: &Message,
        on_durable: Option<OnDurable>,
    );

    /// Records that message `id` has left `queue` for good (acknowledged, dropped, purged).
    fn remove(&self, queue: &QueueKey, id: u64);

    /// Runs `on_durable` once everything requested so far is on disk.
    fn sync(&self, on_durable: OnDurable);

    /// Takes the messages recovered for a queue at start-up, oldest first (once).
    fn take_recovered(&self, queue: &QueueKey) -> Vec<Message>;
}
