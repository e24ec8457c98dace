//! The writer thread: takes every waiting request, writes them with one write and one fdatasync
//! (group commit), runs the completions in request order, and deletes segments left without
//! live messages, oldest first: a segment may hold removal records for messages in earlier
//! segments, so it can only go once every earlier segment has gone (otherwise a removal would
//! be lost and an acknowledged message would come back at the next start).
//!
//! A batch that fails (a full disk, a failing device) is cut off the segment again (truncated
//! back to the last good length, so no torn record stays; while that cut fails the log stays
//! failing and retries it), and its completions and those of every request already placed
//! behind it report [`Durability::Failed`]. The log then refuses new publishes
//! ([`Tail::failing`]) while it waits for space: every [`RETRY`] it measures the free space
//! and, once the failed batch (counted at most [`RETRY_BATCH_CAP`]) plus [`RETRY_MARGIN`]
//! would fit, places the tail again at the real end of the segment and takes writes again.
//! Removal records of a failed batch are kept and written then (a removal has no reader
//! waiting for its place); removals of messages that were never written write nothing. The
//! free space is reported to the space watch after a failure and otherwise at most every
//! [`MEASURE_EVERY`] or [`MEASURE_BYTES`] written, so the disk alarm follows the writes, not
//! only a timer. When
//! every message has been removed, a large active segment is replaced by a fresh one, so
//! emptying queues gives the disk space back without waiting for the segment to fill.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use junction_core::persistence::{Durability, OnDurable};

use super::backlog::Backlog;
use super::read_files::ReadFiles;
use super::{LogError, SpaceWatch, Tail, io_error, lock, segment_path};

/// How often a failed log looks for free space again.
pub const RETRY: Duration = Duration::from_millis(200);

/// An active segment with nothing live is replaced by a fresh one beyond this size.
const START_OVER_BYTES: u64 = 1024 * 1024;

/// A failed batch larger than this does not have to fit whole before writes are tried again.
const RETRY_BATCH_CAP: u64 = 1024 * 1024;

/// Bytes written between two measurements of the free space, at most (and [`MEASURE_EVERY`]).
const MEASURE_BYTES: u64 = 1024 * 1024;
/// Time between two measurements of the free space while writing, at most.
const MEASURE_EVERY: Duration = Duration::from_millis(50);

/// Room beyond the failed batch that must be free before writes are tried again.
const RETRY_MARGIN: u64 = 64 * 1024;

/// What the log asks of its writer, in the order the records must land.
pub enum Request {
    /// Append a framed record of message `message`. A publish names how many queues hold it;
    /// a removal names the segment of the publish it settles.
    Write {
        record: Vec<u8>,
        message: u64,
        publish_holders: usize,
        removes: Option<u32>,
        on_durable: Option<OnDurable>,
    },
    /// Continue in a new segment.
    Roll(u32),
    /// Run the callback once everything before it is on disk.
    Sync(OnDurable),
}

/// A removal record kept from a failed batch, written once the disk has room.
struct Removal {
    record: Vec<u8>,
    message: u64,
    segment: u32,
}

/// A completion waiting for its batch, in request order.
struct Done {
    callback: OnDurable,
    /// It answers a publish (not a removal or a sync).
    publish: bool,
    /// Fails whatever becomes of the batch: a publish placed while the log was failing,
    /// whose place did not hold.
    failed: bool,
}

impl Done {
    fn new(callback: OnDurable, publish: bool) -> Self {
        Self {
            callback,
            publish,
            failed: false,
        }
    }
}

/// The requests taken since the last commit.
#[derive(Default)]
struct Batch {
    done: Vec<Done>,
    /// Publishes in the batch: (message id, queues holding it).
    publishes: Vec<(u64, usize)>,
    /// Removals in the batch, kept to retry if it fails.
    removals: Vec<Removal>,
}

/// Faults injected by unit tests: the next writes fail after writing half their bytes. Only
/// unit tests read them: in other builds the checks are constant false and compile away.
#[derive(Debug, Default)]
pub struct Faults {
    /// While true, every write fails with ENOSPC after a partial write.
    pub disk_full: AtomicBool,
    /// While true, cutting a failed write off the segment fails (EIO).
    pub cut_fails: AtomicBool,
}

