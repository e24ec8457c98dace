//! Persistent messages: the [`MessageStore`] trait through which the core writes persistent
//! messages routed to durable queues, and records their removal, so they survive a restart.
//! The core defines the trait; `junction-store` implements it with an append-only log.
//!
//! Order is the contract: a store applies requests in the order they are made, so a removal
//! can never overtake the publish it refers to, and completions run in request order.
//!
//! A write can fail (the disk is full, the device fails). A completion says whether its
//! request reached the disk ([`Durability`]), so nothing is acknowledged that was not written;
//! while a store cannot write it refuses new persistent messages at once ([`NotStored`]), and
//! the adapters answer their publisher with the protocol's refusal instead of an
//! acknowledgement.

mod overflow;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use overflow::{Overflow, OverflowStore, PagedAt};

use std::sync::Arc;

use crate::definitions::DefinitionStore;
use crate::message::Message;

/// The default capacity of a queue's mailbox, in commands.
pub const DEFAULT_QUEUE_MAILBOX: usize = 8192;

/// The stores a broker writes to; either may be absent (an in-memory broker).
#[derive(Clone)]
pub struct Storage {
    /// Durable exchanges, queues and bindings.
    pub definitions: Option<Arc<dyn DefinitionStore>>,
    /// Persistent messages of durable queues.
    pub messages: Option<Arc<dyn MessageStore>>,
    /// Where queues page out bodies the message store does not hold (absent: such bodies stay
    /// in memory whatever the budget).
    pub overflow: Option<Arc<dyn OverflowStore>>,
    /// Where exchange plugins keep durable state (absent: it is kept in memory and lost at
    /// restart).
    pub plugin_state: Option<Arc<dyn crate::plugin::StateStore>>,
    /// A queue's ready messages kept in memory, at most, counted by what they cost
    /// ([`Message::memory_size`](crate::Message::memory_size)), persistent and transient
    /// alike; beyond it a persistent message of a durable queue stays only in the message
    /// store, any other goes to the overflow, and they are read back before delivery.
    pub max_loaded_bytes_per_queue: usize,
    /// Commands a queue's mailbox holds. A publisher whose queue has more than half of it
    /// waiting is held by credit flow until a quarter is left ([`crate::flow`]).
    pub queue_mailbox: usize,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            definitions: None,
            messages: None,
            overflow: None,
            plugin_state: None,
            max_loaded_bytes_per_queue: 64 * 1024 * 1024,
            queue_mailbox: DEFAULT_QUEUE_MAILBOX,
        }
    }
}

/// Whether the request a completion answers reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written and covered by an fsync.
    OnDisk,
    /// Not written: the write or the fsync failed. The message is not in the store and must
    /// not be acknowledged.
    Failed,
}

/// Called once the request it was given with is on disk (after the covering fsync), or has
/// failed to get there.
pub type OnDurable = Box<dyn FnOnce(Durability) + Send>;

/// A store refused a persistent message at once: it cannot write now (an earlier write failed
/// and the disk has not recovered yet, or the store has stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the message store cannot write now")]
pub struct NotStored;

/// Names a durable queue in the store: its vhost and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    /// The vhost.
    pub vhost: String,
    /// The queue name.
    pub queue: String,
}

/// Where a stored message lies in the store, so a queue can drop its body from memory and
/// read it back when it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAt {
    /// The segment (file) number.
    pub segment: u32,
    /// The byte offset of the record in the segment.
    pub offset: u32,
}

/// A message recovered at start-up: its identity and where to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The message's store id.
    pub id: u64,
    /// Where it lies.
    pub at: StoredAt,
}

/// What a message store has done since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages written.
    pub messages: u64,
    /// Batches made durable (one fsync each).
    pub syncs: u64,
    /// Of those, batches that wrote messages (not only removals): messages over these is
    /// how many messages share an fsync.
    pub message_syncs: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Where persistent messages are kept.
pub trait MessageStore: Send + Sync + 'static {
    /// A fresh identity for a persistent message.
    fn next_id(&self) -> u64;

    /// Writes a message routed to `queues`; `on_durable` runs once it is on disk or has failed
    /// to get there. Returns where it will lie, or [`NotStored`] when the store cannot write
    /// now (then `on_durable` is dropped unrun and the message must not be enqueued).
    fn publish(
        &self,
        id: u64,
        queues: &[QueueKey],
        message: &Message,
        on_durable: Option<OnDurable>,
    ) -> Result<StoredAt, NotStored>;

    /// Records that message `id`, stored at `at`, has left `queue` for good (acknowledged,
    /// dropped, purged). A removal of a message whose write failed writes nothing.
    fn remove(&self, queue: &QueueKey, id: u64, at: StoredAt);

    /// Runs `on_durable` once everything requested so far is on disk (with
    /// [`Durability::Failed`] if some of it could not be written).
    fn sync(&self, on_durable: OnDurable);

    /// Reads message `id` back from where it was stored. None if it cannot be read, or if
    /// the record at `at` is not message `id` (a place that did not hold: its write failed
    /// and a later record took the place), so a stale place never yields another message.
    fn read(&self, id: u64, at: StoredAt) -> Option<Message>;

    /// Takes the messages recovered for a queue at start-up, oldest first (once).
    fn take_recovered(&self, queue: &QueueKey) -> Vec<Recovered>;

    /// What the store has written so far.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// When what waits for the store's writer is at its bound, a future that resolves once
    /// there is room; None when a publish may go now. The pipeline awaits it before it
    /// writes, so a disk slower than the publishers holds them back without blocking a
    /// runtime thread.
    fn room(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        None
    }
}
