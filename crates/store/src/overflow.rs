//! The overflow: files in `<data dir>/overflow/` where queues page out the bodies the message
//! log does not hold (transient messages, persistent ones in queues that are not durable)
//! beyond their memory budget. What it holds does not survive a restart, so nothing is
//! fsynced and the directory is emptied when the broker starts.
//!
//! Each queue that pages gets its own numbered segment files (`QQQQQQQQ-SSSSSSSS.page`, at
//! most [`SEGMENT_BYTES`] each), holding records framed as in the message log (length,
//! CRC32C, payload). Appending only encodes into memory; [`Overflow::flush`], run by the queue
//! on the blocking pool, writes what was appended and deletes the segments whose every record
//! has been released (read back, expired, purged), so space comes back as the backlog is
//! consumed; once nothing is live the queue starts again in a fresh segment. Reads find a
//! record still in memory there, and otherwise read runs of neighbouring records with one
//! `pread`, through file handles kept open for the segments being read and written (others
//! are closed, so a long backlog does not hold a descriptor per segment).
//!
//! A failed write (a full disk) keeps its bytes in memory and refuses further appends (the
//! queue keeps those bodies in memory) until a retry, at most every [`RETRY`], succeeds.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use junction_core::Message;
use junction_core::persistence::{Overflow, OverflowStore, PagedAt, QueueKey};

use crate::log::record;

/// A segment is closed and the next one started once a record would take it beyond this.
pub const SEGMENT_BYTES: u32 = 64 * 1024 * 1024;
/// Appended bytes worth a write.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// How long a failed write waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Records this far apart or more are read with separate `pread`s.
const SPAN_BYTES: u64 = 4 * 1024 * 1024;
/// Read beyond the last wanted record's start, hoping to take it whole in the same `pread`.
const READ_SLACK: u64 = 64 * 1024;
/// Largest record read back (a corrupt length beyond it reads as nothing).
const MAX_RECORD: usize = 512 * 1024 * 1024;

/// Errors opening the overflow directory.
#[derive(Debug, thiserror::Error)]
#[error("overflow directory {path}: {source}")]
pub struct OverflowError {
    /// The directory.
    pub path: PathBuf,
    /// The failure.
    pub source: std::io::Error,
}

/// The broker's overflow directory: makes one [`QueueOverflow`] per queue that pages.
pub struct OverflowFiles {
    dir: PathBuf,
    next: AtomicU64,
    segment_bytes: u32,
}

impl OverflowFiles {
    /// Empties (what a previous run left) and opens `<data_dir>/overflow`.
    pub fn open(data_dir: &Path) -> Result<Self, OverflowError> {
        Self::open_with_segment_size(data_dir, SEGMENT_BYTES)
    }

    /// Opens it with segments of about `segment_bytes` (small ones exercise rolling and
    /// deletion in tests).
    pub fn open_with_segment_size(
        data_dir: &Path,
        segment_bytes: u32,
    ) -> Result<Self, OverflowError> {
        let dir = data_dir.join("overflow");
        let failed = |source| OverflowError {
            path: dir.clone(),
            source,
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(error)),
        }
        std::fs::create_dir_all(&dir).map_err(failed)?;
        Ok(Self {
            dir,
            next: AtomicU64::new(0),
            segment_bytes,
        })
    }
}

impl OverflowStore for OverflowFiles {
    fn open(&self, queue: &QueueKey) -> Arc<dyn Overflow> {
        Arc::new(QueueOverflow {
            dir: self.dir.clone(),
            number: self.next.fetch_add(1, Ordering::Relaxed),
            queue: queue.queue.clone(),
            segment_bytes: self.segment_bytes,
            state: Mutex::new(State::default()),
        })
    }
}

/// One queue's overflow files.
pub struct QueueOverflow {
    dir: PathBuf,
    number: u64,
    /// The queue's name, for the logs.
    queue: String,
    segment_bytes: u32,
    state: Mutex<State>,
}

/// Appended bytes of one segment, from `start`, not written yet.
struct Chunk {
    segment: u32,
    start: u32,
    bytes: Vec<u8>,
}

impl Chunk {
    /// The record at `at`, if this chunk holds its start.
    fn record(&self, at: PagedAt) -> Option<&[u8]> {
        if at.segment != self.segment || at.offset < self.start {
            return None;
        }
        self.bytes.get((at.offset - self.start) as usize..)
    }
}

#[derive(Default)]
struct Segment {
    /// Records in it not released yet.
    live: u64,
    /// Its open file, while it is being written or read.
    file: Option<Arc<File>>,
}

#[derive(Default)]
struct State {
    /// Segments holding live records, by number.
    segments: BTreeMap<u32, Segment>,
    live: u64,
    /// The segment appends go to, and where the next record starts in it.
    tail: u32,
    tail_offset: u32,
    /// Appended bytes not handed to a write yet, oldest first.
    pending: VecDeque<Chunk>,
    pending_bytes: usize,
    /// Chunks being written now: reads still find their records here.
    writing: Vec<Arc<Chunk>>,
    writing_bytes: usize,
    /// Segments to delete at the next flush.
    dead: Vec<u32>,
    /// When the last write failed, until one succeeds.
    failed_at: Option<Instant>,
    closed: bool,
}

