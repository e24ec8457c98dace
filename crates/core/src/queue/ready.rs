//! A queue's ready messages, in delivery order: publish order, or for priority queues
//! (`x-max-priority`) highest priority first and publish order within a priority. It counts
//! messages and body bytes (the length limits read them) and knows the earliest expiry at the
//! heads (messages expire from the head, as in RabbitMQ). For a queue that refuses publishes
//! when full it keeps the shared [`Admission`] count in step: publishers reserve room for what
//! they publish, the list counts what comes back (requeues, recovery) and what leaves.
//!
//! An entry's body is in memory or paged out (in the message store or in the queue's
//! overflow). A paged entry is only a small index record ([`Ready`] takes at most 48 bytes,
//! and the middle of a long run of overflow entries 12, see [`Level`]), so a backlog of
//! millions of paged messages fits in memory. The list tells which paged
//! entries go next ([`ReadyList::paged_ahead`]) and takes their bodies back in
//! ([`ReadyList::load`]) once they have been read; it does no I/O itself.

use std::collections::HashSet;
use std::num::NonZeroU64;
use std::sync::Arc;

use tokio::time::Instant;

use super::MessageSeq;
use super::admission::Admission;
use super::level::Level;
use crate::message::Message;
use crate::persistence::{PagedAt, StoredAt};

/// Where a persistent message of a durable queue lies in the message store.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    pub(super) id: u64,
    pub(super) at: StoredAt,
}

/// A point in time as the queue's [`Clock`] counts it: 8 bytes where an `Instant` takes 16,
/// and `Option<Deadline>` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline(NonZeroU64);

/// Turns instants into [`Deadline`]s and back: nanoseconds since the queue started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(super) fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    pub(super) fn deadline(&self, at: Instant) -> Deadline {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        Deadline(NonZeroU64::MIN.saturating_add(nanos))
    }

    pub(super) fn instant(&self, deadline: Deadline) -> Instant {
        self.epoch + std::time::Duration::from_nanos(deadline.0.get() - 1)
    }
}

/// Where a ready message's body is.
pub(super) enum Body {
    /// In memory; `StoredAt` when it is also in the message store (a persistent message of a
    /// durable queue, whose store id is the message's).
    Loaded(Arc<Message>, Option<StoredAt>),
    /// Only in the message store.
    Stored(Stored),
    /// Only in the queue's overflow.
    Paged(PagedAt),
}

/// Where to read a paged-out body.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place {
    Stored(Stored),
    Paged(PagedAt),
}

/// A message waiting for a consumer; its body may be paged out.
pub(super) struct Ready {
    pub(super) seq: MessageSeq,
    pub(super) body: Body,
    /// The body's length (known while the body is paged out).
    pub(super) size: u32,
    /// The priority level it waits at (0 in a queue without priorities).
    pub(super) level: u8,
    pub(super) redelivered: bool,
    /// How often it came back unsettled: a quorum queue's delivery count (it stops at
    /// 65,535, which keeps the entry within 48 bytes; a delivery limit above it never
    /// drops the message).
    pub(super) returns: u16,
    /// When it expires (message TTL), if it does.
    pub(super) expires_at: Option<Deadline>,
}

impl Ready {
    /// The body's length as the list counts it.
    pub(super) fn size_of(body: &[u8]) -> u32 {
        Self::size_of_len(body.len())
    }

    /// A body length as the list counts it.
    pub(super) fn size_of_len(len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX)
    }

    /// The message, when its body is in memory.
    pub(super) fn message(&self) -> Option<&Arc<Message>> {
        match &self.body {
            Body::Loaded(message, _) => Some(message),
            _ => None,
        }
    }

    pub(super) fn is_loaded(&self) -> bool {
        matches!(self.body, Body::Loaded(..))
    }

    /// Where it lies in the message store, if it is stored there.
    pub(super) fn stored(&self) -> Option<Stored> {
        match &self.body {
            Body::Loaded(message, Some(at)) => message.store_id.map(|id| Stored { id, at: *at }),
            Body::Loaded(_, None) | Body::Paged(_) => None,
            Body::Stored(stored) => Some(*stored),
        }
    }

    /// Where to read its body, while it is paged out.
    pub(super) fn place(&self) -> Option<Place> {
        match &self.body {
            Body::Loaded(..) => None,
            Body::Stored(stored) => Some(Place::Stored(*stored)),
            Body::Paged(at) => Some(Place::Paged(*at)),
        }
    }
}

/// A paged entry to read back: which one, and where from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub(super) seq: MessageSeq,
    pub(super) level: u8,
    pub(super) place: Place,
}

