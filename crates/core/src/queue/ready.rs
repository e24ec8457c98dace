//! A queue's ready messages, in delivery order: publish order, or for priority queues
//! (`x-max-priority`) highest priority first and publish order within a priority. It counts
//! messages and body bytes (the length limits read them) and knows the earliest expiry at the
//! heads (messages expire from the head, as in RabbitMQ). For a queue that refuses publishes
//! when full it keeps the shared [`Admission`] count in step: publishers reserve room for what
//! they publish, the list counts what comes back (requeues, recovery) and what leaves.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::MessageSeq;
use super::admission::Admission;
use crate::message::Message;
use crate::persistence::StoredAt;

/// Where a persistent message of a durable queue lies in the message store.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    pub(super) id: u64,
    pub(super) at: StoredAt,
}

/// A message waiting for a consumer; its body may be paged out to the store.
pub(super) struct Ready {
    pub(super) seq: MessageSeq,
    /// None while paged out (then `stored` says where to read it).
    pub(super) message: Option<Arc<Message>>,
    pub(super) stored: Option<Stored>,
    pub(super) redelivered: bool,
    /// The body's length (known while the body is paged out).
    pub(super) size: usize,
    /// The priority level it waits at (0 in a queue without priorities).
    pub(super) level: u8,
    /// When it expires (message TTL), if it does.
    pub(super) expires_at: Option<Instant>,
}

/// The ready messages.
pub(super) struct ReadyList {
    /// One list per priority level, lowest first; a single one without priorities.
    levels: Vec<VecDeque<Ready>>,
    len: usize,
    bytes: usize,
    admission: Option<Arc<Admission>>,
}

impl ReadyList {
    /// A list with priority levels `0..=max_priority` (one level without).
    pub(super) fn new(max_priority: Option<u8>, admission: Option<Arc<Admission>>) -> Self {
        let count = usize::from(max_priority.unwrap_or(0)) + 1;
        Self {
            levels: (0..count).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            admission,
        }
    }

    /// The level a message of `priority` waits at: clamped to the queue's maximum.
    pub(super) fn level_for(&self, priority: Option<u8>) -> u8 {
        let top = (self.levels.len() - 1) as u8;
        priority.unwrap_or(0).min(top)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of the ready messages.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a newly published message behind the others of its level (its publisher
    /// reserved room for it).
    pub(super) fn push_back(&mut self, entry: Ready) {
        self.len += 1;
        self.bytes += entry.size;
        let level = usize::from(entry.level);
        self.levels[level].push_back(entry);
    }

    /// Adds a message recovered from the store at start-up.
    pub(super) fn restore(&mut self, entry: Ready) {
        self.count_in(&entry);
        let level = usize::from(entry.level);
        self.levels[level].push_back(entry);
    }

    /// Puts a message back at the head of its level (a delivery that could not be made).
    pub(super) fn push_front(&mut self, entry: Ready) {
        self.count_in(&entry);
        let level = usize::from(entry.level);
        self.levels[level].push_front(entry);
    }

    /// Takes the next message to deliver: the head of the highest non-empty level.
    pub(super) fn pop_front(&mut self) -> Option<Ready> {
        let entry = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.count_out(&entry);
        Some(entry)
    }

    /// The earliest expiry among the heads of the levels.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|level| level.front().and_then(|entry| entry.expires_at))
            .min()
    }

    /// Takes the heads that expired by `now`, lowest level first.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Ready> {
        let mut expired = Vec::new();
        for level in &mut self.levels {
            while level
                .front()
                .and_then(|entry| entry.expires_at)
                .is_some_and(|at| at <= now)
            {
                if let Some(entry) = level.pop_front() {
                    expired.push(entry);
                }
            }
        }
        for entry in &expired {
            self.count_out(entry);
        }
        expired
    }

    /// Takes every message (purge, deletion).
    pub(super) fn take_all(&mut self) -> Vec<Ready> {
        let all: Vec<Ready> = self
            .levels
            .iter_mut()
            .flat_map(|level| level.drain(..))
            .collect();
        for entry in &all {
            self.count_out(entry);
        }
        all
    }

    /// Takes the messages stored under the store ids `ids` (writes that failed). A queue holds
    /// a message once, and failed messages are the newest, so each level is searched from the
    /// back until every id was found, and only the part behind the oldest one found is
    /// rebuilt: one pass at most, however many failed.
    pub(super) fn take_stored(&mut self, ids: &HashSet<u64>) -> Vec<Ready> {
        let mut taken = Vec::new();
        let mut missing = ids.len();
        for level in &mut self.levels {
            if missing == 0 {
                break;
            }
            let mut oldest = None;
            for (index, entry) in level.iter().enumerate().rev() {
                if missing == 0 {
                    break;
                }
                if entry.stored.is_some_and(|stored| ids.contains(&stored.id)) {
                    missing -= 1;
                    oldest = Some(index);
                }
            }
            let Some(oldest) = oldest else {
                continue;
            };
            for entry in level.split_off(oldest) {
                if entry.stored.is_some_and(|stored| ids.contains(&stored.id)) {
                    taken.push(entry);
                } else {
                    level.push_back(entry);
                }
            }
        }
        for entry in &taken {
            self.count_out(entry);
        }
        taken
    }

