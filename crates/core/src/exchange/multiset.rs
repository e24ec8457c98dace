//! A persistent multiset: values with how many times each was added, cheap to clone (clones
//! share their storage and copy only what a later change touches). Routers keep their
//! binding targets in it, because one target may be bound several times (with other keys or
//! arguments) and must stay until its last binding goes.

use std::hash::Hash;

/// Values with counts, in a persistent hash map.
pub struct Multiset<T> {
    counts: imbl::HashMap<T, usize>,
}

impl<T: Clone + Eq + Hash> Clone for Multiset<T> {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
        }
    }
}

impl<T: Clone + Eq + Hash> Default for Multiset<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash> Multiset<T> {
    /// An empty multiset.
    pub fn new() -> Self {
        Self {
            counts: imbl::HashMap::new(),
        }
    }

    /// Adds one `value`.
    pub fn add(&mut self, value: T) {
        *self.counts.entry(value).or_insert(0) += 1;
    }

    /// Removes one `value`; returns whether there was one.
    pub fn remove(&mut self, value: &T) -> bool {
        match self.counts.get_mut(value) {
            None => false,
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(value);
                true
            }
        }
    }

    /// How many times `value` was added and not removed.
    pub fn count(&self, value: &T) -> usize {
        self.counts.get(value).copied().unwrap_or(0)
    }

    /// How many distinct values it holds.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Each distinct value once.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.counts.keys()
    }
}
