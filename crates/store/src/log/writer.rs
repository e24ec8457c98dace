//! The writer thread: takes every waiting request, writes them with one write and one fdatasync
//! (group commit), runs the completions in request order, and deletes segments left without
//! live messages, oldest first: a segment may hold removal records for messages in earlier
//! segments, so it can only go once every earlier segment has gone (otherwise a removal would
//! be lost and an acknowledged message would come back at the next start).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;

use junction_core::persistence::OnDurable;

use super::{LogError, io_error, segment_path};

/// What the log asks of its writer, in the order the records must land.
pub enum Request {
    /// Append a framed record. A publish names how many queues hold it; a removal names the
    /// segment of the publish it settles.
    Write {
        record: Vec<u8>,
        publish_holders: usize,
        removes: Option<u32>,
        on_durable: Option<OnDurable>,
    },
    /// Continue in a new segment.
    Roll(u32),
    /// Run the callback once everything before it is on disk.
    Sync(OnDurable),
}

/// The writer thread's state.
pub struct Writer {
    dir: PathBuf,
    active: u32,
    file: File,
    live: HashMap<u32, usize>,
    /// Segments on disk, oldest first (the active one included).
    on_disk: BTreeSet<u32>,
    buffer: Vec<u8>,
}

impl Writer {
    /// Opens the active segment and deletes recovered segments with nothing live.
    pub fn start(
        dir: PathBuf,
        active: u32,
        live: HashMap<u32, usize>,
        existing: &[u32],
    ) -> Result<Self, LogError> {
        let path = segment_path(&dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut on_disk: BTreeSet<u32> = existing.iter().copied().collect();
        on_disk.insert(active);
        let mut writer = Self {
            dir,
            active,
            file,
            live,
            on_disk,
            buffer: Vec::new(),
        };
        writer.delete_dead_prefix();
        Ok(writer)
    }

    /// Serves requests until the log is dropped.
    pub fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut done: Vec<OnDurable> = Vec::new();
            let mut outcome = self.take(first, &mut done);
            while outcome.is_ok()
                && let Ok(more) = requests.try_recv()
            {
                outcome = self.take(more, &mut done);
            }
            if let Err(error) = outcome.and_then(|()| self.commit()) {
                // Without a durable write nothing may be confirmed: stop, and let publishers
                // see no confirms rather than false ones.
                tracing::error!(%error, "message log write failed; persistence stopped");
                return;
            }
            for callback in done {
                callback();
            }
            self.delete_dead_prefix();
        }
    }

    fn take(&mut self, request: Request, done: &mut Vec<OnDurable>) -> std::io::Result<()> {
        match request {
            Request::Write {
                record,
                publish_holders,
                removes,
                on_durable,
            } => {
                self.buffer.extend_from_slice(&record);
                if publish_holders > 0 {
                    *self.live.entry(self.active).or_default() += publish_holders;
                }
                if let Some(segment) = removes
                    && let Some(count) = self.live.get_mut(&segment)
                {
                    *count = count.saturating_sub(1);
                }
                done.extend(on_durable);
            }
            Request::Roll(next) => {
                self.commit()?;
                let path = segment_path(&self.dir, next);
                self.file = OpenOptions::new().create(true).append(true).open(path)?;
                self.active = next;
                self.on_disk.insert(next);
            }
            Request::Sync(on_durable) => done.push(on_durable),
        }
        Ok(())
    }

    /// Writes what is buffered and fsyncs it.
    fn commit(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.buffer.clear();
            self.file.sync_data()?;
        }
        Ok(())
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
    }
}