impl State {
    /// The record at `at`, if it is still in memory.
    fn in_memory(&self, at: PagedAt) -> Option<&[u8]> {
        self.pending
            .iter()
            .find_map(|chunk| chunk.record(at))
            .or_else(|| self.writing.iter().find_map(|chunk| chunk.record(at)))
    }

    /// Forgets segment `number` (nothing in it is live) and has it deleted.
    fn bury(&mut self, number: u32) {
        self.segments.remove(&number);
        self.pending.retain(|chunk| chunk.segment != number);
        self.pending_bytes = self.pending.iter().map(|chunk| chunk.bytes.len()).sum();
        self.dead.push(number);
    }
}

/// Locks a mutex, taking it over from a thread that panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl QueueOverflow {
    fn path(&self, segment: u32) -> PathBuf {
        self.dir
            .join(format!("{:08}-{segment:08}.page", self.number))
    }

    fn open_file(&self, segment: u32) -> std::io::Result<Arc<File>> {
        OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(self.path(segment))
            .map(Arc::new)
    }

    /// The open file of `segment`, opening it (outside the lock) if needed; None if the
    /// segment is gone or cannot be opened.
    fn file(&self, segment: u32) -> Option<Arc<File>> {
        {
            let state = lock(&self.state);
            let known = state.segments.get(&segment)?;
            if let Some(file) = &known.file {
                return Some(file.clone());
            }
        }
        let file = match self.open_file(segment) {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(queue = %self.queue, file = %self.path(segment).display(), %error, "cannot open an overflow segment");
                return None;
            }
        };
        let mut state = lock(&self.state);
        let known = state.segments.get_mut(&segment)?;
        Some(known.file.get_or_insert(file).clone())
    }

    /// Reads the records at `places` (all in `segment`, offsets ascending) from its file,
    /// with as few `pread`s as their spacing allows.
    fn read_from_file(
        &self,
        segment: u32,
        places: &[(usize, PagedAt)],
        out: &mut [Option<Message>],
    ) {
        let Some(file) = self.file(segment) else {
            return;
        };
        let mut index = 0;
        while index < places.len() {
            let first = u64::from(places[index].1.offset);
            let mut last = index;
            while last + 1 < places.len()
                && u64::from(places[last + 1].1.offset) - first < SPAN_BYTES
            {
                last += 1;
            }
            let end = u64::from(places[last].1.offset) + READ_SLACK;
            let span = read_span(&file, first, end);
            for &(slot, at) in &places[index..=last] {
                let start = (u64::from(at.offset) - first) as usize;
                out[slot] = span
                    .get(start..)
                    .and_then(decode)
                    .or_else(|| read_one(&file, u64::from(at.offset)));
            }
            index = last + 1;
        }
    }
}

/// Reads `[from, to)` of `file`, or less at its end or on an error.
fn read_span(file: &File, from: u64, to: u64) -> Vec<u8> {
    let mut data = vec![0u8; (to - from) as usize];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], from + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    data.truncate(filled);
    data
}

/// Reads the one record at `offset` of `file`.
fn read_one(file: &File, offset: u64) -> Option<Message> {
    let mut header = [0u8; record::HEADER];
    file.read_exact_at(&mut header, offset).ok()?;
    let len = record::announced_len(&header);
    if len > MAX_RECORD {
        return None;
    }
    let mut data = vec![0u8; record::HEADER + len];
    file.read_exact_at(&mut data, offset).ok()?;
    decode(&data)
}

/// The message of the record at the start of `data`, if it is whole and intact.
fn decode(data: &[u8]) -> Option<Message> {
    record::paged_message(record::checked_payload(data, MAX_RECORD)?)
}

impl Overflow for QueueOverflow {
    fn append(&self, message: &Message) -> Option<PagedAt> {
        let properties = record::paged_properties(&message.properties);
        let len = u32::try_from(record::paged_len(message, &properties)).ok()?;
        let mut state = lock(&self.state);
        if state.closed || state.failed_at.is_some() {
            return None;
        }
        if state.tail_offset > 0
            && u64::from(state.tail_offset) + u64::from(len) > u64::from(self.segment_bytes)
        {
            // The segment is full: later records go to the next one, and its file handle
            // is only kept for reading.
            state.tail += 1;
            state.tail_offset = 0;
        }
        let at = PagedAt {
            segment: state.tail,
            offset: state.tail_offset,
        };
        let fits = state.pending.back().is_some_and(|chunk| {
            chunk.segment == at.segment && chunk.bytes.len() + len as usize <= CHUNK_BYTES
        });
        if !fits {
            state.pending.push_back(Chunk {
                segment: at.segment,
                start: at.offset,
                // Grown as it fills: a queue that pages a little holds little.
                bytes: Vec::with_capacity(len as usize),
            });
        }
        let chunk = state.pending.back_mut()?;
        record::page_into(&mut chunk.bytes, message, &properties);
        state.tail_offset += len;
        state.pending_bytes += len as usize;
        state.live += 1;
        state.segments.entry(at.segment).or_default().live += 1;
        Some(at)
    }

