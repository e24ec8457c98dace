//! A double-ended queue kept in blocks of at most [`BLOCK`] entries, for a queue's ready list.
//!
//! A `VecDeque` grows by doubling, and each time it does, the old and the new buffer are
//! both resident while the entries are copied: a backlog of millions of entries briefly takes
//! three times its size (with an allocator that cannot `mremap`), and a drained one keeps its
//! capacity until shrunk, which copies again. Here the entries of a long backlog sit in blocks
//! of `BLOCK` entries each: growing allocates one more block, draining frees the emptied ones,
//! and nothing is ever copied whole. A short list is one block that grows as a `VecDeque`
//! does, so a queue with a handful of messages does not hold a whole block.
//!
//! Entries are kept in the order of a key (a queue's message sequence numbers), which the
//! lookups ([`Blocks::find_mut`], [`Blocks::remove`], [`Blocks::insert_ordered`]) rely on.

use std::collections::VecDeque;

/// Entries per block. At 48 bytes an entry, a block is 48 KiB.
pub(super) const BLOCK: usize = 1024;

/// The entries, in blocks; no block is empty.
pub(super) struct Blocks<T> {
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Self {
            blocks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Blocks<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Entries the blocks have room for, all together.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.blocks.iter().map(VecDeque::capacity).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.blocks.front().and_then(VecDeque::front)
    }