    /// Puts messages back at their original positions (by sequence, within their level).
    pub(super) fn requeue(&mut self, mut back: Vec<Ready>) {
        if back.is_empty() {
            return;
        }
        back.sort_by_key(|entry| entry.seq);
        for entry in &back {
            self.count_in(entry);
        }
        let mut by_level: Vec<Vec<Ready>> = (0..self.levels.len()).map(|_| Vec::new()).collect();
        for entry in back {
            let level = usize::from(entry.level);
            by_level[level].push(entry);
        }
        for (level, back) in self.levels.iter_mut().zip(by_level) {
            merge_by_seq(level, back);
        }
    }

    fn count_in(&mut self, entry: &Ready) {
        self.len += 1;
        self.bytes += entry.size;
        if let Some(admission) = &self.admission {
            admission.enter(entry.size as u64);
        }
    }

    fn count_out(&mut self, entry: &Ready) {
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry.size);
        if let Some(admission) = &self.admission {
            admission.leave(entry.size as u64);
        }
    }
}

/// Merges `back` (sorted by sequence) into `level` (sorted by sequence).
fn merge_by_seq(level: &mut VecDeque<Ready>, back: Vec<Ready>) {
    if back.is_empty() {
        return;
    }
    let fits_in_front = match (level.front(), back.last()) {
        (Some(first), Some(last)) => last.seq < first.seq,
        _ => true,
    };
    if fits_in_front {
        for entry in back.into_iter().rev() {
            level.push_front(entry);
        }
        return;
    }
    let mut merged = VecDeque::with_capacity(level.len() + back.len());
    let mut old = std::mem::take(level).into_iter().peekable();
    let mut new = back.into_iter().peekable();
    loop {
        let take_new = match (old.peek(), new.peek()) {
            (Some(o), Some(n)) => n.seq < o.seq,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => break,
        };
        let next = if take_new { new.next() } else { old.next() };
        merged.extend(next);
    }
    *level = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn entry(seq: MessageSeq, level: u8, expires_at: Option<Instant>) -> Ready {
        let message = Message::new("", "k", Default::default(), Bytes::from(vec![0u8; 10]));
        Ready {
            seq,
            message: Some(Arc::new(message)),
            stored: None,
            redelivered: false,
            size: 10,
            level,
            expires_at,
        }
    }

    fn seqs(list: &mut ReadyList) -> Vec<MessageSeq> {
        std::iter::from_fn(|| list.pop_front().map(|e| e.seq)).collect()
    }

    #[test]
    fn higher_priorities_go_first_and_publish_order_holds_within_one() {
        let mut list = ReadyList::new(Some(5), None);
        assert_eq!(list.level_for(Some(9)), 5);
        assert_eq!(list.level_for(None), 0);
        for (seq, level) in [(0, 0), (1, 5), (2, 3), (3, 5), (4, 0)] {
            list.push_back(entry(seq, level, None));
        }
        assert_eq!(list.len(), 5);
        assert_eq!(list.bytes(), 50);
        assert_eq!(seqs(&mut list), vec![1, 3, 2, 0, 4]);
        assert!(list.is_empty());
        assert_eq!(list.bytes(), 0);
    }

    #[test]
    fn requeued_messages_return_to_their_places() {
        let mut list = ReadyList::new(None, None);
        for seq in [2, 4, 6] {
            list.push_back(entry(seq, 0, None));
        }
        list.requeue(vec![entry(5, 0, None), entry(1, 0, None)]);
        assert_eq!(seqs(&mut list), vec![1, 2, 4, 5, 6]);
    }

    #[test]
    fn expired_heads_are_taken_and_the_next_expiry_is_known() {
        let start = Instant::now();
        let mut list = ReadyList::new(None, None);
        list.push_back(entry(0, 0, Some(start + Duration::from_millis(10))));
        list.push_back(entry(1, 0, Some(start + Duration::from_millis(20))));
        list.push_back(entry(2, 0, None));
        assert_eq!(list.next_expiry(), Some(start + Duration::from_millis(10)));
        let expired = list.take_expired(start + Duration::from_millis(10));
        assert_eq!(expired.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0]);
        assert_eq!(list.next_expiry(), Some(start + Duration::from_millis(20)));
        assert_eq!(list.take_expired(start + Duration::from_secs(1)).len(), 1);
        assert_eq!(list.next_expiry(), None);
        assert_eq!(list.len(), 1);
    }

    fn stored_entry(seq: MessageSeq, level: u8, id: u64) -> Ready {
        let mut ready = entry(seq, level, None);
        ready.stored = Some(Stored {
            id,
            at: StoredAt {
                segment: 1,
                offset: seq as u32,
            },
        });
        ready
    }

    #[test]
    fn failed_writes_are_taken_from_every_level_and_the_rest_keeps_its_order() {
        let mut list = ReadyList::new(Some(2), None);
        for seq in 0..30u64 {
            list.push_back(stored_entry(seq, (seq % 3) as u8, 100 + seq));
        }
        list.push_back(entry(30, 1, None));
        let failed: HashSet<u64> = [104, 125, 127, 128, 999].into_iter().collect();
        let mut taken: Vec<MessageSeq> = list.take_stored(&failed).iter().map(|e| e.seq).collect();
        taken.sort_unstable();
        assert_eq!(taken, vec![4, 25, 27, 28]);
        assert_eq!(list.len(), 27);
        assert_eq!(list.bytes(), 270);
        let rest = seqs(&mut list);
        let mut expected: Vec<MessageSeq> = Vec::new();
        for level in (0..3u64).rev() {
            expected.extend((0..31).filter(|seq| {
                let at_level = if *seq == 30 { 1 } else { seq % 3 };
                at_level == level && ![4, 25, 27, 28].contains(seq)
            }));
        }
        assert_eq!(rest, expected);
    }
}
