use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn matches(pattern: &str, key: &str) -> bool {
    let mut trie = TopicTrie::new();
    trie.insert(pattern, ()).expect("short pattern");
    let mut out = Vec::new();
    trie.matches(key, &mut out);
    !out.is_empty()
}

/// The words of a key as the exchange reads them: none for the empty key.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// A matcher written from the definition, for comparison: `ok[i][j]` says whether the first
/// `i` pattern words match the first `j` key words.
fn naive(pattern: &str, key: &str) -> bool {
    let (p, k) = (words(pattern), words(key));
    let mut ok = vec![vec![false; k.len() + 1]; p.len() + 1];
    ok[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=k.len() {
            ok[i][j] = match p[i - 1] {
                "#" => ok[i - 1][j] || (j > 0 && ok[i][j - 1]),
                "*" => j > 0 && ok[i - 1][j - 1],
                word => j > 0 && ok[i - 1][j - 1] && k[j - 1] == word,
            };
        }
    }
    ok[p.len()][k.len()]
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
    assert!(matches("#.#", ""));
    assert!(matches("#.#.a.#", "x.a"));
    assert!(matches("#.*.#", "a.b"));
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
    for (pattern, value) in [("*.orange.*", 1), ("*.*.rabbit", 2), ("lazy.#", 3)] {
        trie.insert(pattern, value).expect("short pattern");
    }
    let mut out = Vec::new();
    trie.matches("lazy.orange.rabbit", &mut out);
    out.sort();
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn keys_over_the_word_limit_are_refused_and_the_limit_itself_is_fine() {
    let at_limit = vec!["w"; MAX_TOPIC_WORDS].join(".");
    let over = vec!["w"; MAX_TOPIC_WORDS + 1].join(".");
    let mut trie = TopicTrie::new();
    assert_eq!(trie.insert(&at_limit, 1), Ok(()));
    assert_eq!(
        trie.insert(&over, 2),
        Err(TooManyWords {
            words: MAX_TOPIC_WORDS + 1
        })
    );
    assert!(!trie.remove(&over, &2));
    assert_eq!(check_topic_words(&over).map_err(|e| e.words), Err(257));
    assert_eq!(topic_words(""), 0);
    assert_eq!(topic_words("."), 2);
    let mut out = Vec::new();
    trie.matches(&at_limit, &mut out);
    assert_eq!(out, vec![1]);
}

#[test]
fn a_deep_pattern_is_stored_matched_removed_and_dropped_without_recursion_trouble() {
    // 256 levels, the most a key may have, on a thread with a small stack.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let deep = vec!["level"; MAX_TOPIC_WORDS].join(".");
            let mut trie = TopicTrie::new();
            trie.insert(&deep, 7).expect("at the limit");
            let snapshot = trie.clone();
            let mut out = Vec::new();
            trie.matches(&deep, &mut out);
            assert_eq!(out, vec![7]);
            assert!(trie.remove(&deep, &7));
            assert!(trie.is_empty());
            out.clear();
            snapshot.matches(&deep, &mut out);
            assert_eq!(out, vec![7], "the snapshot still routes");
            drop(snapshot);
        })
        .expect("thread");
    assert!(handle.join().is_ok());
}

