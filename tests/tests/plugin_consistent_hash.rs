//! The `x-consistent-hash` plugin with lapin against the real binary: messages spread over the
//! bound queues in proportion to the binding weights, adding a queue moves only the keys it
//! takes, and declarations and bindings are refused as RabbitMQ refuses them.

mod common;

use std::collections::HashMap;

use common::*;
use junction_tests::Broker;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

const TYPE: &str = "x-consistent-hash";

async fn hash_exchange(ch: &Channel, name: &str, arguments: FieldTable) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Custom(TYPE.into()),
            ExchangeDeclareOptions::default(),
            arguments,
        ),
    )
    .await
}

/// Publishes one message per routing key `key-0` .. `key-{count-1}`.
async fn publish_keys(ch: &Channel, exchange: &str, count: usize) {
    for n in 0..count {
        publish(ch, exchange, &format!("key-{n}"), b"").await;
    }
}

/// Drains `queue` (which holds `expected` messages), returning their routing keys.
async fn routing_keys(ch: &Channel, queue: &str, expected: u32) -> Vec<String> {
    let mut consumer = consume_with(
        ch,
        queue,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..expected {
        keys.push(next(&mut consumer).await.routing_key.to_string());
    }
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag(), Default::default()),
    )
    .await
    .expect("basic.cancel");
    keys
}

#[tokio::test]
async fn messages_spread_over_queues_in_proportion_to_the_binding_weights() {
    const KEYS: usize = 100_000;
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    hash_exchange(&ch, "spread", FieldTable::default())
        .await
        .expect("declare");
    let weights = [("w1", 1), ("w2", 2), ("w3", 3), ("w4", 4)];
    for (queue, weight) in weights {
        declare(&ch, queue).await;
        bind(&ch, queue, "spread", &weight.to_string())
            .await
            .expect("bind");
    }
    publish_keys(&ch, "spread", KEYS).await;
    let mut total = 0;
    for (queue, weight) in weights {
        let count = ready(&ch, queue).await;
        total += count as usize;
        let share = f64::from(count) / KEYS as f64;
        let expected = f64::from(weight) / 10.0;
        assert!(
            (share - expected).abs() < 0.01,
            "{queue}: {count} messages, share {share:.4}, expected {expected}"
        );
    }
    assert_eq!(total, KEYS, "every message goes to exactly one queue");
}

#[tokio::test]
async fn adding_a_queue_moves_only_the_keys_it_takes() {
    const KEYS: usize = 10_000;
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    hash_exchange(&ch, "grow", FieldTable::default())
        .await
        .expect("declare");
    let queues = ["g1", "g2", "g3", "g4"];
    for queue in &queues[..3] {
        declare(&ch, queue).await;
        bind(&ch, queue, "grow", "10").await.expect("bind");
    }
    let place = async |queues: &[&str]| {
        publish_keys(&ch, "grow", KEYS).await;
        let mut placed = HashMap::new();
        for queue in queues {
            let count = ready(&ch, queue).await;
            for key in routing_keys(&ch, queue, count).await {
                placed.insert(key, queue.to_string());
            }
        }
        assert_eq!(placed.len(), KEYS, "every key placed once");
        placed
    };
    let before = place(&queues[..3]).await;
    declare(&ch, "g4").await;
    bind(&ch, "g4", "grow", "10").await.expect("bind");
    let after = place(&queues).await;
    let moved: Vec<&String> = before
        .keys()
        .filter(|key| before[*key] != after[*key])
        .collect();
    assert!(
        moved.iter().all(|key| after[*key] == "g4"),
        "a key that moved went to the new queue"
    );
    let share = moved.len() as f64 / KEYS as f64;
    assert!(
        (share - 0.25).abs() < 0.02,
        "the new queue took {share:.4} of the keys, expected 0.25"
    );
}

#[tokio::test]
async fn a_header_named_by_hash_header_decides_the_queue() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "hash-header".into(),
        AMQPValue::LongString(LongString::from("device")),
    );
    hash_exchange(&ch, "by-device", arguments)
        .await
        .expect("declare");
    for queue in ["d1", "d2", "d3"] {
        declare(&ch, queue).await;
        bind(&ch, queue, "by-device", "1").await.expect("bind");
    }
    // One device's readings, each with a different routing key, land in one queue.
    for n in 0..200 {
        let mut headers = FieldTable::default();
        headers.insert(
            "device".into(),
            AMQPValue::LongString(LongString::from("sensor-7")),
        );
        let properties = lapin::BasicProperties::default().with_headers(headers);
        publish_with(&ch, "by-device", &format!("reading-{n}"), b"", properties).await;
    }
    let mut counts = Vec::new();
    for queue in ["d1", "d2", "d3"] {
        counts.push(ready(&ch, queue).await);
    }
    counts.sort();
    assert_eq!(counts, [0, 0, 200]);
}

#[tokio::test]
async fn bad_weights_and_arguments_are_refused_with_precondition_failed() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    hash_exchange(&ch, "checked", FieldTable::default())
        .await
        .expect("declare");
    declare(&ch, "cq").await;
    for weight in ["0", "-1", "10001", "heavy"] {
        let ch = channel(&connection).await;
        assert_code(
            bind(&ch, "cq", "checked", weight).await,
            code::PRECONDITION_FAILED,
            weight,
        );
    }
    let mut both = FieldTable::default();
    both.insert("hash-header".into(), AMQPValue::LongString("h".into()));
    both.insert(
        "hash-property".into(),
        AMQPValue::LongString("message_id".into()),
    );
    let ch = channel(&connection).await;
    assert_code(
        hash_exchange(&ch, "both", both).await,
        code::PRECONDITION_FAILED,
        "hash-header and hash-property",
    );
    let mut unsupported = FieldTable::default();
    unsupported.insert(
        "hash-property".into(),
        AMQPValue::LongString("app_id".into()),
    );
    let ch = channel(&connection).await;
    assert_code(
        hash_exchange(&ch, "unsupported", unsupported).await,
        code::PRECONDITION_FAILED,
        "unsupported property",
    );
}