impl Faults {
    /// Whether writes are to fail as on a full disk.
    fn disk_full(&self) -> bool {
        cfg!(test) && self.disk_full.load(Ordering::Relaxed)
    }

    /// Whether cutting failed bytes off is to fail.
    fn cut_fails(&self) -> bool {
        cfg!(test) && self.cut_fails.load(Ordering::Relaxed)
    }
}

/// The writer thread's state.
pub struct Writer {
    dir: PathBuf,
    active: u32,
    file: File,
    /// Bytes of the active segment known to be written and synced.
    written: u64,
    live: HashMap<u32, usize>,
    /// Segments on disk, oldest first (the active one included).
    on_disk: BTreeSet<u32>,
    buffer: Vec<u8>,
    /// The log's placement, shared with [`super::MessageLog`].
    tail: Arc<Mutex<Tail>>,
    /// Publishes whose write failed, by message id, with how many queue removals may still
    /// name them (those write nothing).
    unwritten: HashMap<u64, usize>,
    /// Removals of failed batches, to write once the disk has room.
    retry: Vec<Removal>,
    /// While writes fail: the free bytes needed before trying again.
    failing: Option<u64>,
    /// A failed write's bytes are still on the segment beyond `written` (cutting them off
    /// failed): the log stays failing until the cut succeeds, so no record is placed behind
    /// torn bytes (its place would be wrong, and recovery would truncate it away).
    uncut: bool,
    space: SpaceWatch,
    /// When the free space was last measured, and `bytes_written` then.
    measured: Option<(Instant, u64)>,
    /// Bytes written since the log opened.
    bytes_written: u64,
    faults: Arc<Faults>,
    /// What waits for the writer: it takes from it as it takes requests.
    backlog: Arc<Backlog>,
    /// Segment files open for reading: a deleted segment leaves them.
    files: Arc<ReadFiles>,
    /// What the writer has done, for metrics.
    stats: Arc<LogStats>,
}

/// What the writer has done since the log opened, read by [`super::MessageLog`]'s `stats`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Messages written.
    pub messages: std::sync::atomic::AtomicU64,
    /// Batches synced.
    pub syncs: std::sync::atomic::AtomicU64,
    /// Batches synced that wrote messages.
    pub message_syncs: std::sync::atomic::AtomicU64,
    /// Bytes written.
    pub bytes: std::sync::atomic::AtomicU64,
}