#[test]
fn many_hashes_and_a_long_key_cost_no_more_than_one_hash() {
    // The case: `#.#.…(12×).z` and a long key. Exponential matching never finishes.
    let started = Instant::now();
    let mut trie = TopicTrie::new();
    trie.insert(&(["#"; 12].join(".") + ".z"), 1)
        .expect("short");
    let key = vec!["a"; 100_000].join(".");
    let mut out = Vec::new();
    trie.matches(&key, &mut out);
    assert!(out.is_empty());
    trie.matches(&(key + ".z"), &mut out);
    assert_eq!(out, vec![1]);
    // Many `#`s apart keep many nodes active, still one pass over the key.
    trie.insert(&(vec!["#.a"; 120].join(".") + ".#"), 2)
        .expect("short");
    out.clear();
    trie.matches(&vec!["a"; 2_000].join("."), &mut out);
    assert_eq!(out, vec![2]);
    // Generous: only a freeze fails this (linear matching takes milliseconds).
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn removal_prunes_what_it_leaves_empty_and_keeps_shared_prefixes() {
    let mut trie = TopicTrie::new();
    trie.insert("a.b.c", 1).expect("short");
    trie.insert("a.b.c", 1).expect("short");
    trie.insert("a.x", 2).expect("short");
    trie.insert("a.b", 3).expect("short");
    assert_eq!(trie.len(), 4);
    assert!(trie.remove("a.b.c", &1));
    let mut out = Vec::new();
    trie.matches("a.b.c", &mut out);
    assert_eq!(out, vec![1], "one of the two bindings is left");
    assert!(trie.remove("a.b.c", &1));
    assert!(!trie.remove("a.b.c", &1));
    assert!(!trie.remove("a.b.q", &3));
    out.clear();
    trie.matches("a.b.c", &mut out);
    assert!(out.is_empty());
    out.clear();
    trie.matches("a.b", &mut out);
    assert_eq!(out, vec![3]);
    assert!(trie.remove("a.b", &3));
    assert!(trie.remove("a.x", &2));
    assert!(trie.is_empty());
    assert_eq!(trie.root.child_count(), 0, "every node went");
}

#[test]
fn a_clone_is_a_snapshot_that_later_changes_do_not_touch() {
    let mut trie = TopicTrie::new();
    trie.insert("a.*", 1).expect("short");
    let before = trie.clone();
    trie.insert("a.#", 2).expect("short");
    assert!(trie.remove("a.*", &1));
    let mut out = Vec::new();
    before.matches("a.b", &mut out);
    assert_eq!(out, vec![1]);
    out.clear();
    trie.matches("a.b", &mut out);
    assert_eq!(out, vec![2]);
}

fn word() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just(""), Just("*"), Just("#")]
}

fn key_word() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("")]
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(word(), 0..7).prop_map(|w| w.join("."))
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(key_word(), 0..9).prop_map(|w| w.join("."))
}

proptest! {
    #[test]
    fn the_trie_agrees_with_the_definition(
        patterns in prop::collection::vec(pattern(), 1..12),
        removed in prop::collection::vec(any::<bool>(), 12),
        keys in prop::collection::vec(key(), 1..12),
    ) {
        let mut trie = TopicTrie::new();
        for (value, pattern) in patterns.iter().enumerate() {
            trie.insert(pattern, value).expect("short");
        }
        let snapshot = trie.clone();
        let mut kept = BTreeSet::new();
        for (value, pattern) in patterns.iter().enumerate() {
            if removed[value] {
                prop_assert!(trie.remove(pattern, &value));
            } else {
                kept.insert(value);
            }
        }
        for key in &keys {
            let mut out = Vec::new();
            trie.matches(key, &mut out);
            let got: BTreeSet<usize> = out.into_iter().collect();
            let want: BTreeSet<usize> = kept
                .iter()
                .copied()
                .filter(|v| naive(&patterns[*v], key))
                .collect();
            prop_assert_eq!(got, want, "key {:?} patterns {:?}", key, patterns);
            let mut out = Vec::new();
            snapshot.matches(key, &mut out);
            let got: BTreeSet<usize> = out.into_iter().collect();
            let want: BTreeSet<usize> = (0..patterns.len())
                .filter(|v| naive(&patterns[*v], key))
                .collect();
            prop_assert_eq!(got, want, "snapshot, key {:?}", key);
        }
    }
}

#[test]
fn dedupe_drops_repeats_in_small_and_large_active_sets() {
    let nodes: Vec<Node<u8>> = (0..12).map(|_| Node::new(false)).collect();
    for distinct in [2, SMALL_ACTIVE_SET, 12] {
        let mut active: Vec<&Node<u8>> =
            nodes[..distinct].iter().chain(&nodes[..distinct]).collect();
        active.push(&nodes[0]);
        dedupe(&mut active);
        assert_eq!(active.len(), distinct, "{distinct} distinct nodes");
        for node in &nodes[..distinct] {
            assert!(active.iter().any(|a| std::ptr::eq(*a, node)));
        }
    }
}