/// How much [`ReadyList::paged_ahead`] looks at and asks for at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadAhead {
    /// Paged entries asked for, at most.
    pub(super) entries: usize,
    /// Bytes of paged bodies asked for, at most (one entry at least).
    pub(super) bytes: usize,
    /// Nothing is asked for while this many bytes ahead are in memory already.
    pub(super) loaded_ahead: usize,
    /// Entries looked at, at most.
    pub(super) scan: usize,
}

/// The ready messages.
pub(super) struct ReadyList {
    /// One list per priority level, lowest first; a single one without priorities. Each is
    /// in sequence order, and keeps the middle of a long paged backlog compact ([`Level`]).
    levels: Vec<Level>,
    len: usize,
    bytes: usize,
    /// Entries whose body is paged out.
    paged: usize,
    admission: Option<Arc<Admission>>,
}

impl ReadyList {
    /// A list with priority levels `0..=max_priority` (one level without).
    pub(super) fn new(max_priority: Option<u8>, admission: Option<Arc<Admission>>) -> Self {
        let count = usize::from(max_priority.unwrap_or(0)) + 1;
        Self {
            levels: (0..count).map(|_| Level::default()).collect(),
            len: 0,
            bytes: 0,
            paged: 0,
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

    /// Entries whose body is paged out.
    pub(super) fn paged(&self) -> usize {
        self.paged
    }

    /// Adds a newly published message behind the others of its level (its publisher
    /// reserved room for it).
    pub(super) fn push_back(&mut self, entry: Ready) {
        self.len += 1;
        self.bytes += entry.size as usize;
        if !entry.is_loaded() {
            self.paged += 1;
        }
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

    /// The next message to deliver: the head of the highest non-empty level.
    pub(super) fn front(&self) -> Option<&Ready> {
        self.levels.iter().rev().find_map(Level::front)
    }

    /// Takes the next message to deliver: the head of the highest non-empty level.
    pub(super) fn pop_front(&mut self) -> Option<Ready> {
        let level = self
            .levels
            .iter_mut()
            .rev()
            .find(|level| !level.is_empty())?;
        let entry = level.pop_front()?;
        self.count_out(&entry);
        Some(entry)
    }

    /// The earliest expiry among the heads of the levels.
    pub(super) fn next_expiry(&self) -> Option<Deadline> {
        self.levels
            .iter()
            .filter_map(|level| level.front().and_then(|entry| entry.expires_at))
            .min()
    }

    /// Takes the heads that expired by `now`, lowest level first, at most `max`. With
    /// `keep_paged`, a level stops at an expired head whose body is paged out (it is needed
    /// to dead-letter it); returns whether one did.
    pub(super) fn take_expired(
        &mut self,
        now: Deadline,
        keep_paged: bool,
        max: usize,
        expired: &mut Vec<Ready>,
    ) -> bool {
        let first = expired.len();
        let mut stopped = false;
        for level in &mut self.levels {
            while let Some(head) = level.front() {
                if expired.len() - first >= max {
                    break;
                }
                if head.expires_at.is_none_or(|at| at > now) {
                    break;
                }
                if keep_paged && !head.is_loaded() {
                    stopped = true;
                    break;
                }
                if let Some(entry) = level.pop_front() {
                    expired.push(entry);
                }
            }
        }
        for entry in &expired[first..] {
            self.count_out(entry);
        }
        stopped
    }

    /// Takes every message (purge, deletion).
    pub(super) fn take_all(&mut self) -> Vec<Ready> {
        let all: Vec<Ready> = self.levels.iter_mut().flat_map(Level::take_all).collect();
        for entry in &all {
            self.count_out(entry);
        }
        all
    }

    /// Takes the messages stored under the store ids `ids` (writes that failed). A queue holds
    /// a message once, and failed messages are the newest, so each level is taken apart from
    /// the back until every id was found, and the rest put back: one pass at most, however
    /// many failed.
    pub(super) fn take_stored(&mut self, ids: &HashSet<u64>) -> Vec<Ready> {
        let failed = |entry: &Ready| {
            entry
                .stored()
                .is_some_and(|stored| ids.contains(&stored.id))
        };
        let mut taken = Vec::new();
        let mut missing = ids.len();
        for level in &mut self.levels {
            let first = taken.len();
            let mut kept = Vec::new();
            while missing > 0 {
                let Some(entry) = level.pop_back() else {
                    break;
                };
                if failed(&entry) {
                    missing -= 1;
                    taken.push(entry);
                } else {
                    kept.push(entry);
                }
            }
            for entry in kept.into_iter().rev() {
                level.push_back(entry);
            }
            taken[first..].reverse();
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

    /// The paged entries to read back next, in delivery order. With `expired_by`, first the
    /// paged entries at the heads of the levels that expired by then (dead-lettering needs
    /// their bodies); otherwise those among the next to deliver, unless enough is in memory
    /// ahead of them already.
    pub(super) fn paged_ahead(
        &self,
        limits: ReadAhead,
        expired_by: Option<Deadline>,
    ) -> Vec<Wanted> {
        let mut wanted = Vec::new();
        if self.paged == 0 {
            return wanted;
        }
        let mut bytes = 0usize;
        let room = |entry: &Ready, wanted: &Vec<Wanted>, bytes: usize| {
            wanted.len() < limits.entries
                && (wanted.is_empty() || bytes + entry.size as usize <= limits.bytes)
        };
        if let Some(now) = expired_by {
            for level in self.levels.iter().rev() {
                for entry in level.head().take(limits.scan) {
                    if entry.expires_at.is_none_or(|at| at > now) || !room(entry, &wanted, bytes) {
                        break;
                    }
                    if let Some(place) = entry.place() {
                        bytes += entry.size as usize;
                        wanted.push(Wanted {
                            seq: entry.seq,
                            level: entry.level,
                            place,
                        });
                    }
                }
            }
            if !wanted.is_empty() {
                return wanted;
            }
        }
        let mut loaded = 0usize;
        let mut scanned = 0usize;
        for level in self.levels.iter().rev() {
            for entry in level.head() {
                scanned += 1;
                if scanned > limits.scan {
                    return wanted;
                }
                match entry.place() {
                    None => {
                        loaded += entry.size as usize;
                        if wanted.is_empty() && loaded >= limits.loaded_ahead {
                            return wanted;
                        }
                    }
                    Some(place) => {
                        if !room(entry, &wanted, bytes) {
                            return wanted;
                        }
                        bytes += entry.size as usize;
                        wanted.push(Wanted {
                            seq: entry.seq,
                            level: entry.level,
                            place,
                        });
                    }
                }
            }
        }
        wanted
    }

    /// Takes the body of paged entry `seq` (at `level`) back into memory. Returns false when
    /// the entry is no longer in the list or no longer paged (it left meanwhile).
    pub(super) fn load(&mut self, seq: MessageSeq, level: u8, message: Arc<Message>) -> bool {
        let Some(entry) = self.find_mut(seq, level) else {
            return false;
        };
        let at = match entry.body {
            Body::Loaded(..) => return false,
            Body::Stored(stored) => Some(stored.at),
            Body::Paged(_) => None,
        };
        entry.body = Body::Loaded(message, at);
        self.paged = self.paged.saturating_sub(1);
        true
    }

    /// Takes paged entry `seq` (at `level`) out of the list (its body could not be read).
    pub(super) fn remove_paged(&mut self, seq: MessageSeq, level: u8) -> Option<Ready> {
        let level = self.levels.get_mut(usize::from(level))?;
        let entry = level.remove(seq, |entry| !entry.is_loaded())?;
        self.count_out(&entry);
        Some(entry)
    }

    fn find_mut(&mut self, seq: MessageSeq, level: u8) -> Option<&mut Ready> {
        self.levels.get_mut(usize::from(level))?.find_mut(seq)
    }

    fn count_in(&mut self, entry: &Ready) {
        self.len += 1;
        self.bytes += entry.size as usize;
        if !entry.is_loaded() {
            self.paged += 1;
        }
        if let Some(admission) = &self.admission {
            admission.enter(u64::from(entry.size));
        }
    }

    fn count_out(&mut self, entry: &Ready) {
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry.size as usize);
        if !entry.is_loaded() {
            self.paged = self.paged.saturating_sub(1);
        }
        if let Some(admission) = &self.admission {
            admission.leave(u64::from(entry.size));
        }
    }
}

/// Puts `back` into `level` (both in sequence order) at their places. Requeued messages go
/// near the head, and an insertion moves entries of one block only, so a requeue costs the
/// distance from the head within its block, not the length of a long backlog.
fn merge_by_seq(level: &mut Level, back: Vec<Ready>) {
    for entry in back.into_iter().rev() {
        level.insert_ordered(entry);
    }
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
            body: Body::Loaded(Arc::new(message), None),
            redelivered: false,
            returns: 0,
            size: 10,
            level,
            expires_at: expires_at.map(|at| clock().deadline(at)),
        }
    }

    fn clock() -> Clock {
        thread_local!(static EPOCH: Instant = Instant::now());
        Clock::new(EPOCH.with(|epoch| *epoch))
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
        let at = |ms| clock().deadline(start + Duration::from_millis(ms));
        assert_eq!(list.next_expiry(), Some(at(10)));
        let mut expired = Vec::new();
        assert!(!list.take_expired(at(10), false, usize::MAX, &mut expired));
        assert_eq!(expired.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0]);
        assert_eq!(list.next_expiry(), Some(at(20)));
        expired.clear();
        list.take_expired(at(1000), false, usize::MAX, &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(list.next_expiry(), None);
        assert_eq!(list.len(), 1);
    }

    fn stored_entry(seq: MessageSeq, level: u8, id: u64) -> Ready {
        let mut ready = entry(seq, level, None);
        ready.body = Body::Stored(Stored {
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

    fn paged_entry(seq: MessageSeq, level: u8) -> Ready {
        let mut ready = entry(seq, level, None);
        ready.body = Body::Paged(PagedAt {
            segment: 0,
            offset: seq as u32,
        });
        ready
    }

    #[test]
    fn a_paged_entry_takes_at_most_48_bytes() {
        // Ten million paged messages must fit well inside a gigabyte with everything else.
        assert!(
            std::mem::size_of::<Ready>() <= 48,
            "{}",
            std::mem::size_of::<Ready>()
        );
    }

    const LIMITS: ReadAhead = ReadAhead {
        entries: 3,
        bytes: 1000,
        loaded_ahead: 25,
        scan: 100,
    };

    #[test]
    fn the_next_paged_entries_are_asked_for_in_delivery_order_and_loaded_in_place() {
        let mut list = ReadyList::new(Some(1), None);
        list.push_back(entry(0, 0, None));
        list.push_back(paged_entry(1, 0));
        list.push_back(paged_entry(2, 1));
        list.push_back(entry(3, 1, None));
        list.push_back(paged_entry(4, 1));
        list.push_back(paged_entry(5, 0));
        assert_eq!(list.paged(), 4);
        let wanted = list.paged_ahead(LIMITS, None);
        let order: Vec<MessageSeq> = wanted.iter().map(|w| w.seq).collect();
        assert_eq!(
            order,
            vec![2, 4, 1],
            "the higher level goes first, three at most"
        );
        let message = Arc::new(Message::new(
            "",
            "k",
            Default::default(),
            Bytes::from_static(b"x"),
        ));
        assert!(list.load(4, 1, message.clone()));
        assert!(!list.load(4, 1, message.clone()), "loaded once");
        assert!(!list.load(9, 0, message), "gone meanwhile");
        assert_eq!(list.paged(), 3);
        assert_eq!(list.remove_paged(1, 0).map(|e| e.seq), Some(1));
        assert_eq!(list.paged(), 2);
        assert_eq!(seqs(&mut list), vec![2, 3, 4, 0, 5]);
        assert_eq!(list.paged(), 0);
    }

    #[test]
    fn nothing_is_asked_for_while_enough_is_in_memory_ahead() {
        let mut list = ReadyList::new(None, None);
        for seq in 0..3 {
            list.push_back(entry(seq, 0, None));
        }
        list.push_back(paged_entry(3, 0));
        assert!(list.paged_ahead(LIMITS, None).is_empty(), "30 bytes ahead");
        list.pop_front();
        assert_eq!(list.paged_ahead(LIMITS, None).len(), 1);
    }

    #[test]
    fn expired_paged_heads_are_asked_for_first_and_kept_until_read() {
        let start = Instant::now();
        let soon = Some(start + Duration::from_millis(5));
        let mut list = ReadyList::new(Some(1), None);
        let mut expiring = paged_entry(0, 0);
        expiring.expires_at = soon.map(|at| clock().deadline(at));
        list.push_back(expiring);
        for seq in 1..5 {
            list.push_back(entry(seq, 1, None));
        }
        let now = clock().deadline(start + Duration::from_millis(10));
        let wanted = list.paged_ahead(LIMITS, Some(now));
        assert_eq!(wanted.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![0]);
        let mut expired = Vec::new();
        assert!(list.take_expired(now, true, usize::MAX, &mut expired));
        assert!(expired.is_empty(), "kept for its body");
        assert!(!list.take_expired(now, false, usize::MAX, &mut expired));
        assert_eq!(expired.len(), 1);
        assert_eq!(list.paged(), 0);
    }

    #[test]
    fn a_drained_backlog_gives_its_index_memory_back() {
        let mut list = ReadyList::new(None, None);
        for seq in 0..100_000 {
            list.push_back(paged_entry(seq, 0));
        }
        let grown = list.levels[0].capacity();
        while list.len() > 10 {
            list.pop_front();
        }
        assert!(
            list.levels[0].capacity() <= 8192,
            "{grown} -> {}",
            list.levels[0].capacity()
        );
        assert_eq!(seqs(&mut list), (99_990..100_000).collect::<Vec<_>>());
    }
}
