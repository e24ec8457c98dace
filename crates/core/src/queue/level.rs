//! One priority level of a queue's ready list, with the long middle of a paged backlog kept
//! compact.
//!
//! A level is a head, a spill and a tail, in sequence order. The spill holds a run of paged
//! entries whose bodies lie in the queue's overflow and that carry nothing else: consecutive
//! sequence numbers, no expiry, never delivered. Such an entry needs only where its body lies
//! and its length, 12 bytes instead of a [`Ready`]'s 48, so a backlog of ten million paged
//! messages takes about 120 MB of index instead of 480.
//!
//! Everything the list looks at closely (deliveries, read-ahead, expiry, lookups by
//! sequence) happens in the head: whenever the head runs short, entries move from the spill's
//! front into it as full [`Ready`] entries, and once the spill is empty the tail (what arrived
//! behind the spill without fitting into it) joins the head. So the tail is only ever
//! non-empty while the spill is, and every entry that leaves the list, or is requeued, is in
//! the head.

use super::MessageSeq;
use super::blocks::Blocks;
use super::ready::{Body, Ready};
use crate::persistence::PagedAt;

/// The head keeps at least this many entries while the spill has more: more than the
/// read-ahead looks at in one go.
pub(super) const HEAD_MIN: usize = 2048;

/// A spilled entry: where its body lies in the overflow, and its length.
#[derive(Debug, Clone, Copy)]
struct Spilled {
    at: PagedAt,
    size: u32,
}

/// The compact run of paged entries: entry `i` has sequence number `first_seq + i`.
#[derive(Default)]
struct Spill {
    first_seq: MessageSeq,
    level: u8,
    entries: Blocks<Spilled>,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `entry` can join the back of the run.
    fn takes(&self, entry: &Ready) -> bool {
        let compact = matches!(entry.body, Body::Paged(_))
            && entry.expires_at.is_none()
            && !entry.redelivered;
        compact && (self.is_empty() || entry.seq == self.first_seq + self.entries.len() as u64)
    }

    fn push(&mut self, entry: &Ready) {
        let Body::Paged(at) = entry.body else {
            return;
        };
        if self.is_empty() {
            self.first_seq = entry.seq;
            self.level = entry.level;
        }
        self.entries.push_back(Spilled {
            at,
            size: entry.size,
        });
    }

    fn ready(&self, seq: MessageSeq, spilled: Spilled) -> Ready {
        Ready {
            seq,
            body: Body::Paged(spilled.at),
            size: spilled.size,
            level: self.level,
            redelivered: false,
            returns: 0,
            expires_at: None,
        }
    }

    fn pop_front(&mut self) -> Option<Ready> {
        let spilled = self.entries.pop_front()?;
        let seq = self.first_seq;
        self.first_seq += 1;
        Some(self.ready(seq, spilled))
    }

    fn pop_back(&mut self) -> Option<Ready> {
        let spilled = self.entries.pop_back()?;
        let seq = self.first_seq + self.entries.len() as u64;
        Some(self.ready(seq, spilled))
    }
}

/// One priority level: head, spill and tail.
#[derive(Default)]
pub(super) struct Level {
    head: Blocks<Ready>,
    spill: Spill,
    tail: Blocks<Ready>,
}

impl Level {
    pub(super) fn is_empty(&self) -> bool {
        self.head.is_empty() && self.spill.is_empty() && self.tail.is_empty()
    }

    /// The next entry to deliver.
    pub(super) fn front(&self) -> Option<&Ready> {
        self.head.front()
    }

    /// The head's entries, front to back: the next ones to deliver, all of them unless a
    /// spill follows (then at least [`HEAD_MIN`]).
    pub(super) fn head(&self) -> impl Iterator<Item = &Ready> {
        self.head.iter()
    }

    /// Adds `entry` behind every other.
    pub(super) fn push_back(&mut self, entry: Ready) {
        if !self.tail.is_empty() {
            self.tail.push_back(entry);
        } else if !self.spill.is_empty() {
            if self.spill.takes(&entry) {
                self.spill.push(&entry);
            } else {
                self.tail.push_back(entry);
            }
        } else if self.head.len() >= HEAD_MIN && self.spill.takes(&entry) {
            self.spill.push(&entry);
        } else {
            self.head.push_back(entry);
        }
    }

    /// Puts `entry` before every other.
    pub(super) fn push_front(&mut self, entry: Ready) {
        self.head.push_front(entry);
    }

    pub(super) fn pop_front(&mut self) -> Option<Ready> {
        let entry = self.head.pop_front();
        self.refill();
        entry
    }

    /// Takes the last entry.
    pub(super) fn pop_back(&mut self) -> Option<Ready> {
        if let Some(entry) = self.tail.pop_back() {
            return Some(entry);
        }
        if let Some(entry) = self.spill.pop_back() {
            return Some(entry);
        }
        self.head.pop_back()
    }

    /// Takes every entry, front to back.
    pub(super) fn take_all(&mut self) -> Vec<Ready> {
        let mut all: Vec<Ready> = self.head.take_all().collect();
        while let Some(entry) = self.spill.pop_front() {
            all.push(entry);
        }
        all.extend(self.tail.take_all());
        all
    }

    /// Puts a requeued entry at its place by sequence (always in the head: it was
    /// delivered from there, ahead of any spill).
    pub(super) fn insert_ordered(&mut self, entry: Ready) {
        self.head.insert_ordered(entry, |entry| entry.seq);
    }

    /// The entry `seq` of the head or the tail.
    pub(super) fn find_mut(&mut self, seq: MessageSeq) -> Option<&mut Ready> {
        if let Some(entry) = self.head.find_mut(&seq, |entry| entry.seq) {
            return Some(entry);
        }
        self.tail.find_mut(&seq, |entry| entry.seq)
    }

