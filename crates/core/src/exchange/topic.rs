//! The topic exchange: binding keys are dot-separated patterns where `*` matches exactly one word
//! and `#` matches zero or more words. Bindings are compiled into a [`TopicTrie`], so a publish
//! walks the trie once instead of testing every pattern.

use std::collections::HashMap;

use super::{Binding, BindingTarget, ExchangeType, Router};
use crate::message::Message;

/// A trie of topic patterns, each holding values of type `T`. Reusable by adapters that need
/// topic matching of their own (MQTT retained messages, for instance).
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    words: HashMap<Box<str>, TopicTrie<T>>,
    star: Option<Box<TopicTrie<T>>>,
    hash: Option<Box<TopicTrie<T>>>,
    values: Vec<T>,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

/// Splits `key` into its first word and the rest (`None` when no words remain).
fn split_first(key: &str) -> (&str, Option<&str>) {
    match key.find('.') {
        Some(i) => (&key[..i], Some(&key[i + 1..])),
        None => (key, None),
    }
}

/// The words of a key; the empty key has no words.
fn words_of(key: &str) -> Option<&str> {
    if key.is_empty() { None } else { Some(key) }
}

impl<T: Clone> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `pattern`.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = self;
        let mut rest = words_of(pattern);
        while let Some(key) = rest {
            let (word, tail) = split_first(key);
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                _ => node.words.entry(word.into()).or_default(),
            };
            rest = tail;
        }
        node.values.push(value);
    }

    /// Appends every value whose pattern matches `key` to `out` (a value may appear more than
    /// once when several of its patterns match).
    pub fn matches(&self, key: &str, out: &mut Vec<T>) {
        self.collect(words_of(key), out);
    }

    fn collect(&self, rest: Option<&str>, out: &mut Vec<T>) {
        let Some(key) = rest else {
            out.extend(self.values.iter().cloned());
            if let Some(hash) = &self.hash {
                hash.collect(None, out);
            }
            return;
        };
        let (word, tail) = split_first(key);
        if let Some(child) = self.words.get(word) {
            child.collect(tail, out);
        }
        if let Some(star) = &self.star {
            star.collect(tail, out);
        }
        if let Some(hash) = &self.hash {
            // `#` swallows zero words, then one, two, ... up to all of them.
            hash.collect(rest, out);
            let mut remaining = tail;
            loop {
                hash.collect(remaining, out);
                match remaining {
                    Some(k) => remaining = split_first(k).1,
                    None => break,
                }
            }
        }
    }
}

/// Pattern routing through a [`TopicTrie`].
pub struct TopicExchange;

struct TopicRouter {
    trie: TopicTrie<BindingTarget>,
}

impl Router for TopicRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) {
        self.trie.matches(&message.routing_key, out);
    }
}

impl ExchangeType for TopicExchange {
    fn name(&self) -> &str {
        "topic"
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut trie = TopicTrie::new();
        for binding in bindings {
            trie.insert(&binding.routing_key, binding.target.clone());
        }
        Box::new(TopicRouter { trie })
    }
}

#[cfg(test)]
mod tests {
    use super::TopicTrie;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::new();
        trie.insert(pattern, ());
        let mut out = Vec::new();
        trie.matches(key, &mut out);
        !out.is_empty()
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.c"));
        assert!(!matches("a.*.c", "a.b.b.c"));
        assert!(matches("*", "a"));
        assert!(!matches("*", "a.b"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(matches("kern.#", "kern"));
        assert!(matches("kern.#", "kern.critical"));
        assert!(matches("kern.#", "kern.a.b.c"));
        assert!(!matches("kern.#", "auth.kern"));
        assert!(matches("#", ""));
        assert!(matches("#", "a.b.c"));
        assert!(matches("#.c", "c"));
        assert!(matches("a.#.c", "a.c"));
        assert!(matches("a.#.c", "a.b.b.c"));
        assert!(!matches("a.#.c", "a.b.b.d"));
        assert!(matches("#.*", "a"));
        assert!(!matches("#.*", ""));
    }

    #[test]
    fn literal_words_must_be_equal() {
        assert!(matches("quick.orange.rabbit", "quick.orange.rabbit"));
        assert!(!matches("quick.orange.rabbit", "quick.orange.fox"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("a..b", "a..b"));
    }

    #[test]
    fn several_patterns_collect_all_values() {
        let mut trie = TopicTrie::new();
        trie.insert("*.orange.*", 1);
        trie.insert("*.*.rabbit", 2);
        trie.insert("lazy.#", 3);
        let mut out = Vec::new();
        trie.matches("lazy.orange.rabbit", &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 3]);
    }
}