    pub(super) fn push_back(&mut self, entry: T) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BLOCK => block.push_back(entry),
            Some(_) => {
                let mut block = VecDeque::with_capacity(BLOCK);
                block.push_back(entry);
                self.blocks.push_back(block);
            }
            None => self.blocks.push_back(VecDeque::from([entry])),
        }
        self.len += 1;
    }

    pub(super) fn push_front(&mut self, entry: T) {
        match self.blocks.front_mut() {
            Some(block) if block.len() < BLOCK => block.push_front(entry),
            _ => self.blocks.push_front(VecDeque::from([entry])),
        }
        self.len += 1;
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let block = self.blocks.front_mut()?;
        let entry = block.pop_front()?;
        if block.is_empty() {
            self.blocks.pop_front();
        }
        self.len -= 1;
        Some(entry)
    }

    pub(super) fn pop_back(&mut self) -> Option<T> {
        let block = self.blocks.back_mut()?;
        let entry = block.pop_back()?;
        if block.is_empty() {
            self.blocks.pop_back();
        }
        self.len -= 1;
        Some(entry)
    }

    /// The entries, front to back.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.blocks.iter().flatten()
    }

    /// Takes every entry, front to back, leaving the list empty.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = T> {
        self.len = 0;
        std::mem::take(&mut self.blocks).into_iter().flatten()
    }

    /// The block and position of the entry whose key is `key`, if there is one.
    fn locate<K: Ord>(&self, key: &K, key_of: impl Fn(&T) -> K) -> Option<(usize, usize)> {
        let block = self
            .blocks
            .partition_point(|block| block.back().is_some_and(|last| key_of(last) < *key));
        let index = self
            .blocks
            .get(block)?
            .binary_search_by(|entry| key_of(entry).cmp(key))
            .ok()?;
        Some((block, index))
    }

    /// The entry whose key is `key`.
    pub(super) fn find_mut<K: Ord>(&mut self, key: &K, key_of: impl Fn(&T) -> K) -> Option<&mut T> {
        let (block, index) = self.locate(key, key_of)?;
        self.blocks.get_mut(block)?.get_mut(index)
    }

    /// Takes out the entry whose key is `key`, if `take` agrees to it.
    pub(super) fn remove<K: Ord>(
        &mut self,
        key: &K,
        key_of: impl Fn(&T) -> K,
        take: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        let (block_index, index) = self.locate(key, key_of)?;
        let block = self.blocks.get_mut(block_index)?;
        if !take(block.get(index)?) {
            return None;
        }
        let entry = block.remove(index)?;
        if block.is_empty() {
            self.blocks.remove(block_index);
        }
        self.len -= 1;
        Some(entry)
    }

    /// Puts `entry` at its place by key, behind the entries with smaller keys. A block that
    /// grows to twice [`BLOCK`] this way is split in two.
    pub(super) fn insert_ordered<K: Ord>(&mut self, entry: T, key_of: impl Fn(&T) -> K) {
        let key = key_of(&entry);
        let at = self
            .blocks
            .partition_point(|block| block.back().is_some_and(|last| key_of(last) < key));
        let Some(block) = self.blocks.get_mut(at) else {
            // Behind every entry.
            self.push_back(entry);
            return;
        };
        let index = block.partition_point(|other| key_of(other) < key);
        block.insert(index, entry);
        if block.len() >= 2 * BLOCK {
            let back_half = block.split_off(BLOCK);
            self.blocks.insert(at + 1, back_half);
        }
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(blocks: &Blocks<u64>) -> Vec<u64> {
        blocks.iter().copied().collect()
    }

    #[test]
    fn a_long_list_is_kept_in_full_blocks_and_keeps_its_order() {
        let mut blocks = Blocks::default();
        for key in 0..(3 * BLOCK as u64 + 5) {
            blocks.push_back(key);
        }
        assert_eq!(blocks.len(), 3 * BLOCK + 5);
        assert_eq!(blocks.blocks.len(), 4);
        assert!(blocks.blocks.iter().take(3).all(|b| b.len() == BLOCK));
        assert_eq!(
            keys(&blocks),
            (0..(3 * BLOCK as u64 + 5)).collect::<Vec<_>>()
        );
        for key in 0..(BLOCK as u64 + 1) {
            assert_eq!(blocks.pop_front(), Some(key));
        }
        assert_eq!(blocks.blocks.len(), 3, "the emptied block is freed");
        assert_eq!(blocks.front(), Some(&(BLOCK as u64 + 1)));
        assert_eq!(blocks.pop_back(), Some(3 * BLOCK as u64 + 4));
        assert_eq!(blocks.len(), 2 * BLOCK + 3);
    }

    #[test]
    fn entries_are_found_removed_and_inserted_by_key() {
        let mut blocks = Blocks::default();
        for key in (0..(2 * BLOCK as u64)).map(|k| k * 2) {
            blocks.push_back(key);
        }
        let key_of = |k: &u64| *k;
        assert_eq!(blocks.find_mut(&2048, key_of).copied(), Some(2048));
        assert_eq!(blocks.find_mut(&2049, key_of), None);
        assert_eq!(blocks.remove(&2048, key_of, |_| false), None);
        assert_eq!(blocks.remove(&2048, key_of, |_| true), Some(2048));
        assert_eq!(blocks.find_mut(&2048, key_of), None);
        blocks.insert_ordered(2049, key_of);
        blocks.insert_ordered(1, key_of);
        blocks.insert_ordered(u64::MAX, key_of);
        let mut expected: Vec<u64> = (0..(2 * BLOCK as u64)).map(|k| k * 2).collect();
        expected.retain(|&k| k != 2048);
        expected.extend([2049, 1, u64::MAX]);
        expected.sort_unstable();
        assert_eq!(keys(&blocks), expected);
        assert_eq!(blocks.len(), expected.len());
    }

    #[test]
    fn a_block_grown_by_insertions_is_split() {
        let mut blocks = Blocks::default();
        let key_of = |k: &u64| *k;
        for key in 0..(2 * BLOCK as u64) {
            blocks.insert_ordered(key * 2 + 1, key_of);
        }
        blocks.push_front(0);
        for key in 0..(2 * BLOCK as u64) {
            blocks.insert_ordered(key * 2 + 2, key_of);
        }
        assert!(
            blocks
                .blocks
                .iter()
                .all(|b| !b.is_empty() && b.len() < 2 * BLOCK)
        );
        assert_eq!(keys(&blocks), (0..=(4 * BLOCK as u64)).collect::<Vec<_>>());
        let all: Vec<u64> = blocks.take_all().collect();
        assert_eq!(all.len(), 4 * BLOCK + 1);
        assert!(blocks.is_empty() && blocks.front().is_none());
    }
}
