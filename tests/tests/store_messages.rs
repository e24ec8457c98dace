//! Persistent messages on durable queues survive restarts: a clean stop, and SIGKILL at
//! arbitrary moments while a publisher streams messages with confirms. Every confirmed message
//! comes back exactly once, intact, in order, flagged redelivered; transient ones do not.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use junction_tests::Broker;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};

use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

const QUEUE: &str = "crash-safe";
/// Confirms outstanding at once while streaming.
const WINDOW: usize = 64;

fn body(n: u64) -> Vec<u8> {
    let mut body = format!("message {n:08} ").into_bytes();
    body.resize(1024, b'0' + (n % 10) as u8);
    body
}

fn number_of(body: &[u8]) -> u64 {
    std::str::from_utf8(&body[8..16])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a numbered body")
}

async fn durable_channel(broker: &Broker) -> (lapin::Connection, Channel) {
    let (connection, ch) = open(broker).await;
    within(
        "queue.declare",
        ch.queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    (connection, ch)
}

async fn publish_persistent(ch: &Channel, n: u64) -> lapin::Result<PublisherConfirm> {
    ch.basic_publish(
        "".into(),
        QUEUE.into(),
        BasicPublishOptions::default(),
        &body(n),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
}

/// Takes every message in the queue, checking each is intact and redelivered.
async fn drain(ch: &Channel) -> Vec<u64> {
    let mut numbers = Vec::new();
    loop {
        let got = within(
            "basic.get",
            ch.basic_get(QUEUE.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        let Some(message) = got else { break };
        let n = number_of(&message.delivery.data);
        assert_eq!(message.delivery.data, body(n), "message {n} is intact");
        assert!(
            message.delivery.redelivered,
            "recovered messages are redelivered"
        );
        numbers.push(n);
    }
    numbers
}

/// A small deterministic generator for the kill moments.
fn next_delay(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_millis(30 + *state % 250)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_at_any_moment() {
    let data_dir = junction_tests::temp_dir("crash");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = 0u64;
    for round in 0..6 {
        let mut broker = Broker::start_in(data_dir.clone(), &[]);
        let (connection, ch) = durable_channel(&broker).await;

        // What a previous round left must be exactly what it confirmed (and maybe a few it
        // sent but had not yet seen confirmed), in order, once each.
        let recovered = drain(&ch).await;
        assert!(
            recovered.windows(2).all(|w| w[0] < w[1]),
            "round {round}: recovered out of order or duplicated: {recovered:?}"
        );

        let confirmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let publisher = {
            let ch = ch.clone();
            let confirmed = confirmed.clone();
            let start = next;
            tokio::spawn(async move {
                let mut pending: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
                let mut n = start;
                loop {
                    let Ok(confirm) = publish_persistent(&ch, n).await else {
                        break;
                    };
                    pending.push_back((n, confirm));
                    n += 1;
                    if pending.len() >= WINDOW {
                        let (m, confirm) = pending.pop_front().expect("non-empty");
                        match confirm.await {
                            Ok(Confirmation::Ack(_)) => confirmed.lock().expect("lock").push(m),
                            _ => break,
                        }
                    }
                }
            })
        };
        tokio::time::sleep(next_delay(&mut rng)).await;
        broker.signal("KILL");
        assert!(broker.wait_exit(Duration::from_secs(10)).is_some());
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        drop(connection);
        let confirmed: Vec<u64> = confirmed.lock().expect("lock").clone();
        drop(broker);

        let broker = Broker::start_in(data_dir.clone(), &[]);
        let (connection, ch) = durable_channel(&broker).await;
        let recovered = drain(&ch).await;
        for n in &confirmed {
            assert!(
                recovered.binary_search(n).is_ok(),
                "round {round}: confirmed message {n} was lost (recovered {} of {} confirmed)",
                recovered.len(),
                confirmed.len()
            );
        }
        assert!(
            recovered.windows(2).all(|w| w[0] < w[1]),
            "in order, once each"
        );
        assert!(!confirmed.is_empty(), "round {round} confirmed something");
        eprintln!(
            "round {round}: {} confirmed, {} recovered after SIGKILL",
            confirmed.len(),
            recovered.len()
        );
        next = recovered
            .last()
            .copied()
            .unwrap_or(next)
            .max(*confirmed.last().unwrap_or(&0))
            + WINDOW as u64 * 4;
        within("close", connection.close(200, "bye".into()))
            .await
            .expect("close");
        assert!(broker.stop());
    }
}

#[tokio::test]
async fn a_clean_restart_keeps_persistent_messages_and_drops_transient_ones() {
    let broker = Broker::start();
    let (connection, ch) = durable_channel(&broker).await;
    for n in 0..10u64 {
        let mode = if n % 2 == 0 { 2 } else { 1 };
        let confirm = within(
            "publish",
            ch.basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &body(n),
                BasicProperties::default().with_delivery_mode(mode),
            ),
        )
        .await
        .expect("publish");
        assert!(matches!(
            within("confirm", confirm).await,
            Ok(Confirmation::Ack(_))
        ));
    }
    // Acknowledged messages are gone for good, even after a restart.
    let first = within(
        "get",
        ch.basic_get(QUEUE.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(number_of(&first.delivery.data), 0);
    within("ack", first.ack(Default::default()))
        .await
        .expect("ack");
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());

    let broker = Broker::start_in(data_dir, &[]);
    let (_connection, ch) = durable_channel(&broker).await;
    assert_eq!(drain(&ch).await, vec![2, 4, 6, 8]);
}

#[tokio::test]
async fn a_damaged_log_tail_is_cut_off_and_every_good_record_kept() {
    let broker = Broker::start();
    let (connection, ch) = durable_channel(&broker).await;
    for n in 0..20u64 {
        let confirm = within("publish", publish_persistent(&ch, n))
            .await
            .expect("publish");
        assert!(matches!(
            within("confirm", confirm).await,
            Ok(Confirmation::Ack(_))
        ));
    }
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());

    // Flip a byte inside the last record and append half of a record: a torn, corrupt tail.
    let segments = data_dir.join("messages");
    let mut files: Vec<_> = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    files.sort();
    let last = files.last().expect("a segment with data");
    let mut data = std::fs::read(last).expect("read");
    let at = data.len() - 100;
    data[at] ^= 0x5a;
    data.extend_from_slice(&[0, 0, 4, 0, 1, 2]);
    std::fs::write(last, &data).expect("write");

    let broker = Broker::start_in(data_dir, &[]);
    let (_connection, ch) = durable_channel(&broker).await;
    let recovered = drain(&ch).await;
    assert_eq!(
        recovered,
        (0..19).collect::<Vec<u64>>(),
        "all but the damaged record"
    );
}

/// With a tiny in-memory budget nearly every body is paged out to the log and read back when
/// delivered: the consumer still gets every message, intact and in order, before and after a
/// restart (which recovers only ids and locations, no bodies).
#[tokio::test]
async fn paged_out_messages_are_read_back_in_order() {
    let dir = junction_tests::temp_dir("paging-config");
    let config = dir.join("junction.toml");
    std::fs::write(&config, "[storage]\nmax_loaded_bytes_per_queue = 4096\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    let broker = Broker::start_with(&["--config", &config]);
    let (connection, ch) = durable_channel(&broker).await;
    for n in 0..300u64 {
        let confirm = within("publish", publish_persistent(&ch, n))
            .await
            .expect("publish");
        if n % 50 == 49 {
            assert!(matches!(
                within("confirm", confirm).await,
                Ok(Confirmation::Ack(_))
            ));
        }
    }
    // Take the first hundred now (read back from the log), leave the rest for after a restart.
    for n in 0..100u64 {
        let got = within(
            "basic.get",
            ch.basic_get(QUEUE.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("get")
        .expect("a message");
        assert_eq!(got.delivery.data, body(n), "message {n}");
    }
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());

    let broker = Broker::start_in(data_dir, &["--config", &config]);
    let (_connection, ch) = durable_channel(&broker).await;
    assert_eq!(drain(&ch).await, (100..300).collect::<Vec<u64>>());
}
