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

/// Bytes on their way to the writer.
pub struct Backlog {
    state: Mutex<Queued>,
    room: Condvar,
    limit: u64,
}

struct Queued {
    bytes: u64,
    /// The writer has stopped: nobody will take anything any more.
    stopped: bool,
}

impl Backlog {
    /// A backlog that makes publishes wait beyond `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            state: Mutex::new(Queued {
                bytes: 0,
                stopped: false,
            }),
            room: Condvar::new(),
            limit,
        }
    }

    /// Waits while the backlog is at its limit (never on the writer thread).
    pub fn wait_for_room(&self) {
        if ON_WRITER.with(Cell::get) {
            return;
        }
        let mut queued = lock(&self.state);
        while queued.bytes >= self.limit && !queued.stopped {
            queued = match self.room.wait_timeout(queued, RECHECK) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// `bytes` were placed for the writer.
    pub fn add(&self, bytes: u64) {
        lock(&self.state).bytes += bytes;
    }

    /// The writer took `bytes`.
    pub fn take(&self, bytes: u64) {
        let mut queued = lock(&self.state);
        let was_full = queued.bytes >= self.limit;
        queued.bytes = queued.bytes.saturating_sub(bytes);
        if was_full && queued.bytes < self.limit {
            self.room.notify_all();
        }
    }

    /// The writer has stopped: waiters go on (and find the log stopped).
    pub fn stop(&self) {
        lock(&self.state).stopped = true;
        self.room.notify_all();
    }

    /// Bytes waiting for the writer now.
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        lock(&self.state).bytes
    }
}
