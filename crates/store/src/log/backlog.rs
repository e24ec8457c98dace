//! The bound on what waits for the writer: record bytes placed in the log and not yet taken
//! by the writer thread. Past [`MAX_QUEUED_BYTES`] a publish waits (before it takes the
//! placement lock, holding nothing the writer needs) until the writer has taken enough; so a
//! disk slower than the network holds publishers back instead of growing memory.
//!
//! It cannot deadlock: the writer depends on nothing but the disk; removals and syncs never
//! wait (they are bounded by the messages already stored); completions run on the writer
//! thread, which never waits for itself; a waiter rechecks every [`RECHECK`] and gives up
//! once the writer has stopped; and while the log fails the writer keeps taking requests
//! (and publishes are refused), so waiters wake.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::lock;

/// Record bytes waiting for the writer beyond which a publish waits.
pub const MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;

/// How often a waiting publish looks again whether the writer still runs.
const RECHECK: Duration = Duration::from_millis(100);

thread_local! {
    /// Set on the writer thread: completions that publish must never wait for it.
    static ON_WRITER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as the writer's.
pub fn on_writer_thread() {
    ON_WRITER.with(|on| on.set(true));
}

/// Bytes on their way to the writer. Counting is one atomic add per record; the wake-ups
/// (an async `Notify` for publishers on the runtime, a condition variable for the rest) are
/// touched only when the backlog crosses its limit.
pub struct Backlog {
    bytes: AtomicU64,
    /// The writer has stopped: nobody will take anything any more.
    stopped: AtomicBool,
    limit: u64,
    room: tokio::sync::Notify,
    sync_room: (Mutex<()>, Condvar),
}

impl Backlog {
    /// A backlog that makes publishes wait beyond `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            limit,
            room: tokio::sync::Notify::new(),
            sync_room: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Whether a publish may place a record now.
    pub fn has_room(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) < self.limit || self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once a publish may place a record (the writer took enough, or stopped).
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Waits, blocking the thread, while the backlog is at its limit (never on the writer
    /// thread). Publishes on the runtime wait with [`Backlog::room`] first, so this is the
    /// backstop for the few that race past it.
    pub fn wait_for_room(&self) {
        if ON_WRITER.with(Cell::get) {
            return;
        }
        let (mutex, condvar) = &self.sync_room;
        let mut guard = lock(mutex);
        while !self.has_room() {
            guard = match condvar.wait_timeout(guard, RECHECK) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// `bytes` were placed for the writer.
    pub fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// The writer took `bytes`.
    pub fn take(&self, bytes: u64) {
        let before = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(bytes))
            })
            .unwrap_or(0);
        if before >= self.limit && before.saturating_sub(bytes) < self.limit {
            self.wake();
        }
    }

    /// The writer has stopped: waiters go on (and find the log stopped).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        self.room.notify_waiters();
        let (mutex, condvar) = &self.sync_room;
        drop(lock(mutex));
        condvar.notify_all();
    }

    /// Bytes waiting for the writer now.
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publisher_waits_for_room_without_blocking_its_thread() {
        let backlog = std::sync::Arc::new(Backlog::new(10));
        backlog.add(12);
        assert!(!backlog.has_room());
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room yet");
        backlog.take(4);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room once the writer took enough")
            .expect("the waiting task");
        assert!(backlog.has_room());
    }
}
