//! The persistent message log: append-only segment files in `<data dir>/messages/`, each record
//! framed by its length and a CRC32C ([`record`]), written by one thread that batches every
//! waiting request into one write and one fsync (group commit) and then runs the completions in
//! order ([`writer`]).
//!
//! Where each record lands is decided when it is sent, under one lock, so a publish knows its
//! [`StoredAt`] at once: a queue can drop a body from memory and read it back later.
//! Removal records name the segment of the publish they settle, so liveness is one counter per
//! segment, never a per-message table; a segment whose counter reaches zero is deleted.
//! Recovery ([`recovery`]) replays the segments, keeps every good record before a torn or
//! corrupt tail (which it truncates and reports), and hands each durable queue the ids and
//! locations of its surviving messages: no body is loaded at start-up.
//!
//! A failed write is never reported as durable: its completions say [`Durability::Failed`],
//! the failed bytes are cut off the segment, and publishes are refused ([`NotStored`]) until
//! the disk has room again, when the log resumes by itself (see [`writer`]). While it writes,
//! the free space of the data directory goes to the space watch ([`MessageLog::watch_space`]).
//!
//! What waits for the writer is bounded ([`backlog`]): past 64 MiB of placed records a publish
//! waits for the writer to take them. Reads (from the blocking pool, never the queue task)
//! go through a few segment files kept open ([`read_files`]).

mod backlog;
mod read_files;
pub(crate) mod record;
mod recovery;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use backlog::Backlog;
use read_files::ReadFiles;

use junction_core::Message;
use junction_core::persistence::{
    Durability, MessageStore, NotStored, OnDurable, QueueKey, Recovered, StoredAt,
};

pub use recovery::RecoveryReport;
use writer::{Faults, Request, Writer};

/// Told the data directory's free bytes as the log writes (see [`MessageLog::watch_space`]).
pub type SpaceHook = Box<dyn Fn(u64) + Send>;

/// The space watch the writer reports to, set once the broker is built.
type SpaceWatch = Arc<Mutex<Option<SpaceHook>>>;

/// Locks a mutex, taking it over from a thread that panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Free bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    Some(
        stats
            .blocks_available()
            .saturating_mul(stats.fragment_size()),
    )
}

/// A segment is closed and a new one started once a record would take it beyond this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record accepted when reading back (a corrupt length beyond it ends the replay).
const MAX_RECORD: usize = 512 * 1024 * 1024;

/// Errors opening the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("message log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:010}.seg"))
}

/// Where the next record goes, and the writer's queue; one lock keeps them in step.
struct Tail {
    requests: mpsc::Sender<Request>,
    segment: u32,
    offset: u64,
    /// Roll to a new segment beyond this many bytes.
    segment_bytes: u64,
    /// A write failed and the disk has no room yet: publishes are refused. The writer sets
    /// and clears it under this lock, placing the tail anew when it clears it.
    failing: bool,
}

/// The message log. Cheap to share; all writing happens on its own thread.
pub struct MessageLog {
    dir: PathBuf,
    tail: Arc<Mutex<Tail>>,
    next_id: AtomicU64,
    recovered: Mutex<HashMap<QueueKey, Vec<Recovered>>>,
    space: SpaceWatch,
    /// Records waiting for the writer, bounded.
    backlog: Arc<Backlog>,
    /// Segment files open for reading.
    files: Arc<ReadFiles>,
    /// What the writer has done.
    stats: Arc<writer::LogStats>,
    /// Unit tests inject write failures through it.
    #[cfg_attr(not(test), allow(dead_code))]
    faults: Arc<Faults>,
}

impl MessageLog {
    /// Opens the log in `<data_dir>/messages`, recovering what it holds.
    pub fn open(data_dir: &Path) -> Result<(Self, RecoveryReport), LogError> {
        Self::open_with_segment_size(data_dir, SEGMENT_BYTES)
    }

    /// Opens the log with segments of about `segment_bytes` (small ones exercise rolling and
    /// deletion in tests).
    pub fn open_with_segment_size(
        data_dir: &Path,
        segment_bytes: u64,
    ) -> Result<(Self, RecoveryReport), LogError> {
        Self::open_with_limits(data_dir, segment_bytes, backlog::MAX_QUEUED_BYTES)
    }

    /// Opens the log with segments of about `segment_bytes` and publishes waiting beyond
    /// `queued_bytes` waiting for the writer (small ones exercise the bound in tests).
    fn open_with_limits(
        data_dir: &Path,
        segment_bytes: u64,
        queued_bytes: u64,
    ) -> Result<(Self, RecoveryReport), LogError> {
        let dir = data_dir.join("messages");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let recovered = recovery::recover(&dir)?;
        let active = recovered.last_segment + 1;
        let (tx, rx) = mpsc::channel();
        let tail = Arc::new(Mutex::new(Tail {
            requests: tx,
            segment: active,
            offset: 0,
            segment_bytes,
            failing: false,
        }));
        let space: SpaceWatch = Arc::default();
        let faults = Arc::new(Faults::default());
        let backlog = Arc::new(Backlog::new(queued_bytes));
        let files = Arc::new(ReadFiles::default());
        let stats = Arc::new(writer::LogStats::default());
        let writer = Writer::start(
            dir.clone(),
            active,
            recovered.live,
            &recovered.segments,
            tail.clone(),
            space.clone(),
            faults.clone(),
        )?
        .sharing(backlog.clone(), files.clone(), stats.clone());
        std::thread::Builder::new()
            .name("junction-log".into())
            .spawn(move || {
                backlog::on_writer_thread();
                writer.run(rx)
            })
            .map_err(io_error(data_dir))?;
        Ok((
            Self {
                dir,
                tail,
                next_id: AtomicU64::new(recovered.max_id + 1),
                recovered: Mutex::new(recovered.queues),
                space,
                backlog,
                files,
                faults,
                stats,
            },
            recovered.report,
        ))
    }