    /// Takes entry `seq` of the head or the tail out, if `take` agrees.
    pub(super) fn remove(
        &mut self,
        seq: MessageSeq,
        take: impl Fn(&Ready) -> bool,
    ) -> Option<Ready> {
        let entry = match self.head.remove(&seq, |entry| entry.seq, &take) {
            Some(entry) => Some(entry),
            None => self.tail.remove(&seq, |entry| entry.seq, &take),
        };
        self.refill();
        entry
    }

    /// Keeps the head at least [`HEAD_MIN`] long while the spill has entries, and lets the
    /// tail join the head once the spill is empty.
    fn refill(&mut self) {
        if self.head.len() < HEAD_MIN && !self.spill.is_empty() {
            while self.head.len() < 2 * HEAD_MIN {
                let Some(entry) = self.spill.pop_front() else {
                    break;
                };
                self.head.push_back(entry);
            }
        }
        if self.spill.is_empty() && !self.tail.is_empty() {
            if self.head.is_empty() {
                std::mem::swap(&mut self.head, &mut self.tail);
            } else {
                for entry in self.tail.take_all() {
                    self.head.push_back(entry);
                }
            }
        }
    }

    /// Entries the level's blocks have room for (index memory), for tests.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.head.capacity() + self.tail.capacity()
    }

    /// Entries in the spill, for tests.
    #[cfg(test)]
    pub(super) fn spilled(&self) -> usize {
        self.spill.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paged(seq: MessageSeq) -> Ready {
        Ready {
            seq,
            body: Body::Paged(PagedAt {
                segment: 0,
                offset: u32::try_from(seq).unwrap_or(u32::MAX),
            }),
            size: 10,
            level: 0,
            redelivered: false,
            returns: 0,
            expires_at: None,
        }
    }

    fn seqs(entries: &[Ready]) -> Vec<MessageSeq> {
        entries.iter().map(|entry| entry.seq).collect()
    }

    #[test]
    fn a_long_paged_backlog_goes_to_the_spill_and_comes_back_in_order() {
        let mut level = Level::default();
        let total = 10 * HEAD_MIN as u64;
        for seq in 0..total {
            level.push_back(paged(seq));
        }
        assert_eq!(level.spilled(), total as usize - HEAD_MIN);
        let mut out = Vec::new();
        while let Some(entry) = level.pop_front() {
            assert!(matches!(entry.body, Body::Paged(at) if u64::from(at.offset) == entry.seq));
            out.push(entry);
        }
        assert_eq!(seqs(&out), (0..total).collect::<Vec<_>>());
    }

    #[test]
    fn what_does_not_fit_the_spill_waits_behind_it_and_joins_the_head_after() {
        let mut level = Level::default();
        for seq in 0..(3 * HEAD_MIN as u64) {
            level.push_back(paged(seq));
        }
        // An entry with an expiry, then a gap in the sequence: both go to the tail, and so
        // does everything after them.
        let mut expiring = paged(3 * HEAD_MIN as u64);
        expiring.expires_at = Some(
            super::super::ready::Clock::new(tokio::time::Instant::now())
                .deadline(tokio::time::Instant::now()),
        );
        level.push_back(expiring);
        level.push_back(paged(3 * HEAD_MIN as u64 + 5));
        level.push_back(paged(3 * HEAD_MIN as u64 + 6));
        assert_eq!(level.spilled(), 2 * HEAD_MIN);
        let head: Vec<MessageSeq> = level.head().map(|entry| entry.seq).collect();
        assert_eq!(head, (0..HEAD_MIN as u64).collect::<Vec<_>>());
        let mut out = Vec::new();
        while let Some(entry) = level.pop_front() {
            out.push(entry.seq);
        }
        let mut expected: Vec<MessageSeq> = (0..=(3 * HEAD_MIN as u64)).collect();
        expected.extend([3 * HEAD_MIN as u64 + 5, 3 * HEAD_MIN as u64 + 6]);
        assert_eq!(out, expected);
    }

    #[test]
    fn entries_are_taken_from_the_back_and_put_back_through_every_part() {
        let mut level = Level::default();
        let total = 3 * HEAD_MIN as u64;
        for seq in 0..total {
            level.push_back(paged(seq));
        }
        let mut tail_entry = paged(total);
        tail_entry.redelivered = true;
        level.push_back(tail_entry);
        let mut back = Vec::new();
        for _ in 0..(HEAD_MIN + 10) {
            back.extend(level.pop_back());
        }
        assert_eq!(back.first().map(|e| e.seq), Some(total));
        for entry in back.into_iter().rev() {
            level.push_back(entry);
        }
        let all = level.take_all();
        assert_eq!(seqs(&all), (0..=total).collect::<Vec<_>>());
        assert!(level.front().is_none());
    }

    #[test]
    fn requeued_and_removed_entries_are_found_in_the_head() {
        let mut level = Level::default();
        for seq in 0..(4 * HEAD_MIN as u64) {
            level.push_back(paged(seq));
        }
        let first = level.pop_front().map(|entry| entry.seq);
        assert_eq!(first, Some(0));
        assert!(level.find_mut(5).is_some());
        assert!(level.remove(5, |_| false).is_none());
        assert_eq!(level.remove(5, |_| true).map(|entry| entry.seq), Some(5));
        level.insert_ordered(paged(0));
        let all = level.take_all();
        let mut expected: Vec<MessageSeq> = (0..(4 * HEAD_MIN as u64)).collect();
        expected.retain(|&seq| seq != 5);
        assert_eq!(seqs(&all), expected);
    }
}
