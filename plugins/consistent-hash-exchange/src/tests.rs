use std::collections::HashMap;

use junction_core::{Exchange, FieldValue, Properties};

use super::*;

fn target(name: &str) -> BindingTarget {
    let spec = ExchangeSpec::new(name, TYPE_NAME);
    let handler = Arc::new(ConsistentHash {
        on: HashOn::RoutingKey,
    });
    BindingTarget::Exchange(Arc::new(Exchange::new(spec, handler)))
}

fn binding(target: &BindingTarget, weight: u32) -> Binding {
    Binding::new(weight.to_string(), FieldTable::new(), target.clone())
}

fn handler() -> ConsistentHash {
    ConsistentHash {
        on: HashOn::RoutingKey,
    }
}

fn message(key: &str) -> Message {
    Message::new("e", key, Properties::default(), bytes::Bytes::new())
}

/// Where each of `keys` routing keys goes, by target name.
fn placement(router: &dyn Router, keys: usize) -> Vec<String> {
    (0..keys)
        .map(|n| {
            let mut out = Vec::new();
            router.route(&message(&format!("key-{n}")), &mut out);
            assert_eq!(out.len(), 1, "one target per message");
            out[0].name().to_owned()
        })
        .collect()
}

fn counts(placement: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for name in placement {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    counts
}

const KEYS: usize = 100_000;

#[test]
fn messages_spread_in_proportion_to_the_weights() {
    let targets: Vec<BindingTarget> = ["a", "b", "c", "d"].iter().map(|n| target(n)).collect();
    let weights = [1, 2, 3, 4];
    let bindings: Vec<Binding> = targets
        .iter()
        .zip(weights)
        .map(|(t, w)| binding(t, w))
        .collect();
    let placed = placement(handler().compile(&bindings).as_ref(), KEYS);
    let counts = counts(&placed);
    for (name, weight) in ["a", "b", "c", "d"].iter().zip(weights) {
        let share = counts[name] as f64 / KEYS as f64;
        let expected = f64::from(weight) / 10.0;
        assert!(
            (share - expected).abs() < 0.01,
            "{name}: share {share:.4}, expected {expected}"
        );
    }
}

#[test]
fn adding_a_queue_moves_only_the_keys_it_takes() {
    let targets: Vec<BindingTarget> = ["a", "b", "c", "d"].iter().map(|n| target(n)).collect();
    let mut bindings: Vec<Binding> = targets[..3].iter().map(|t| binding(t, 1)).collect();
    let before = placement(handler().compile(&bindings).as_ref(), KEYS);
    bindings.push(binding(&targets[3], 1));
    let after = placement(handler().compile(&bindings).as_ref(), KEYS);
    let moved: Vec<usize> = (0..KEYS).filter(|&n| before[n] != after[n]).collect();
    assert!(
        moved.iter().all(|&n| after[n] == "d"),
        "only to the new queue"
    );
    let share = moved.len() as f64 / KEYS as f64;
    assert!((share - 0.25).abs() < 0.01, "moved {share:.4}");
    // Removing it again puts every key back where it was.
    bindings.pop();
    assert_eq!(
        placement(handler().compile(&bindings).as_ref(), KEYS),
        before
    );
}

#[test]
fn the_order_of_the_bindings_does_not_matter() {
    let targets: Vec<BindingTarget> = ["a", "b", "c"].iter().map(|n| target(n)).collect();
    let mut bindings: Vec<Binding> = targets.iter().map(|t| binding(t, 5)).collect();
    let forward = placement(handler().compile(&bindings).as_ref(), 10_000);
    bindings.reverse();
    assert_eq!(
        placement(handler().compile(&bindings).as_ref(), 10_000),
        forward
    );
}

#[test]
fn a_header_or_a_property_can_be_hashed_instead_of_the_routing_key() {
    let targets: Vec<BindingTarget> = ["a", "b", "c"].iter().map(|n| target(n)).collect();
    let bindings: Vec<Binding> = targets.iter().map(|t| binding(t, 1)).collect();
    let mut arguments = FieldTable::new();
    arguments.insert("hash-header", FieldValue::string("user"));
    let on_header = ConsistentHash {
        on: hash_on(&arguments).expect("valid"),
    }
    .compile(&bindings);
    let with_user = |key: &str, user: &str| {
        let mut headers = FieldTable::new();
        headers.insert("user", FieldValue::string(user));
        let properties = {
            let mut properties = Properties::default();
            properties.headers = Some(headers);
            properties
        };
        Message::new("e", key, properties, bytes::Bytes::new())
    };
    let routed = |router: &dyn Router, message: &Message| {
        let mut out = Vec::new();
        router.route(message, &mut out);
        out[0].name().to_owned()
    };
    // The routing key is ignored: one user always lands in one place.
    for user in ["ann", "bob", "cy"] {
        let first = routed(on_header.as_ref(), &with_user("k1", user));
        for key in ["k2", "k3", "k4"] {
            assert_eq!(routed(on_header.as_ref(), &with_user(key, user)), first);
        }
    }
    let mut arguments = FieldTable::new();
    arguments.insert("hash-property", FieldValue::string("message_id"));
    let on_id = ConsistentHash {
        on: hash_on(&arguments).expect("valid"),
    }
    .compile(&bindings);
    let with_id = |key: &str, id: &str| {
        let properties = {
            let mut properties = Properties::default();
            properties.message_id = Some(id.to_owned());
            properties
        };
        Message::new("e", key, properties, bytes::Bytes::new())
    };
    let spread: std::collections::HashSet<String> = (0..100)
        .map(|n| routed(on_id.as_ref(), &with_id("same key", &format!("id-{n}"))))
        .collect();
    assert_eq!(spread.len(), 3, "message ids spread over every queue");
}

#[test]
fn declarations_and_bindings_are_checked_as_rabbitmq_checks_them() {
    let mut both = FieldTable::new();
    both.insert("hash-header", FieldValue::string("h"));
    both.insert("hash-property", FieldValue::string("message_id"));
    let error = hash_on(&both).expect_err("refused");
    assert!(error.to_string().contains("mutually exclusive"), "{error}");
    let mut unknown = FieldTable::new();
    unknown.insert("hash-property", FieldValue::string("user_id"));
    let error = hash_on(&unknown).expect_err("refused");
    assert!(
        error.to_string().contains("Unsupported property: user_id"),
        "{error}"
    );
    let handler = handler();
    let empty = FieldTable::new();
    assert!(handler.validate_binding("1", &empty).is_ok());
    assert!(handler.validate_binding("10000", &empty).is_ok());
    for (key, says) in [
        ("0", "greater than 0"),
        ("-3", "greater than 0"),
        ("10001", "must not exceed 10000"),
        ("ten", "must be an integer"),
        ("", "must be an integer"),
    ] {
        let error = handler.validate_binding(key, &empty).expect_err(key);
        assert!(error.to_string().contains(says), "{key}: {error}");
    }
}