    /// Reports the data directory's free bytes to `hook` while writing, at most every 50 ms or
    /// 1 MiB written (and after a failed batch), so a disk alarm follows the writes.
    pub fn watch_space(&self, hook: SpaceHook) {
        *lock(&self.space) = Some(hook);
    }

    /// Places a framed record at the end of the log and queues it for writing. A publish is
    /// refused while the log is failing.
    fn append(
        &self,
        record: Vec<u8>,
        message: u64,
        publish_holders: usize,
        removes: Option<u32>,
        on_durable: Option<OnDurable>,
    ) -> Result<StoredAt, NotStored> {
        let len = record.len() as u64;
        if removes.is_none() {
            // Before the placement lock: the writer needs it to take what waits.
            self.backlog.wait_for_room();
        }
        let mut tail = lock(&self.tail);
        if tail.failing && removes.is_none() {
            return Err(NotStored);
        }
        if tail.offset > 0 && tail.offset + len > tail.segment_bytes {
            tail.segment += 1;
            tail.offset = 0;
            let segment = tail.segment;
            tail.requests
                .send(Request::Roll(segment))
                .map_err(|_| stopped())?;
        }
        let at = StoredAt {
            segment: tail.segment,
            offset: u32::try_from(tail.offset).map_err(|_| NotStored)?,
        };
        tail.offset += len;
        self.backlog.add(len);
        tail.requests
            .send(Request::Write {
                record,
                message,
                publish_holders,
                removes,
                on_durable,
            })
            .map_err(|_| stopped())?;
        Ok(at)
    }
}

fn stopped() -> NotStored {
    tracing::error!("the message log writer has stopped");
    NotStored
}

impl MessageStore for MessageLog {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn stats(&self) -> junction_core::persistence::StoreStats {
        junction_core::persistence::StoreStats {
            messages: self.stats.messages.load(Ordering::Relaxed),
            syncs: self.stats.syncs.load(Ordering::Relaxed),
            message_syncs: self.stats.message_syncs.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
        }
    }

    fn publish(
        &self,
        id: u64,
        queues: &[QueueKey],
        message: &Message,
        on_durable: Option<OnDurable>,
    ) -> Result<StoredAt, NotStored> {
        self.append(
            record::publish(id, queues, message),
            id,
            queues.len(),
            None,
            on_durable,
        )
    }

    fn remove(&self, queue: &QueueKey, id: u64, at: StoredAt) {
        let _ = self.append(
            record::remove(queue, id, at.segment),
            id,
            0,
            Some(at.segment),
            None,
        );
    }

    fn sync(&self, on_durable: OnDurable) {
        let tail = lock(&self.tail);
        if let Err(mpsc::SendError(Request::Sync(on_durable))) =
            tail.requests.send(Request::Sync(on_durable))
        {
            tracing::error!("the message log writer has stopped");
            on_durable(Durability::Failed);
        }
    }

    fn read(&self, id: u64, at: StoredAt) -> Option<Message> {
        if let Some(message) = self.read_record(id, at) {
            return Some(message);
        }
        // A record placed a moment ago may not be written yet: wait for the writer to catch
        // up once, then read again.
        let (done, written) = mpsc::channel();
        self.sync(Box::new(move |_| {
            let _ = done.send(());
        }));
        written
            .recv_timeout(std::time::Duration::from_secs(30))
            .ok()?;
        self.read_record(id, at)
    }

    fn take_recovered(&self, queue: &QueueKey) -> Vec<Recovered> {
        lock(&self.recovered).remove(queue).unwrap_or_default()
    }

    fn room(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        (!self.backlog.has_room()).then(|| Box::pin(self.backlog.room()) as _)
    }
}

impl MessageLog {
    /// Reads the publish record at `at` and returns its message, if it is whole, intact and
    /// the publish of message `id` (a place whose write failed may hold another record now).
    fn read_record(&self, id: u64, at: StoredAt) -> Option<Message> {
        let file = self.files.get(&self.dir, at.segment)?;
        let mut header = [0u8; record::HEADER];
        file.read_exact_at(&mut header, u64::from(at.offset)).ok()?;
        let len = record::announced_len(&header);
        if len > MAX_RECORD {
            return None;
        }
        let mut data = vec![0u8; record::HEADER + len];
        file.read_exact_at(&mut data, u64::from(at.offset)).ok()?;
        let payload = record::checked_payload(&data, MAX_RECORD)?;
        record::message(payload).filter(|message| message.store_id == Some(id))
    }
}

/// Reads a whole file (recovery reads one segment at a time).
fn read_file(path: &Path) -> Result<Vec<u8>, LogError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_error(path))?;
    Ok(data)
}

#[cfg(test)]
mod tests;
