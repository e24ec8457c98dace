//! The persistent message log: append-only segment files in `<data dir>/messages/`, each record
//! framed by its length and a CRC32C, written by one thread that batches every waiting request
//! into one write and one fsync (group commit) and then runs the completions in order.
//!
//! Records: a publish (message id, the durable queues it went to, the message) and a removal
//! (queue, message id). Recovery replays every segment in order; a message is recovered into
//! each queue that has not removed it. A torn or corrupt tail (bad length or checksum) ends the
//! replay: the file is truncated there and the loss reported, and every good record before it
//! is kept. A segment whose every message has been removed everywhere is deleted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use bytes::Bytes;
use junction_core::persistence::{MessageStore, OnDurable, QueueKey};
use junction_core::{Message, Properties};

/// A segment is closed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Record type tags.
const PUBLISH: u8 = 1;
const REMOVE: u8 = 2;
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

enum Request {
    Write {
        record: Vec<u8>,
        /// For a publish: the message and how many queues hold it.
        publish: Option<(u64, usize)>,
        /// For a removal: the message id.
        remove: Option<u64>,
        on_durable: Option<OnDurable>,
    },
    Sync(OnDurable),
}

/// The message log. Cheap to share; all writing happens on its own thread.
pub struct MessageLog {
    requests: Mutex<mpsc::Sender<Request>>,
    next_id: AtomicU64,
    recovered: Mutex<HashMap<QueueKey, Vec<Message>>>,
}

/// What recovery found, for the log and the closing report.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Messages recovered, counted once per queue.
    pub messages: usize,
    /// Segments read.
    pub segments: usize,
    /// Bytes cut off a torn or corrupt tail, with the file.
    pub truncated: Vec<(PathBuf, u64)>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Reads the fields of a record payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn key(&mut self) -> Option<QueueKey> {
        Some(QueueKey {
            vhost: self.string()?,
            queue: self.string()?,
        })
    }
}

fn encode_publish(id: u64, queues: &[QueueKey], message: &Message) -> Vec<u8> {
    let properties = serde_json::to_vec(&message.properties).unwrap_or_default();
    let mut out = Vec::with_capacity(64 + message.body.len() + properties.len());
    out.push(PUBLISH);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(queues.len() as u32).to_be_bytes());
    for key in queues {
        put_str(&mut out, &key.vhost);
        put_str(&mut out, &key.queue);
    }
    put_str(&mut out, &message.exchange);
    put_str(&mut out, &message.routing_key);
    put_bytes(&mut out, &properties);
    put_bytes(&mut out, &message.body);
    out
}

fn encode_remove(queue: &QueueKey, id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + queue.queue.len());
    out.push(REMOVE);
    out.extend_from_slice(&id.to_be_bytes());
    put_str(&mut out, &queue.vhost);
    put_str(&mut out, &queue.queue);
    out
}

/// Frames a payload: length, CRC32C of the payload, payload.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

enum Decoded {
    Publish {
        id: u64,
        queues: Vec<QueueKey>,
        message: Box<Message>,
    },
    Remove {
        id: u64,
        queue: QueueKey,
    },
}

fn decode(payload: &[u8]) -> Option<Decoded> {
    let mut r = Reader(payload);
    match r.u8()? {
        PUBLISH => {
            let id = r.u64()?;
            let count = r.u32()? as usize;
            let mut queues = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                queues.push(r.key()?);
            }
            let exchange = r.string()?;
            let routing_key = r.string()?;
            let properties: Properties = serde_json::from_slice(r.bytes()?).ok()?;
            let body = Bytes::copy_from_slice(r.bytes()?);
            let mut message = Message::new(exchange, routing_key, properties, body);
            message.store_id = Some(id);
            Some(Decoded::Publish {
                id,
                queues,
                message: Box::new(message),
            })
        }
        REMOVE => {
            let id = r.u64()?;
            Some(Decoded::Remove {
                id,
                queue: r.key()?,
            })
        }
        _ => None,
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}.seg"))
}

