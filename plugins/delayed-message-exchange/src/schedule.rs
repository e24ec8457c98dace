//! The held messages of one delayed-message exchange and the task that releases them.
//!
//! Each held message is stored in the exchange's durable state under a 16-byte key, its due
//! time (milliseconds since the epoch) then a sequence number, both big-endian, so keys sort
//! by due time and a restart finds them in order. In memory the schedule keeps one entry per
//! pending message, key to an optional boxed message: the message itself only until its
//! store write is durable, so a million pending messages cost a few tens of megabytes.
//!
//! One task per exchange sleeps until the earliest due time (a hold that comes before it
//! wakes it), then takes the due entries in order, reads from the store those no longer in
//! memory, and publishes each through the exchange with `x-delay` negated. Its key is deleted
//! once the release is safe: at once when the release needed no write, after the message
//! store's write otherwise. A crash in between releases it again at the next start (at least
//! once, never lost).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use junction_core::persistence::{Durability, NotStored, OnDurable};
use junction_core::plugin::{decode_message, encode_message};
use junction_core::publish::Persisted;
use junction_core::{HeldMessage, Message, PluginContext};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{delay_of, released};

/// A pending message: its due time (ms since the epoch) and a sequence number.
type Key = (u64, u64);

/// Entries released per pass, so a flood of due messages does not hold the lock long.
const BATCH: usize = 1024;

/// How long the release waits after the message store refused a release.
const RETRY: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn encode_key((due, seq): Key) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&due.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    bytes
}

fn decode_key(bytes: &[u8]) -> Option<Key> {
    let due = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16).then_some((due, seq))
}

/// The schedule of one delayed-message exchange.
pub(crate) struct Schedule {
    context: PluginContext,
    /// Pending messages by key; the message while its store write is not yet durable.
    pending: Mutex<BTreeMap<Key, Option<Box<Message>>>>,
    /// Woken by a hold that becomes the earliest pending message.
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Starts at the clock in microseconds, so keys made after a restart never repeat
    /// earlier ones.
    next_seq: AtomicU64,
    me: Weak<Schedule>,
}

