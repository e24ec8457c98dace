//! The `x-delayed-message` plugin with lapin against the real binary: delayed messages arrive
//! in due order after their delays, with `x-delay` negated; confirmed persistent delayed
//! messages survive a SIGKILL and arrive after the restart, none before it is due.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use junction_tests::Broker;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

async fn delayed_exchange(ch: &Channel, name: &str, inner: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(LongString::from(inner)),
    );
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await
    .expect("declare the delayed exchange");
}

async fn durable_bound_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    declare_durable(ch, queue, FieldTable::default())
        .await
        .expect("declare");
    bind(ch, queue, exchange, key).await.expect("bind");
}

/// Persistent, with `x-delay` and the wall-clock time (ms) it is due, in a header.
fn delayed(delay_ms: i64) -> BasicProperties {
    let due = now_ms() + delay_ms;
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms));
    headers.insert("due".into(), AMQPValue::LongLongInt(due));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Receives `count` messages from `queue`, acking each, returning (body, arrival ms, delivery).
async fn receive(ch: &Channel, queue: &str, count: usize) -> Vec<(String, i64, i64, i64)> {
    let mut consumer = consume_with(ch, queue, "", BasicConsumeOptions::default()).await;
    let mut got = Vec::new();
    for _ in 0..count {
        let delivery = next(&mut consumer).await;
        let arrived = now_ms();
        let due = header(&delivery, "due").expect("due header");
        let x_delay = header(&delivery, "x-delay").expect("x-delay header");
        within("ack", delivery.ack(Default::default()))
            .await
            .expect("ack");
        got.push((text(&delivery.data), arrived, due, x_delay));
    }
    got
}

#[tokio::test]
async fn delayed_messages_arrive_in_due_order_after_their_delays() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    confirm_select(&ch).await;
    delayed_exchange(&ch, "later", "direct").await;
    durable_bound_queue(&ch, "due-order", "later", "jobs").await;
    let started = Instant::now();
    for (body, delay) in [("d400", 400), ("d100", 100), ("d300", 300), ("d200", 200)] {
        let confirmation =
            publish_confirmed(&ch, "later", "jobs", body.as_bytes(), delayed(delay)).await;
        assert!(
            matches!(confirmation, Confirmation::Ack(_)),
            "{body} confirmed"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "publishing was quick"
    );
    assert_eq!(
        ready(&ch, "due-order").await,
        0,
        "nothing arrives before its time"
    );
    let got = receive(&ch, "due-order", 4).await;
    let bodies: Vec<&str> = got.iter().map(|(body, ..)| body.as_str()).collect();
    assert_eq!(bodies, ["d100", "d200", "d300", "d400"]);
    for (body, arrived, due, x_delay) in &got {
        assert!(arrived >= due, "{body} arrived {} ms early", due - arrived);
        let delay: i64 = body[1..].parse().expect("delay");
        assert_eq!(*x_delay, -delay, "{body}: x-delay is negated on release");
    }
    // A message without x-delay routes at once: by its confirm it is in the queue (a delayed
    // one would be confirmed once stored, with nothing ready).
    let confirmation =
        publish_confirmed(&ch, "later", "jobs", b"now", BasicProperties::default()).await;
    assert!(
        matches!(confirmation, Confirmation::Ack(_)),
        "now confirmed"
    );
    assert_eq!(ready(&ch, "due-order").await, 1);
}

#[tokio::test]
async fn confirmed_delayed_messages_survive_a_sigkill() {
    let broker = Broker::start();
    let data_dir = broker.data_dir.clone();
    {
        let (connection, ch) = open(&broker).await;
        confirm_select(&ch).await;
        delayed_exchange(&ch, "survivor", "fanout").await;
        durable_bound_queue(&ch, "after-crash", "survivor", "").await;
        // Due while the broker is down, and due well after it is back.
        for (body, delay) in [("late", 4_000), ("soon", 200), ("middle", 2_500)] {
            let confirmation =
                publish_confirmed(&ch, "survivor", "", body.as_bytes(), delayed(delay)).await;
            assert!(
                matches!(confirmation, Confirmation::Ack(_)),
                "{body} confirmed"
            );
        }
        drop(connection);
    }
    drop(broker); // SIGKILL
    let broker = Broker::start_in(data_dir, &[]);
    let (_connection, ch) = open(&broker).await;
    let got = receive(&ch, "after-crash", 3).await;
    let bodies: Vec<&str> = got.iter().map(|(body, ..)| body.as_str()).collect();
    assert_eq!(bodies, ["soon", "middle", "late"]);
    for (body, arrived, due, _) in &got {
        assert!(arrived >= due, "{body} arrived {} ms early", due - arrived);
    }
}