/// The segment numbers in `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(number) = stem.parse() {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Live-message bookkeeping shared by recovery and the writer: which segment holds each
/// message, how many queues still hold it, and how many live messages each segment has.
#[derive(Default)]
struct Liveness {
    messages: HashMap<u64, (u64, usize)>,
    per_segment: BTreeMap<u64, usize>,
}

impl Liveness {
    fn published(&mut self, id: u64, segment: u64, holders: usize) {
        if holders == 0 {
            return;
        }
        self.messages.insert(id, (segment, holders));
        *self.per_segment.entry(segment).or_default() += 1;
    }

    /// Returns the segment that became empty, if any.
    fn removed(&mut self, id: u64) -> Option<u64> {
        let (segment, holders) = self.messages.get_mut(&id)?;
        *holders -= 1;
        if *holders > 0 {
            return None;
        }
        let segment = *segment;
        self.messages.remove(&id);
        let live = self.per_segment.entry(segment).or_default();
        *live = live.saturating_sub(1);
        (*live == 0).then_some(segment)
    }
}

/// Replays one segment; returns the length of its good prefix.
fn replay(
    path: &Path,
    segment: u64,
    state: &mut HashMap<u64, (Message, Vec<QueueKey>)>,
    liveness: &mut Liveness,
    max_id: &mut u64,
) -> Result<(u64, u64), LogError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_error(path))?;
    let mut at = 0usize;
    while data.len() - at >= 8 {
        let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        if len > MAX_RECORD || data.len() - at - 8 < len {
            break;
        }
        let payload = &data[at + 8..at + 8 + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(record) = decode(payload) else {
            break;
        };
        match record {
            Decoded::Publish {
                id,
                queues,
                message,
            } => {
                *max_id = (*max_id).max(id);
                liveness.published(id, segment, queues.len());
                state.insert(id, (*message, queues));
            }
            Decoded::Remove { id, queue } => {
                liveness.removed(id);
                if let Some((_, holders)) = state.get_mut(&id) {
                    holders.retain(|q| *q != queue);
                    if holders.is_empty() {
                        state.remove(&id);
                    }
                }
            }
        }
        at += 8 + len;
    }
    Ok((at as u64, data.len() as u64))
}

