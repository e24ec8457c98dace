//! The overflow: where a queue puts the bodies of ready messages beyond its memory budget when
//! the message store does not hold them (transient messages, and persistent ones in queues that
//! are not durable). The core defines the traits; `junction-store` implements them with files
//! that are never fsynced and are emptied at start-up (what they hold does not survive a
//! restart), so the core never touches a file.
//!
//! The queue task only appends (into memory) and releases; everything that touches a disk
//! (`flush`, `read`, `close`) is called from the blocking pool, never from the queue task.

use std::sync::Arc;

use super::QueueKey;
use crate::message::Message;

/// Where a paged-out message lies in its queue's overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedAt {
    /// The overflow segment (file) number.
    pub segment: u32,
    /// The byte offset of the record in the segment.
    pub offset: u32,
}

/// Makes the overflow of each queue that needs one.
pub trait OverflowStore: Send + Sync + 'static {
    /// The overflow of `queue`. Touches no file (they are made when first written).
    fn open(&self, queue: &QueueKey) -> Arc<dyn Overflow>;
}

/// One queue's overflow. Safe to share between the queue task (append, release) and the
/// blocking pool (flush, read, close).
pub trait Overflow: Send + Sync + 'static {
    /// Appends `message` in memory (no I/O) and returns where it will lie; None when the
    /// overflow cannot take it now (a write failed and has not been retried yet): the queue
    /// then keeps the body in memory.
    fn append(&self, message: &Message) -> Option<PagedAt>;

    /// Whether [`Overflow::flush`] has work: appended bytes worth a write, or files that hold
    /// nothing any more.
    fn wants_flush(&self) -> bool;

    /// Appended bytes not written yet (held in memory until the next flush).
    fn unwritten_bytes(&self) -> usize;

    /// Blocking: writes the appended bytes (without an fsync) and deletes the files nothing
    /// lives in any more. A failed write keeps its bytes in memory, to try again later.
    fn flush(&self);

    /// Blocking: reads back the messages at `places`, in order; None for one that cannot be
    /// read.
    fn read(&self, places: &[PagedAt]) -> Vec<Option<Message>>;

    /// The message at `at` left the queue (read back, expired, purged): its room can be given
    /// back once everything around it has gone too.
    fn release(&self, at: PagedAt);

    /// Blocking: the queue is gone; deletes everything.
    fn close(&self);
}
