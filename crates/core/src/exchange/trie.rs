//! The topic trie: binding patterns of a topic exchange stored by word, matched against a
//! routing key in one left-to-right pass.
//!
//! Patterns are dot-separated words where `*` stands for exactly one word and `#` for zero or
//! more. Matching walks the trie as a non-deterministic automaton: it keeps the set of trie
//! nodes that the words read so far can have reached, advances every one of them by the next
//! word, and collects the values of the nodes active at the end. A node reached through `#`
//! stays active on every word (its self-loop), the node behind a `#` edge is active as soon as
//! its parent is (`#` matching zero words), and the active set is de-duplicated after each
//! word, so the cost is the number of words times the number of distinct nodes active, however
//! many `#`s the patterns hold. Consecutive `#`s are collapsed into one when a pattern is
//! stored (`#.#` matches exactly what `#` does). Nothing here recurses per word.
//!
//! The trie is persistent: nodes are shared through `Arc`s and their children live in
//! persistent hash maps, so cloning a trie is O(1) and inserting into or removing from a clone
//! copies only the nodes on the pattern's path (O(words × log fan-out)) while the original
//! stays intact for whoever still reads it. This module does not know about exchanges or
//! bindings; [`super::topic`] builds the topic exchange's router on it.

use std::hash::Hash;
use std::sync::Arc;

use super::multiset::Multiset;

/// The most words a topic routing key or binding key may have. An AMQP key is a short string
/// (at most 255 bytes, so at most 256 words) and never reaches it; MQTT topics and filters
/// (one word per level) and STOMP destinations are checked against it by their adapters.
pub const MAX_TOPIC_WORDS: usize = 256;

/// A topic key with more words than [`MAX_TOPIC_WORDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a topic key may have at most {MAX_TOPIC_WORDS} words, this one has {words}")]
pub struct TooManyWords {
    /// How many words the key has.
    pub words: usize,
}

/// The number of words in a topic key: the empty key has none, any other key one more than
/// its dots.
pub fn topic_words(key: &str) -> usize {
    if key.is_empty() {
        0
    } else {
        key.bytes().filter(|b| *b == b'.').count() + 1
    }
}

/// Checks that `key` has at most [`MAX_TOPIC_WORDS`] words.
pub fn check_topic_words(key: &str) -> Result<(), TooManyWords> {
    match topic_words(key) {
        words if words > MAX_TOPIC_WORDS => Err(TooManyWords { words }),
        _ => Ok(()),
    }
}

/// One step of a pattern: a literal word, `*` or `#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge<'a> {
    Word(&'a str),
    Star,
    Hash,
}

/// The steps of `pattern`, with consecutive `#`s collapsed into one.
fn edges(pattern: &str) -> Result<Vec<Edge<'_>>, TooManyWords> {
    check_topic_words(pattern)?;
    let mut edges = Vec::new();
    if pattern.is_empty() {
        return Ok(edges);
    }
    for word in pattern.split('.') {
        let edge = match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            other => Edge::Word(other),
        };
        if edge == Edge::Hash && edges.last() == Some(&Edge::Hash) {
            continue;
        }
        edges.push(edge);
    }
    Ok(edges)
}

/// A trie node: the values of the patterns that end here and the children by next step.
struct Node<T> {
    words: imbl::HashMap<Box<str>, Arc<Node<T>>>,
    star: Option<Arc<Node<T>>>,
    hash: Option<Arc<Node<T>>>,
    values: Multiset<T>,
    /// Reached through a `#` edge: stays active whatever word comes next.
    self_loop: bool,
}

impl<T: Clone + Eq + Hash> Clone for Node<T> {
    fn clone(&self) -> Self {
        Self {
            words: self.words.clone(),
            star: self.star.clone(),
            hash: self.hash.clone(),
            values: self.values.clone(),
            self_loop: self.self_loop,
        }
    }
}

impl<T: Clone + Eq + Hash> Node<T> {
    fn new(self_loop: bool) -> Self {
        Self {
            words: imbl::HashMap::new(),
            star: None,
            hash: None,
            values: Multiset::new(),
            self_loop,
        }
    }

    fn child(&self, edge: Edge<'_>) -> Option<&Arc<Node<T>>> {
        match edge {
            Edge::Word(word) => self.words.get(word),
            Edge::Star => self.star.as_ref(),
            Edge::Hash => self.hash.as_ref(),
        }
    }