/// Lets waiting publishes go once the writer stops, however it stops.
struct Stopped(Arc<Backlog>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Writer {
    /// Opens the active segment and deletes recovered segments with nothing live.
    pub fn start(
        dir: PathBuf,
        active: u32,
        live: HashMap<u32, usize>,
        existing: &[u32],
        tail: Arc<Mutex<Tail>>,
        space: SpaceWatch,
        faults: Arc<Faults>,
    ) -> Result<Self, LogError> {
        let path = segment_path(&dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let written = file.metadata().map_err(io_error(&path))?.len();
        let mut on_disk: BTreeSet<u32> = existing.iter().copied().collect();
        on_disk.insert(active);
        let mut writer = Self {
            dir,
            active,
            file,
            written,
            live,
            on_disk,
            buffer: Vec::new(),
            tail,
            unwritten: HashMap::new(),
            retry: Vec::new(),
            failing: None,
            uncut: false,
            space,
            measured: None,
            bytes_written: 0,
            faults,
            backlog: Arc::new(Backlog::new(u64::MAX)),
            files: Arc::default(),
            stats: Arc::default(),
        };
        writer.delete_dead_prefix();
        Ok(writer)
    }

    /// Shares the log's backlog (the writer takes from it) and its open segment files (the
    /// writer evicts those it deletes).
    pub fn sharing(
        mut self,
        backlog: Arc<Backlog>,
        files: Arc<ReadFiles>,
        stats: Arc<LogStats>,
    ) -> Self {
        self.backlog = backlog;
        self.files = files;
        self.stats = stats;
        self
    }

    /// Serves requests until the log is dropped.
    pub fn run(mut self, requests: mpsc::Receiver<Request>) {
        let _stopped = Stopped(self.backlog.clone());
        loop {
            let first = if self.failing.is_some() {
                match requests.recv_timeout(RETRY) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match requests.recv() {
                    Ok(request) => Some(request),
                    Err(_) => return,
                }
            };
            let mut batch = Batch::default();
            if self.failing.is_some() {
                if !self.resume(first, &requests, &mut batch) {
                    continue;
                }
            } else if let Some(request) = first {
                self.take(request, &mut batch, &requests);
            }
            while self.failing.is_none()
                && let Ok(more) = requests.try_recv()
            {
                self.take(more, &mut batch, &requests);
            }
            if self.failing.is_none() {
                self.commit(batch, &requests);
            } else {
                self.fail_remaining(batch);
            }
            self.delete_dead_prefix();
            self.start_over_if_all_dead();
            self.report_space();
        }
    }

    fn take(&mut self, request: Request, batch: &mut Batch, requests: &mpsc::Receiver<Request>) {
        match request {
            Request::Write {
                record,
                message,
                publish_holders,
                removes,
                on_durable,
            } => {
                self.backlog.take(record.len() as u64);
                if let Some(segment) = removes {
                    if let Some(holders) = self.unwritten.get_mut(&message) {
                        // Its publish never reached the disk: nothing to settle.
                        *holders = holders.saturating_sub(1);
                        if *holders == 0 {
                            self.unwritten.remove(&message);
                        }
                    } else {
                        self.buffer.extend_from_slice(&record);
                        batch.removals.push(Removal {
                            record,
                            message,
                            segment,
                        });
                    }
                } else {
                    self.buffer.extend_from_slice(&record);
                    batch.publishes.push((message, publish_holders));
                }
                let publish = removes.is_none();
                batch
                    .done
                    .extend(on_durable.map(|callback| Done::new(callback, publish)));
            }
            Request::Roll(next) => {
                if self.failing.is_some() {
                    // Placed while the log was failing; the tail is placed anew on resuming.
                    return;
                }
                self.commit(std::mem::take(batch), requests);
                if self.failing.is_some() {
                    return;
                }
                let path = segment_path(&self.dir, next);
                match OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(file) => {
                        self.file = file;
                        self.active = next;
                        self.written = 0;
                        self.on_disk.insert(next);
                    }
                    Err(error) => {
                        tracing::error!(file = %path.display(), %error, "cannot start a new message log segment");
                        self.fail(Batch::default(), requests, 0);
                    }
                }
            }
            Request::Sync(on_durable) => batch.done.push(Done::new(on_durable, false)),
        }
    }

    /// Writes what is buffered and fsyncs it, then runs the batch's completions: on disk, or
    /// failed (and the log fails until there is room again).
    fn commit(&mut self, batch: Batch, requests: &mpsc::Receiver<Request>) {
        let bytes = self.buffer.len() as u64;
        match self.write_buffer() {
            Ok(()) => {
                self.written += bytes;
                self.bytes_written += bytes;
                if bytes > 0 {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.stats.syncs.fetch_add(1, Relaxed);
                    self.stats.bytes.fetch_add(bytes, Relaxed);
                    if !batch.publishes.is_empty() {
                        self.stats.message_syncs.fetch_add(1, Relaxed);
                        self.stats
                            .messages
                            .fetch_add(batch.publishes.len() as u64, Relaxed);
                    }
                }
                for (_, holders) in &batch.publishes {
                    if *holders > 0 {
                        *self.live.entry(self.active).or_default() += holders;
                    }
                }
                for removal in &batch.removals {
                    if let Some(count) = self.live.get_mut(&removal.segment) {
                        *count = count.saturating_sub(1);
                    }
                }
                for done in batch.done {
                    (done.callback)(if done.failed {
                        Durability::Failed
                    } else {
                        Durability::OnDisk
                    });
                }
            }
            Err(error) => {
                tracing::error!(%error, "message log write failed; refusing persistent messages until the disk has room");
                self.fail(batch, requests, bytes);
            }
        }
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.faults.disk_full() {
            let half = self.buffer.len() / 2;
            let torn = self.file.write_all(&self.buffer[..half]);
            self.buffer.clear();
            torn?;
            return Err(std::io::Error::from_raw_os_error(28));
        }
        let written = self.file.write_all(&self.buffer);
        self.buffer.clear();
        written?;
        self.file.sync_data()
    }

    /// A batch of `bytes` failed: cuts it off the segment, fails it and everything placed
    /// behind it, and stops placing publishes until there is room.
    fn fail(&mut self, batch: Batch, requests: &mpsc::Receiver<Request>, bytes: u64) {
        self.buffer.clear();
        self.uncut = true;
        self.cut_failed_bytes();
        self.failing = Some(bytes.min(RETRY_BATCH_CAP) + RETRY_MARGIN);
        let mut failed = batch;
        {
            // Under the placement lock nothing more is placed: everything placed so far is
            // in the channel, at offsets that will not hold.
            let shared = self.tail.clone();
            let mut tail = lock(&shared);
            tail.failing = true;
            while let Ok(request) = requests.try_recv() {
                self.take(request, &mut failed, requests);
            }
        }
        self.buffer.clear();
        self.fail_remaining(failed);
        self.report_space();
    }

    /// Fails what a batch taken while the log fails holds: publishes are not written,
    /// removals wait for room, completions hear the failure.
    fn fail_remaining(&mut self, batch: Batch) {
        self.buffer.clear();
        for (message, holders) in batch.publishes {
            if holders > 0 {
                self.unwritten.insert(message, holders);
            }
        }
        for removal in batch.removals {
            match self.unwritten.get_mut(&removal.message) {
                // Its publish failed in the same batch: nothing to settle.
                Some(holders) => {
                    *holders = holders.saturating_sub(1);
                    if *holders == 0 {
                        self.unwritten.remove(&removal.message);
                    }
                }
                None => self.retry.push(removal),
            }
        }
        for done in batch.done {
            (done.callback)(Durability::Failed);
        }
    }

    /// Publishes placed while the log was failing (refused publishes never get here; a stray
    /// one counts as failed): nothing was written, so their completions report a failure
    /// (in their places among the syncs) and their removals will write nothing.
    fn fail_stray_publishes(&mut self, placed: &mut Batch) {
        for (message, holders) in placed.publishes.drain(..) {
            if holders > 0 {
                self.unwritten.insert(message, holders);
            }
        }
        for done in &mut placed.done {
            if done.publish {
                done.failed = true;
            }
        }
    }

    /// Cuts a failed write's bytes off the segment, back to the last good length; on failure
    /// they stay marked `uncut` (and the log failing) to try again at the next retry.
    fn cut_failed_bytes(&mut self) {
        if !self.uncut {
            return;
        }
        let cut = if self.faults.cut_fails() {
            Err(std::io::Error::from_raw_os_error(5))
        } else {
            self.file.set_len(self.written)
        };
        match cut {
            Ok(()) => self.uncut = false,
            Err(error) => {
                tracing::error!(%error, "cannot cut a failed write off the message log; writes stay refused until it can")
            }
        }
    }

    /// While failing: if the disk has room again, places the tail at the real end of the
    /// segment (behind the removals kept for retry and those placed meanwhile, which go into
    /// `batch`) and takes writes again. Otherwise `first` and whatever else is waiting fail
    /// (removals wait). Returns whether it resumed.
    fn resume(
        &mut self,
        first: Option<Request>,
        requests: &mpsc::Receiver<Request>,
        batch: &mut Batch,
    ) -> bool {
        let Some(needed) = self.failing else {
            return true;
        };
        let shared = self.tail.clone();
        let mut tail = lock(&shared);
        // Requests placed while failing: removals and syncs, whose places nobody reads.
        let mut placed = Batch::default();
        for request in first
            .into_iter()
            .chain(std::iter::from_fn(|| requests.try_recv().ok()))
        {
            self.take(request, &mut placed, requests);
        }
        self.buffer.clear();
        // Every message in the log removed (queues purged or consumed while the disk was
        // full): start over in a fresh segment. The removals need not be written, since the
        // segment they settle goes, and that gives its space back.
        let removals: Vec<Removal> = std::mem::take(&mut self.retry)
            .into_iter()
            .chain(std::mem::take(&mut placed.removals))
            .collect();
        let all_removed = self.on_disk.len() == 1
            && removals.iter().all(|r| r.segment == self.active)
            && self.live.get(&self.active).copied().unwrap_or(0) <= removals.len();
        if all_removed && self.start_over(&mut tail) {
            // The failed bytes went with the old segment.
            self.uncut = false;
            self.failing = None;
            tail.failing = false;
            self.fail_stray_publishes(&mut placed);
            batch.done.extend(placed.done);
            tracing::info!(
                "every stored message was removed; the message log starts a fresh segment and takes writes"
            );
            return true;
        }
        self.retry = removals;
        self.cut_failed_bytes();
        if self.uncut
            || self.faults.disk_full()
            || super::free_bytes(&self.dir).is_none_or(|free| free < needed)
        {
            drop(tail);
            self.fail_remaining(placed);
            return false;
        }
        self.failing = None;
        for removal in std::mem::take(&mut self.retry)
            .into_iter()
            .chain(std::mem::take(&mut placed.removals))
        {
            self.buffer.extend_from_slice(&removal.record);
            batch.removals.push(removal);
        }
        self.fail_stray_publishes(&mut placed);
        batch.done.extend(placed.done);
        tail.segment = self.active;
        tail.offset = self.written + self.buffer.len() as u64;
        tail.failing = false;
        tracing::info!("message log has room again; taking writes");
        true
    }

    /// Tells the space watch how much room the data directory has left: after a failure, and
    /// otherwise once [`MEASURE_BYTES`] were written or [`MEASURE_EVERY`] has passed since
    /// the last measurement (so the alarm is at most that late, and a busy log does not pay a
    /// `statvfs` per batch).
    fn report_space(&mut self) {
        let now = Instant::now();
        let due = self.failing.is_some()
            || self.measured.is_none_or(|(at, written)| {
                now.duration_since(at) >= MEASURE_EVERY
                    || self.bytes_written.saturating_sub(written) >= MEASURE_BYTES
            });
        if !due {
            return;
        }
        self.measured = Some((now, self.bytes_written));
        let watch = lock(&self.space);
        if let Some(watch) = watch.as_ref()
            && let Some(free) = super::free_bytes(&self.dir)
        {
            watch(free);
        }
    }

    /// When every message in the log has been removed (the active segment is the only one
    /// and holds nothing live) and the active segment has grown past [`START_OVER_BYTES`],
    /// continues in a fresh segment and deletes the old one, so purging or consuming a backlog
    /// gives its disk space back at once (a full disk recovers by emptying queues). Only when
    /// nothing is placed beyond what is written, so no waiting record names the old segment.
    fn start_over_if_all_dead(&mut self) {
        if self.failing.is_some()
            || self.written < START_OVER_BYTES
            || self.on_disk.len() != 1
            || self.live.get(&self.active).copied().unwrap_or(0) > 0
        {
            return;
        }
        let shared = self.tail.clone();
        let mut tail = lock(&shared);
        if tail.segment != self.active || tail.offset != self.written {
            return;
        }
        self.start_over(&mut tail);
    }

    /// Continues in a fresh segment and deletes the active one, which must hold nothing live
    /// and be the only one; `tail` (locked by the caller) is placed at the start of the new
    /// segment. Returns whether it did.
    fn start_over(&mut self, tail: &mut Tail) -> bool {
        let next = self.active + 1;
        let path = segment_path(&self.dir, next);
        let file = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot start a new message log segment");
                return false;
            }
        };
        tail.segment = next;
        tail.offset = 0;
        let old = self.active;
        self.file = file;
        self.active = next;
        self.written = 0;
        self.on_disk.insert(next);
        self.on_disk.remove(&old);
        self.delete_segment(old);
        true
    }

    /// Deletes the oldest segments while they hold nothing live (never the active one).
    fn delete_dead_prefix(&mut self) {
        while let Some(&oldest) = self.on_disk.first() {
            if oldest == self.active || self.live.get(&oldest).copied().unwrap_or(0) > 0 {
                return;
            }
            self.on_disk.remove(&oldest);
            self.delete_segment(oldest);
        }
    }

    fn delete_segment(&mut self, number: u32) {
        self.live.remove(&number);
        let path = segment_path(&self.dir, number);
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), %error, "could not delete an empty segment");
        }
        // After the removal: a reader opening it meanwhile found it or nothing.
        self.files.evict(number);
    }
}