    fn wants_flush(&self) -> bool {
        let state = lock(&self.state);
        if state.closed {
            return false;
        }
        let retry_due = state.failed_at.is_none_or(|at| at.elapsed() >= RETRY);
        !state.dead.is_empty() || (retry_due && state.pending_bytes >= CHUNK_BYTES)
    }

    fn unwritten_bytes(&self) -> usize {
        let state = lock(&self.state);
        state.pending_bytes + state.writing_bytes
    }

    fn flush(&self) {
        let (chunks, dead) = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            let chunks: Vec<Arc<Chunk>> = state.pending.drain(..).map(Arc::new).collect();
            state.writing_bytes = state.pending_bytes;
            state.pending_bytes = 0;
            state.writing = chunks.clone();
            (chunks, std::mem::take(&mut state.dead))
        };
        let mut failed = Vec::new();
        for chunk in chunks {
            let written = self
                .file(chunk.segment)
                .ok_or_else(|| std::io::Error::other("segment gone"))
                .and_then(|file| file.write_all_at(&chunk.bytes, u64::from(chunk.start)));
            match written {
                Ok(()) => {}
                // Released while it was written: nothing needs it.
                Err(_) if !lock(&self.state).segments.contains_key(&chunk.segment) => {}
                Err(error) => {
                    if failed.is_empty() {
                        tracing::error!(queue = %self.queue, %error, "cannot write the overflow; bodies beyond the budget stay in memory until it can");
                    }
                    failed.push(chunk);
                }
            }
        }
        {
            let mut state = lock(&self.state);
            state.writing.clear();
            state.writing_bytes = 0;
            if failed.is_empty() {
                state.failed_at = None;
            } else {
                state.failed_at = Some(Instant::now());
                // Written again first at the next try, in order.
                for chunk in failed.into_iter().rev() {
                    let chunk = Arc::try_unwrap(chunk).unwrap_or_else(|shared| Chunk {
                        segment: shared.segment,
                        start: shared.start,
                        bytes: shared.bytes.clone(),
                    });
                    if state.segments.contains_key(&chunk.segment) {
                        state.pending_bytes += chunk.bytes.len();
                        state.pending.push_front(chunk);
                    }
                }
            }
            // Keep descriptors only for the segment being read (the oldest) and the one
            // being written.
            let (oldest, tail) = (state.segments.keys().next().copied(), state.tail);
            for (number, segment) in state.segments.iter_mut() {
                if Some(*number) != oldest && *number != tail {
                    segment.file = None;
                }
            }
        }
        for number in dead {
            let path = self.path(number);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "cannot delete an overflow segment")
                }
            }
        }
    }

    fn read(&self, places: &[PagedAt]) -> Vec<Option<Message>> {
        let mut out: Vec<Option<Message>> = vec![None; places.len()];
        let mut from_files: BTreeMap<u32, Vec<(usize, PagedAt)>> = BTreeMap::new();
        {
            let state = lock(&self.state);
            for (slot, at) in places.iter().enumerate() {
                match state.in_memory(*at) {
                    Some(data) => out[slot] = decode(data),
                    None => from_files.entry(at.segment).or_default().push((slot, *at)),
                }
            }
        }
        for (segment, mut wanted) in from_files {
            wanted.sort_by_key(|(_, at)| at.offset);
            self.read_from_file(segment, &wanted, &mut out);
        }
        out
    }

    fn release(&self, at: PagedAt) {
        let mut state = lock(&self.state);
        let Some(segment) = state.segments.get_mut(&at.segment) else {
            return;
        };
        segment.live = segment.live.saturating_sub(1);
        let emptied = segment.live == 0;
        state.live = state.live.saturating_sub(1);
        if state.live == 0 {
            // Nothing is paged any more: start again in a fresh segment.
            let all: Vec<u32> = state.segments.keys().copied().collect();
            for number in all {
                state.bury(number);
            }
            state.tail += 1;
            state.tail_offset = 0;
        } else if emptied && at.segment != state.tail {
            state.bury(at.segment);
        }
    }

    fn close(&self) {
        let numbers: Vec<u32> = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.pending.clear();
            state.pending_bytes = 0;
            let mut numbers: Vec<u32> = std::mem::take(&mut state.segments).into_keys().collect();
            numbers.append(&mut state.dead);
            numbers
        };
        for number in numbers {
            let _ = std::fs::remove_file(self.path(number));
        }
    }
}

#[cfg(test)]
mod tests;
