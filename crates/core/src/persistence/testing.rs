//! An in-memory [`MessageStore`] for tests of the core and the adapters: it places every
//! message without writing anything and keeps its completion until the test settles it, so a
//! test decides when (and whether) a message reached the disk; and an in-memory overflow
//! ([`MemoryOverflow`]) that counts what queues page out, read back and release. Built only
//! for tests (the `testing` feature, which the adapters enable in their dev-dependencies).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{
    Durability, MessageStore, NotStored, OnDurable, Overflow, OverflowStore, PagedAt, QueueKey,
    Recovered, StoredAt,
};
use crate::exchange::ExchangeTypeRegistry;
use crate::message::Message;
use crate::vhost::VirtualHost;

/// A vhost `/` with the built-in exchange types whose persistent messages go to `store`
/// (and nothing else to disk).
pub fn vhost_on(store: Arc<HeldStore>) -> Arc<VirtualHost> {
    let storage = super::Storage {
        messages: Some(store),
        ..Default::default()
    };
    VirtualHost::with_store(
        "/",
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        storage,
    )
}

/// An overflow kept in memory, shared by every queue that opens it: it counts what is
/// paged (live), read back and flushed.
#[derive(Default)]
pub struct MemoryOverflow {
    pages: Mutex<HashMap<(u32, u32), Message>>,
    next: AtomicU64,
    reads: AtomicU64,
    flushes: AtomicU64,
}

impl MemoryOverflow {
    /// An empty overflow.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Messages paged out and not released yet.
    pub fn live(&self) -> usize {
        self.pages.lock().len()
    }

    /// Messages read back so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// One queue's view of a [`MemoryOverflow`].
struct MemoryQueueOverflow(Arc<MemoryOverflow>);

impl OverflowStore for Arc<MemoryOverflow> {
    fn open(&self, _queue: &QueueKey) -> Arc<dyn Overflow> {
        Arc::new(MemoryQueueOverflow(self.clone()))
    }
}

impl Overflow for MemoryQueueOverflow {
    fn append(&self, message: &Message) -> Option<PagedAt> {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        let at = PagedAt {
            segment: (n >> 32) as u32,
            offset: n as u32,
        };
        self.0
            .pages
            .lock()
            .insert((at.segment, at.offset), message.clone());
        Some(at)
    }

    fn wants_flush(&self) -> bool {
        false
    }

    fn unwritten_bytes(&self) -> usize {
        0
    }

    fn flush(&self) {
        self.0.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self, places: &[PagedAt]) -> Vec<Option<Message>> {
        let pages = self.0.pages.lock();
        self.0
            .reads
            .fetch_add(places.len() as u64, Ordering::Relaxed);
        places
            .iter()
            .map(|at| pages.get(&(at.segment, at.offset)).cloned())
            .collect()
    }

    fn release(&self, at: PagedAt) {
        self.0.pages.lock().remove(&(at.segment, at.offset));
    }

    fn close(&self) {}
}

/// A message store whose completions wait for the test.
#[derive(Default)]
pub struct HeldStore {
    next: AtomicU64,
    held: Mutex<Vec<OnDurable>>,
    removed: Mutex<Vec<u64>>,
    refuse: bool,
    sync_settles: Option<Durability>,
}

impl HeldStore {
    /// A store that places every message and holds its completion.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that refuses every message ([`NotStored`]), as a log that cannot write.
    pub fn refusing() -> Self {
        Self {
            refuse: true,
            ..Self::default()
        }
    }

    /// A store whose sync first settles the held completions as `batch` (a batch that failed,
    /// or was written) and then reports itself on disk: the log's view after a failed batch
    /// once the disk has room again.
    pub fn settling_on_sync(batch: Durability) -> Self {
        Self {
            sync_settles: Some(batch),
            ..Self::default()
        }
    }

    /// Runs every held completion with `durability`, in request order.
    pub fn settle(&self, durability: Durability) {
        for completion in self.take_held() {
            completion(durability);
        }
    }

    /// Takes the held completions, in request order, for the test to run.
    pub fn take_held(&self) -> Vec<OnDurable> {
        std::mem::take(&mut *self.held.lock())
    }

    /// How many completions are held.
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// The ids of the messages whose removal was recorded, in order.
    pub fn removed(&self) -> Vec<u64> {
        self.removed.lock().clone()
    }
}

impl MessageStore for HeldStore {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn publish(
        &self,
        _id: u64,
        _queues: &[QueueKey],
        _message: &Message,
        on_durable: Option<OnDurable>,
    ) -> Result<StoredAt, NotStored> {
        if self.refuse {
            return Err(NotStored);
        }
        self.held.lock().extend(on_durable);
        Ok(StoredAt {
            segment: 1,
            offset: 0,
        })
    }

    fn remove(&self, _queue: &QueueKey, id: u64, _at: StoredAt) {
        self.removed.lock().push(id);
    }

    fn sync(&self, on_durable: OnDurable) {
        if let Some(batch) = self.sync_settles {
            self.settle(batch);
        }
        on_durable(Durability::OnDisk);
    }

    fn read(&self, _id: u64, _at: StoredAt) -> Option<Message> {
        None
    }

    fn take_recovered(&self, _queue: &QueueKey) -> Vec<Recovered> {
        Vec::new()
    }
}