impl Schedule {
    pub(crate) fn new(context: PluginContext) -> Arc<Self> {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64);
        Arc::new_cyclic(|me| Self {
            context,
            pending: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            task: Mutex::new(None),
            next_seq: AtomicU64::new(start),
            me: me.clone(),
        })
    }

    /// Starts releasing; a recovered exchange first loads its stored keys.
    pub(crate) fn start(&self, recovered: bool) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let task = self.context.spawn(async move {
            if recovered {
                me.recover().await;
            }
            me.run().await;
        });
        *self.task.lock() = task;
    }

    /// Stops releasing and forgets every pending message (the exchange was deleted).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        self.pending.lock().clear();
        self.context.state().clear(None);
    }

    /// Stores a held message and schedules it. Its publisher's completion runs once it is
    /// durable.
    pub(crate) fn hold(&self, held: HeldMessage) -> Result<(), NotStored> {
        let (message, on_stored) = held.into_parts();
        let delay = delay_of(&message).ok_or(NotStored)?;
        let key = (
            now_ms().saturating_add(delay),
            self.next_seq.fetch_add(1, Ordering::Relaxed),
        );
        let value = encode_message(&message);
        let earliest = {
            let mut pending = self.pending.lock();
            let earliest = pending
                .first_key_value()
                .is_none_or(|(first, _)| key < *first);
            pending.insert(key, Some(Box::new(message)));
            earliest
        };
        let me = self.me.clone();
        let stored: OnDurable = Box::new(move |durability| {
            if let Some(schedule) = me.upgrade() {
                schedule.stored(key, durability);
            }
            if let Some(on_stored) = on_stored {
                on_stored(durability);
            }
        });
        if let Err(refused) = self
            .context
            .state()
            .put(&encode_key(key), value, Some(stored))
        {
            self.pending.lock().remove(&key);
            return Err(refused);
        }
        if earliest {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The store write of `key` finished: drop the copy in memory, or the message if the
    /// write failed (its publisher hears so).
    fn stored(&self, key: Key, durability: Durability) {
        let mut pending = self.pending.lock();
        match durability {
            Durability::OnDisk => {
                if let Some(message) = pending.get_mut(&key) {
                    *message = None;
                }
            }
            Durability::Failed => {
                pending.remove(&key);
            }
        }
    }

    /// Loads the keys a restart found in the store.
    async fn recover(&self) {
        let state = self.context.state().clone();
        let keys = match tokio::task::spawn_blocking(move || state.keys()).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(error)) => {
                tracing::error!(exchange = %self.context.exchange(), %error, "delayed messages not recovered");
                return;
            }
            Err(error) => {
                tracing::error!(exchange = %self.context.exchange(), %error, "delayed messages not recovered");
                return;
            }
        };
        let mut pending = self.pending.lock();
        let before = pending.len();
        for key in keys.iter().filter_map(|bytes| decode_key(bytes)) {
            pending.entry(key).or_insert(None);
        }
        tracing::info!(
            vhost = %self.context.vhost(),
            exchange = %self.context.exchange(),
            messages = pending.len() - before,
            "delayed messages recovered"
        );
    }

    /// Releases messages as they come due, until the task is aborted.
    async fn run(&self) {
        loop {
            let now = now_ms();
            let next = self.pending.lock().first_key_value().map(|(key, _)| key.0);
            match next {
                None => self.wake.notified().await,
                Some(due) if due > now => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(due - now)) => {}
                        () = self.wake.notified() => {}
                    }
                }
                Some(_) => {
                    if !self.release_due(now).await {
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }

    /// Releases up to [`BATCH`] messages due at `now`, in due order. False when the release
    /// should wait a moment: the message store refused a release, or the state store could
    /// not be read. What was not released goes back into the schedule.
    async fn release_due(&self, now: u64) -> bool {
        let mut due = Vec::new();
        {
            let mut pending = self.pending.lock();
            while due.len() < BATCH {
                match pending.first_key_value() {
                    Some((key, _)) if key.0 <= now => {}
                    _ => break,
                }
                if let Some(entry) = pending.pop_first() {
                    due.push(entry);
                }
            }
        }
        let unread: Vec<Key> = due
            .iter()
            .filter(|(_, message)| message.is_none())
            .map(|(key, _)| *key)
            .collect();
        let mut read = self.read(unread).await.into_iter();
        let mut due = due.into_iter();
        let mut all_went = true;
        while let Some((key, message)) = due.next() {
            let message = match message {
                Some(message) => *message,
                None => match read.next() {
                    Some(Read::Found(message)) => *message,
                    Some(Read::Missing) => {
                        tracing::warn!(exchange = %self.context.exchange(), "a delayed message is not in the state store; dropped");
                        continue;
                    }
                    // Tried again after a pause.
                    Some(Read::Failed) | None => {
                        self.pending.lock().insert(key, None);
                        all_went = false;
                        continue;
                    }
                },
            };
            if let Err(message) = self.release(key, message).await {
                // The message store refuses now: this one and the rest wait.
                let mut pending = self.pending.lock();
                pending.insert(key, Some(Box::new(message)));
                for (key, message) in due.by_ref() {
                    pending.insert(key, message);
                }
                return false;
            }
        }
        all_went
    }

    /// Reads the stored messages of `keys`, in order.
    async fn read(&self, keys: Vec<Key>) -> Vec<Read> {
        if keys.is_empty() {
            return Vec::new();
        }
        let state = self.context.state().clone();
        let count = keys.len();
        let read = tokio::task::spawn_blocking(move || {
            keys.into_iter()
                .map(|key| match state.get(&encode_key(key)) {
                    Ok(Some(bytes)) => match decode_message(&bytes) {
                        Some(message) => Read::Found(Box::new(message)),
                        None => Read::Missing,
                    },
                    Ok(None) => Read::Missing,
                    Err(error) => {
                        tracing::warn!(%error, "delayed message not read; tried again");
                        Read::Failed
                    }
                })
                .collect()
        })
        .await;
        read.unwrap_or_else(|_| (0..count).map(|_| Read::Failed).collect())
    }

    /// Publishes one due message through the exchange and forgets its key once that is safe;
    /// a release whose write then fails goes back into the schedule. The message back when the
    /// message store refused it.
    async fn release(&self, key: Key, message: Message) -> Result<(), Message> {
        let delay = delay_of(&message).unwrap_or(0);
        let released_message = released(message.clone(), delay);
        let state = self.context.state().clone();
        let stored_key = encode_key(key);
        let me = self.me.clone();
        let forget: OnDurable = Box::new(move |durability| match durability {
            Durability::OnDisk => state.delete(&stored_key, None),
            Durability::Failed => {
                if let Some(schedule) = me.upgrade() {
                    schedule.pending.lock().insert(key, None);
                    schedule.wake.notify_one();
                }
            }
        });
        match self
            .context
            .publish(self.context.exchange(), released_message, Some(forget))
            .await
        {
            Ok(published) => match published.stored {
                Persisted::Pending => Ok(()),
                Persisted::Unneeded => {
                    self.context.state().delete(&stored_key, None);
                    Ok(())
                }
                Persisted::Refused => Err(message),
            },
            Err(error) => {
                tracing::warn!(exchange = %self.context.exchange(), %error, "delayed message not released");
                Ok(())
            }
        }
    }
}

/// What reading one stored message gave.
enum Read {
    Found(Box<Message>),
    /// Not there (or not a message): nothing to release.
    Missing,
    /// The store could not be read now.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_due_time_and_read_back() {
        let keys = [(5, 9), (5, 10), (6, 0), (1 << 40, 3)];
        let encoded: Vec<[u8; 16]> = keys.iter().map(|k| encode_key(*k)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded);
        for (key, bytes) in keys.iter().zip(&encoded) {
            assert_eq!(decode_key(bytes), Some(*key));
        }
        assert_eq!(decode_key(&[0; 15]), None);
        assert_eq!(decode_key(&[0; 17]), None);
    }
}