impl MessageLog {
    /// Opens the log in `<data_dir>/messages`, recovering what it holds.
    pub fn open(data_dir: &Path) -> Result<(Self, RecoveryReport), LogError> {
        let dir = data_dir.join("messages");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let mut report = RecoveryReport::default();
        let mut state: HashMap<u64, (Message, Vec<QueueKey>)> = HashMap::new();
        let mut liveness = Liveness::default();
        let mut max_id = 0;
        let numbers = segments(&dir)?;
        for &number in &numbers {
            let path = segment_path(&dir, number);
            let (good, total) = replay(&path, number, &mut state, &mut liveness, &mut max_id)?;
            report.segments += 1;
            if good < total {
                tracing::warn!(
                    file = %path.display(),
                    kept_bytes = good,
                    lost_bytes = total - good,
                    "torn or corrupt tail in the message log: truncated; every record before it is kept"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(good).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
                report.truncated.push((path, total - good));
            }
        }
        let mut recovered: HashMap<QueueKey, Vec<(u64, Message)>> = HashMap::new();
        for (id, (message, queues)) in state {
            for queue in queues {
                recovered
                    .entry(queue)
                    .or_default()
                    .push((id, message.clone()));
            }
        }
        let recovered: HashMap<QueueKey, Vec<Message>> = recovered
            .into_iter()
            .map(|(queue, mut messages)| {
                messages.sort_by_key(|(id, _)| *id);
                report.messages += messages.len();
                (queue, messages.into_iter().map(|(_, m)| m).collect())
            })
            .collect();
        let active = numbers.last().map_or(1, |n| n + 1);
        let writer = Writer::start(dir, active, liveness, &numbers)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("junction-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io_error(data_dir))?;
        Ok((
            Self {
                requests: Mutex::new(tx),
                next_id: AtomicU64::new(max_id + 1),
                recovered: Mutex::new(recovered),
            },
            report,
        ))
    }

    fn send(&self, request: Request) {
        let sender = match self.requests.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if sender.send(request).is_err() {
            tracing::error!("the message log writer has stopped");
        }
    }
}

impl MessageStore for MessageLog {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn publish(
        &self,
        id: u64,
        queues: &[QueueKey],
        message: &Message,
        on_durable: Option<OnDurable>,
    ) {
        let payload = encode_publish(id, queues, message);
        self.send(Request::Write {
            record: payload,
            publish: Some((id, queues.len())),
            remove: None,
            on_durable,
        });
    }

    fn remove(&self, queue: &QueueKey, id: u64) {
        self.send(Request::Write {
            record: encode_remove(queue, id),
            publish: None,
            remove: Some(id),
            on_durable: None,
        });
    }

    fn sync(&self, on_durable: OnDurable) {
        self.send(Request::Sync(on_durable));
    }

    fn take_recovered(&self, queue: &QueueKey) -> Vec<Message> {
        match self.recovered.lock() {
            Ok(mut map) => map.remove(queue).unwrap_or_default(),
            Err(poisoned) => poisoned.into_inner().remove(queue).unwrap_or_default(),
        }
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    active: u64,
    file: File,
    written: u64,
    liveness: Liveness,
    buffer: Vec<u8>,
}

impl Writer {
    fn start(
        dir: PathBuf,
        active: u64,
        liveness: Liveness,
        existing: &[u64],
    ) -> Result<Self, LogError> {
        let path = segment_path(&dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut writer = Self {
            dir,
            active,
            file,
            written: 0,
            liveness,
            buffer: Vec::new(),
        };
        // Segments that recovery found empty can go now.
        for &number in existing {
            if writer
                .liveness
                .per_segment
                .get(&number)
                .copied()
                .unwrap_or(0)
                == 0
            {
                writer.delete_segment(number);
            }
        }
        Ok(writer)
    }

    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut done: Vec<OnDurable> = Vec::new();
            let mut emptied: Vec<u64> = Vec::new();
            self.take(first, &mut done, &mut emptied);
            while let Ok(more) = requests.try_recv() {
                self.take(more, &mut done, &mut emptied);
            }
            if let Err(error) = self.commit() {
                // Without a durable write nothing may be confirmed: stop, and let publishers
                // see no confirms rather than false ones.
                tracing::error!(%error, "message log write failed; persistence stopped");
                return;
            }
            for callback in done {
                callback();
            }
            for segment in emptied {
                if segment != self.active {
                    self.delete_segment(segment);
                }
            }
        }
    }

    fn take(&mut self, request: Request, done: &mut Vec<OnDurable>, emptied: &mut Vec<u64>) {
        match request {
            Request::Write {
                record,
                publish,
                remove,
                on_durable,
            } => {
                frame(&record, &mut self.buffer);
                if let Some((id, holders)) = publish {
                    self.liveness.published(id, self.active, holders);
                }
                if let Some(id) = remove
                    && let Some(segment) = self.liveness.removed(id)
                {
                    emptied.push(segment);
                }
                done.extend(on_durable);
            }
            Request::Sync(on_durable) => done.push(on_durable),
        }
    }

    /// Writes the batch and fsyncs it; rolls to a new segment when the active one is full.
    fn commit(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
            self.file.sync_data()?;
        }
        if self.written >= SEGMENT_BYTES {
            self.active += 1;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, self.active))?;
            self.written = 0;
        }
        Ok(())
    }

    fn delete_segment(&mut self, number: u64) {
        self.liveness.per_segment.remove(&number);
        let path = segment_path(&self.dir, number);
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), %error, "could not delete an empty segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use super::*;

    fn dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("junction-log-test-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn key(queue: &str) -> QueueKey {
        QueueKey {
            vhost: "/".into(),
            queue: queue.into(),
        }
    }

    fn message(body: &str) -> Message {
        Message::new(
            "",
            "q",
            Properties::default(),
            Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    /// Publishes and waits for the fsync.
    fn publish_durably(log: &MessageLog, queues: &[QueueKey], body: &str) -> u64 {
        let id = log.next_id();
        let (tx, rx) = std_mpsc::channel();
        log.publish(
            id,
            queues,
            &message(body),
            Some(Box::new(move || {
                let _ = tx.send(());
            })),
        );
        rx.recv_timeout(Duration::from_secs(10)).expect("durable");
        id
    }

    fn flush(log: &MessageLog) {
        let (tx, rx) = std_mpsc::channel();
        log.sync(Box::new(move || {
            let _ = tx.send(());
        }));
        rx.recv_timeout(Duration::from_secs(10)).expect("synced");
    }

    fn bodies(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    }

    #[test]
    fn messages_come_back_in_order_minus_the_removed_ones() {
        let dir = dir("order");
        {
            let (log, _) = MessageLog::open(&dir).expect("open");
            let a = publish_durably(&log, &[key("q1"), key("q2")], "a");
            publish_durably(&log, &[key("q1")], "b");
            publish_durably(&log, &[key("q1")], "c");
            log.remove(&key("q1"), a);
            flush(&log);
        }
        let (log, report) = MessageLog::open(&dir).expect("reopen");
        assert_eq!(bodies(&log.take_recovered(&key("q1"))), ["b", "c"]);
        assert_eq!(bodies(&log.take_recovered(&key("q2"))), ["a"]);
        assert!(log.take_recovered(&key("q1")).is_empty(), "taken once");
        assert_eq!(report.messages, 3);
        assert!(log.next_id() > 3);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_good_records_are_kept() {
        let dir = dir("torn");
        {
            let (log, _) = MessageLog::open(&dir).expect("open");
            publish_durably(&log, &[key("q")], "kept-1");
            publish_durably(&log, &[key("q")], "kept-2");
        }
        let segment = segment_path(&dir.join("messages"), 1);
        let mut file = OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("segment");
        file.write_all(&[0, 0, 0, 40, 1, 2, 3, 4, 9, 9])
            .expect("torn write");
        drop(file);
        let (log, report) = MessageLog::open(&dir).expect("reopen");
        assert_eq!(bodies(&log.take_recovered(&key("q"))), ["kept-1", "kept-2"]);
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(report.truncated[0].1, 10);
    }

    #[test]
    fn a_flipped_byte_ends_the_replay_at_the_damaged_record() {
        let dir = dir("flip");
        {
            let (log, _) = MessageLog::open(&dir).expect("open");
            publish_durably(&log, &[key("q")], "first");
            publish_durably(&log, &[key("q")], "second");
        }
        let segment = segment_path(&dir.join("messages"), 1);
        let mut data = std::fs::read(&segment).expect("read");
        let last = data.len() - 2;
        data[last] ^= 0xff;
        std::fs::write(&segment, &data).expect("write");
        let (log, report) = MessageLog::open(&dir).expect("reopen");
        assert_eq!(bodies(&log.take_recovered(&key("q"))), ["first"]);
        assert_eq!(report.truncated.len(), 1);
    }

    #[test]
    fn fully_removed_segments_are_deleted_at_the_next_start() {
        let dir = dir("gc");
        {
            let (log, _) = MessageLog::open(&dir).expect("open");
            let id = publish_durably(&log, &[key("q")], "gone");
            log.remove(&key("q"), id);
            flush(&log);
        }
        let (_log, report) = MessageLog::open(&dir).expect("reopen");
        assert_eq!(report.messages, 0);
        assert!(
            !segment_path(&dir.join("messages"), 1).exists(),
            "empty segment deleted"
        );
    }
}