    /// The child behind `edge`, created empty when missing.
    fn child_entry(&mut self, edge: Edge<'_>) -> &mut Arc<Node<T>> {
        match edge {
            Edge::Word(word) => self
                .words
                .entry(Box::from(word))
                .or_insert_with(|| Arc::new(Node::new(false))),
            Edge::Star => self.star.get_or_insert_with(|| Arc::new(Node::new(false))),
            Edge::Hash => self.hash.get_or_insert_with(|| Arc::new(Node::new(true))),
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Arc<Node<T>>> {
        match edge {
            Edge::Word(word) => self.words.get_mut(word),
            Edge::Star => self.star.as_mut(),
            Edge::Hash => self.hash.as_mut(),
        }
    }

    fn remove_child(&mut self, edge: Edge<'_>) {
        match edge {
            Edge::Word(word) => {
                self.words.remove(word);
            }
            Edge::Star => self.star = None,
            Edge::Hash => self.hash = None,
        }
    }

    fn child_count(&self) -> usize {
        self.words.len() + usize::from(self.star.is_some()) + usize::from(self.hash.is_some())
    }
}

/// Adds `node` to `active`, with the node behind its `#` edge (that `#` matching zero words).
fn activate<'a, T>(active: &mut Vec<&'a Node<T>>, node: &'a Node<T>) {
    active.push(node);
    let mut current = node;
    // Consecutive `#`s are collapsed, so this runs at most once; the loop keeps it right for
    // any shape without recursing.
    while let Some(hash) = &current.hash {
        active.push(hash);
        current = hash;
    }
}

/// Up to this many active nodes, repeats are found by comparing each with those kept before
/// it (no sort); beyond it, by sorting by address.
const SMALL_ACTIVE_SET: usize = 8;

/// Drops repeated nodes from `active`.
fn dedupe<T>(active: &mut Vec<&Node<T>>) {
    match active.len() {
        0 | 1 => {}
        2..=SMALL_ACTIVE_SET => {
            let mut kept = 0;
            for i in 0..active.len() {
                let node = active[i];
                if !active[..kept].iter().any(|k| std::ptr::eq(*k, node)) {
                    active[kept] = node;
                    kept += 1;
                }
            }
            active.truncate(kept);
        }
        _ => {
            active.sort_unstable_by_key(|node| std::ptr::from_ref::<Node<T>>(node) as usize);
            active.dedup_by(|a, b| std::ptr::eq(*a, *b));
        }
    }
}

/// A persistent trie of topic patterns, each holding values of type `T` (a value stored twice
/// under one pattern is counted, and matched once). Cloning is O(1); see the module docs.
/// Reusable by adapters that need topic matching of their own.
pub struct TopicTrie<T> {
    root: Arc<Node<T>>,
    len: usize,
}

impl<T> Clone for TopicTrie<T> {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<T> std::fmt::Debug for TopicTrie<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTrie").field("len", &self.len).finish()
    }
}

impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Arc::new(Node::new(false)),
            len: 0,
        }
    }

    /// How many (pattern, value) pairs the trie holds, repeats included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern`. Nodes shared with clones of this trie are copied, never
    /// changed.
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<(), TooManyWords> {
        let edges = edges(pattern)?;
        let mut slot = &mut self.root;
        for edge in &edges {
            slot = Arc::make_mut(slot).child_entry(*edge);
        }
        Arc::make_mut(slot).values.add(value);
        self.len += 1;
        Ok(())
    }

    /// Removes one `value` stored under `pattern`, and the nodes left empty; returns whether
    /// there was one.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let Ok(edges) = edges(pattern) else {
            return false;
        };
        let Some(cut) = self.removal_cut(&edges, value) else {
            return false;
        };
        let mut slot = &mut self.root;
        let depth = cut.unwrap_or(edges.len() + 1);
        for edge in &edges[..depth - 1] {
            let Some(next) = Arc::make_mut(slot).child_mut(*edge) else {
                return false;
            };
            slot = next;
        }
        let node = Arc::make_mut(slot);
        match cut {
            Some(depth) => node.remove_child(edges[depth - 1]),
            None => {
                node.values.remove(value);
            }
        }
        self.len -= 1;
        true
    }

    /// Where a removal of `value` under the pattern `edges` changes the trie: `None` when
    /// `value` is not there; `Some(None)` when only the leaf's values change; `Some(Some(d))`
    /// when the node at depth `d` (and everything under it) becomes empty and goes.
    fn removal_cut(&self, edges: &[Edge<'_>], value: &T) -> Option<Option<usize>> {
        let mut path: Vec<&Node<T>> = Vec::with_capacity(edges.len() + 1);
        let mut node = &*self.root;
        path.push(node);
        for edge in edges {
            node = node.child(*edge)?;
            path.push(node);
        }
        let count = node.values.count(value);
        if count == 0 {
            return None;
        }
        let leaf_empties = count == 1 && node.values.distinct() == 1 && node.child_count() == 0;
        if edges.is_empty() || !leaf_empties {
            return Some(None);
        }
        let mut cut = edges.len();
        while cut > 1 {
            let parent = path[cut - 1];
            if parent.values.is_empty() && parent.child_count() == 1 {
                cut -= 1;
            } else {
                break;
            }
        }
        Some(Some(cut))
    }

    /// Appends every value whose pattern matches `key` to `out`: each value once per trie
    /// node that matches, so a value under several matching patterns may appear more than once.
    pub fn matches(&self, key: &str, out: &mut Vec<T>) {
        // One buffer for the whole match: the nodes active so far, followed by those the next
        // word reaches, which then replace them. With room for a few of each, a usual match
        // allocates once.
        let mut nodes: Vec<&Node<T>> = Vec::with_capacity(2 * SMALL_ACTIVE_SET);
        activate(&mut nodes, &self.root);
        if key.is_empty() {
            dedupe(&mut nodes);
        } else {
            for word in key.split('.') {
                let active = nodes.len();
                for i in 0..active {
                    let node = nodes[i];
                    if let Some(child) = node.words.get(word) {
                        activate(&mut nodes, child);
                    }
                    if let Some(star) = &node.star {
                        activate(&mut nodes, star);
                    }
                    if node.self_loop {
                        activate(&mut nodes, node);
                    }
                }
                nodes.drain(..active);
                dedupe(&mut nodes);
                if nodes.is_empty() {
                    return;
                }
            }
        }
        for node in nodes {
            out.extend(node.values.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests;
