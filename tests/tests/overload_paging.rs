//! Transient paging against the real binary: a queue's memory budget covers transient
//! messages too, so a backlog nobody consumes goes to the overflow file instead of growing the
//! broker's memory, and is then delivered whole and in order; the overflow gives its space back
//! as it is consumed and starts empty after a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use junction_tests::{Broker, Listeners, eventually, temp_dir};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicQosOptions};
use lapin::types::FieldTable;

/// Keeps at most 1 MiB of each queue's ready bodies in memory.
const SMALL_BUDGET: &str = "[storage]\nmax_loaded_bytes_per_queue = 1048576\n";

/// Messages in the big backlog, and their size: 200 MiB of bodies.
const BACKLOG: u64 = 200_000;
const BODY: usize = 1024;

/// A 1 KiB body carrying its number.
fn body(n: u64) -> Vec<u8> {
    let mut body = vec![b'.'; BODY];
    body[..8].copy_from_slice(&n.to_be_bytes());
    body
}

fn number(body: &[u8]) -> u64 {
    let head: [u8; 8] = body[..8].try_into().expect("a numbered body");
    u64::from_be_bytes(head)
}

/// A figure from the broker's `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(broker: &Broker, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
        .expect("the broker's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc status"))
}

/// Files in the overflow directory and their total size.
fn overflow_files(data_dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("overflow")) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .fold((0, 0), |(count, bytes), meta| {
            (count + 1, bytes + meta.len())
        })
}

async fn ready_count(channel: &lapin::Channel, queue: &str) -> u64 {
    u64::from(ready(channel, queue).await)
}

/// Consumes `count` messages from `queue`, acknowledging in batches, and checks that they
/// come numbered `0..count` in order.
async fn drain_in_order(channel: &lapin::Channel, queue: &str, count: u64) {
    within(
        "basic.qos",
        channel.basic_qos(1000, BasicQosOptions::default()),
    )
    .await
    .expect("basic.qos");
    let mut consumer = consume(channel, queue).await;
    for n in 0..count {
        let delivery = next(&mut consumer).await;
        assert_eq!(number(&delivery.data), n, "message {n} in order");
        if n % 500 == 499 || n + 1 == count {
            within(
                "basic.ack",
                delivery.acker.ack(BasicAckOptions { multiple: true }),
            )
            .await
            .expect("basic.ack");
        }
    }
    nothing_more(&mut consumer, "after the backlog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_backlog_pages_out_and_is_then_delivered_in_order() {
    let broker =
        Broker::start_configured(temp_dir("paging-backlog"), SMALL_BUDGET, Listeners::Amqp);
    let idle_kib = status_kib(&broker, "VmRSS");
    let (_connection, channel) = open(&broker).await;
    declare(&channel, "backlog").await;
    for n in 0..BACKLOG {
        publish(&channel, "", "backlog", &body(n)).await;
    }
    until("the whole backlog is ready", || async {
        ready_count(&channel, "backlog").await == BACKLOG
    })
    .await;
    let rss_kib = status_kib(&broker, "VmRSS");
    let peak_kib = status_kib(&broker, "VmHWM");
    let backlog_kib = BACKLOG * BODY as u64 / 1024;
    eprintln!(
        "idle {idle_kib} KiB, with a {backlog_kib} KiB backlog: VmRSS {rss_kib} KiB, VmHWM {peak_kib} KiB"
    );
    assert!(
        peak_kib < backlog_kib / 2,
        "the broker's peak memory ({peak_kib} KiB) stays well below the backlog ({backlog_kib} KiB)"
    );
    let (files, bytes) = overflow_files(&broker.data_dir);
    assert!(
        files > 0 && bytes > backlog_kib * 1024 / 2,
        "the backlog went to the overflow: {files} files, {bytes} bytes"
    );

    drain_in_order(&channel, "backlog", BACKLOG).await;
    assert!(
        eventually(Duration::from_secs(10), || overflow_files(&broker.data_dir)
            .0
            == 0),
        "the overflow gives its space back once consumed: {:?}",
        overflow_files(&broker.data_dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_and_transient_messages_of_a_durable_queue_page_and_come_back_in_order() {
    let broker = Broker::start_configured(temp_dir("paging-mixed"), SMALL_BUDGET, Listeners::Amqp);
    let (_connection, channel) = open(&broker).await;
    declare_durable(&channel, "mixed", FieldTable::default())
        .await
        .expect("declare");
    declare(&channel, "plain").await;
    let count = 5_000;
    for n in 0..count {
        // Even ones persistent (paged to the message log), odd ones transient (the overflow).
        let mode = if n % 2 == 0 { 2 } else { 1 };
        let properties = BasicProperties::default().with_delivery_mode(mode);
        publish_with(&channel, "", "mixed", &body(n), properties.clone()).await;
        // Persistent messages of a queue that is not durable go to the overflow too.
        publish_with(&channel, "", "plain", &body(n), properties).await;
    }
    until("both backlogs are ready", || async {
        ready_count(&channel, "mixed").await == count
            && ready_count(&channel, "plain").await == count
    })
    .await;
    assert!(overflow_files(&broker.data_dir).1 > 0);
    drain_in_order(&channel, "mixed", count).await;
    drain_in_order(&channel, "plain", count).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overflow_starts_empty_after_a_restart() {
    let broker =
        Broker::start_configured(temp_dir("paging-restart"), SMALL_BUDGET, Listeners::Amqp);
    let data_dir = broker.data_dir.clone();
    {
        let (connection, channel) = open(&broker).await;
        declare_durable(&channel, "kept", FieldTable::default())
            .await
            .expect("declare");
        for n in 0..10_000 {
            publish(&channel, "", "kept", &body(n)).await;
        }
        until("the backlog is ready", || async {
            ready_count(&channel, "kept").await == 10_000
        })
        .await;
        assert!(
            overflow_files(&data_dir).1 > 0,
            "transient bodies were paged"
        );
        within("close", connection.close(200, "bye".into()))
            .await
            .expect("close");
    }
    assert!(broker.stop());
    let broker = Broker::start_configured(data_dir.clone(), SMALL_BUDGET, Listeners::Amqp);
    assert_eq!(
        overflow_files(&data_dir),
        (0, 0),
        "nothing survives in the overflow"
    );
    let (_connection, channel) = open(&broker).await;
    assert_eq!(
        ready_count(&channel, "kept").await,
        0,
        "transient messages do not survive a restart"
    );
}
