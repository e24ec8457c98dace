//! Recovery: replays every segment in order and works out, for each durable queue, which
//! messages it still holds (ids and locations, oldest first) and, for each segment, how many
//! (message, queue) pairs in it are still live. A bad length or checksum ends a segment's
//! replay: the file is truncated there and the loss reported.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use junction_core::persistence::{QueueKey, Recovered, StoredAt};

use super::{LogError, MAX_RECORD, io_error, read_file, record, segment_path};

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

/// Everything the log needs to resume.
pub struct State {
    /// Each durable queue's surviving messages, oldest first.
    pub queues: HashMap<QueueKey, Vec<Recovered>>,
    /// Live (message, queue) pairs per segment.
    pub live: HashMap<u32, usize>,
    /// The segments found, in order.
    pub segments: Vec<u32>,
    /// The highest segment number found (0 if none).
    pub last_segment: u32,
    /// The highest message id found.
    pub max_id: u64,
    /// The report.
    pub report: RecoveryReport,
}

/// The segment numbers in `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<u32>, LogError> {
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

/// Replays the log in `dir`.
pub fn recover(dir: &Path) -> Result<State, LogError> {
    let numbers = segments(dir)?;
    let mut report = RecoveryReport::default();
    let mut queue_index: HashMap<QueueKey, u32> = HashMap::new();
    let mut published: Vec<(u32, u64, StoredAt)> = Vec::new();
    let mut removed: Vec<(u32, u64)> = Vec::new();
    let mut live: HashMap<u32, usize> = HashMap::new();
    let mut max_id = 0;
    for &segment in &numbers {
        let path = segment_path(dir, segment);
        let data = read_file(&path)?;
        let mut at = 0usize;
        while let Some(payload) = record::checked_payload(&data[at..], MAX_RECORD) {
            let Some(summary) = record::summary(payload) else {
                break;
            };
            let offset = u32::try_from(at).unwrap_or(u32::MAX);
            match summary {
                record::Summary::Publish { id, queues } => {
                    max_id = max_id.max(id);
                    *live.entry(segment).or_default() += queues.len();
                    for queue in queues {
                        let next = queue_index.len() as u32;
                        let index = *queue_index.entry(queue).or_insert(next);
                        published.push((index, id, StoredAt { segment, offset }));
                    }
                }
                record::Summary::Remove {
                    id,
                    segment: of,
                    queue,
                } => {
                    if let Some(count) = live.get_mut(&of) {
                        *count = count.saturating_sub(1);
                    }
                    if let Some(index) = queue_index.get(&queue) {
                        removed.push((*index, id));
                    }
                }
            }
            at += record::HEADER + payload.len();
        }
        report.segments += 1;
        let total = data.len();
        if at < total {
            tracing::warn!(
                file = %path.display(),
                kept_bytes = at,
                lost_bytes = total - at,
                "torn or corrupt tail in the message log: truncated; every record before it is kept"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            file.set_len(at as u64).map_err(io_error(&path))?;
            file.sync_all().map_err(io_error(&path))?;
            report.truncated.push((path, (total - at) as u64));
        }
    }
    removed.sort_unstable();
    published.sort_unstable_by_key(|(queue, id, _)| (*queue, *id));
    let names: HashMap<u32, QueueKey> = queue_index.into_iter().map(|(k, v)| (v, k)).collect();
    let mut queues: HashMap<QueueKey, Vec<Recovered>> = HashMap::new();
    for (index, id, at) in published {
        if removed.binary_search(&(index, id)).is_ok() {
            continue;
        }
        if let Some(name) = names.get(&index) {
            queues
                .entry(name.clone())
                .or_default()
                .push(Recovered { id, at });
            report.messages += 1;
        }
    }
    Ok(State {
        queues,
        live,
        last_segment: numbers.last().copied().unwrap_or(0),
        segments: numbers,
        max_id,
        report,
    })
}
