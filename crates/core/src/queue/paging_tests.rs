//! Paging, driven through a virtual host with an in-memory overflow and a tiny memory budget:
//! bodies beyond the budget leave memory and come back in order, whatever the mix of
//! paged, loaded, requeued and prioritised entries, and paged entries still expire and are
//! dead-lettered with their bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::exchange::ExchangeTypeRegistry;
use crate::field::{FieldTable, FieldValue};
use crate::message::{Message, Properties};
use crate::persistence::Storage;
use crate::persistence::testing::MemoryOverflow;
use crate::vhost::VirtualHost;

/// Room for three of the tests' messages (10-byte bodies, as [`numbered`] makes them).
fn budget() -> usize {
    3 * numbered(0, None).memory_size()
}

/// The tests' consumer's channel.
fn channel() -> ChannelId {
    super::tests::channel(1)
}

fn paging_vhost(overflow: &Arc<MemoryOverflow>) -> Arc<VirtualHost> {
    let storage = Storage {
        overflow: Some(Arc::new(overflow.clone())),
        max_loaded_bytes_per_queue: budget(),
        ..Default::default()
    };
    VirtualHost::with_store(
        "/",
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        storage,
    )
}

async fn declare(vhost: &Arc<VirtualHost>, name: &str, arguments: FieldTable) -> QueueHandle {
    let spec = QueueSpec {
        name: name.into(),
        arguments,
        ..Default::default()
    };
    super::tests::declare(vhost, spec).await
}

/// A 10-byte body numbered `n`, at `priority`.
fn numbered(n: usize, priority: Option<u8>) -> Arc<Message> {
    let properties = Properties {
        priority,
        ..Default::default()
    };
    Arc::new(Message::new(
        "",
        "q",
        properties,
        Bytes::from(format!("{n:010}")),
    ))
}

fn number(message: &Message) -> usize {
    std::str::from_utf8(&message.body)
        .ok()
        .and_then(|body| body.parse().ok())
        .expect("a numbered body")
}

fn consumer(prefetch: u32, sink: &ConsumerSink) -> ConsumerSpec {
    super::tests::consumer("c", 1, prefetch, sink)
}

async fn next(events: &mut mpsc::UnboundedReceiver<ConsumerEvent>) -> Delivery {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(ConsumerEvent::Deliver(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Polls `check` until it holds (a generous deadline that only catches a hang).
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_bodies_beyond_the_budget_page_out_and_come_back_in_order() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let queue = declare(&vhost, "q", FieldTable::default()).await;
    for n in 0..100 {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    assert_eq!(queue.stats().await.expect("stats").ready, 100);
    assert_eq!(overflow.live(), 97, "all but three bodies left memory");
    let (sink, mut events) = super::tests::sink_and_events();
    queue.consume(consumer(0, &sink)).await.expect("consume");
    let mut seqs = Vec::new();
    for n in 0..100 {
        let delivery = next(&mut events).await;
        assert_eq!(number(&delivery.message), n);
        seqs.push(delivery.seq);
    }
    queue.ack(channel(), seqs).await;
    assert_eq!(overflow.live(), 0, "every page was released");
    assert!(overflow.reads() >= 97);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_and_prioritised_messages_keep_their_places_among_paged_ones() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let arguments = FieldTable::from_iter([("x-max-priority".to_owned(), FieldValue::I32(5))]);
    let queue = declare(&vhost, "q", arguments).await;
    // Even numbers at priority 5, odd ones at 0: 0 2 4 ... 38, then 1 3 5 ... 39.
    for n in 0..40 {
        let priority = (n % 2 == 0).then_some(5);
        queue.publish(numbered(n, priority)).await.expect("publish");
    }
    assert_eq!(queue.stats().await.expect("stats").ready, 40);
    assert!(overflow.live() > 30);
    let (sink, mut events) = super::tests::sink_and_events();
    queue.consume(consumer(5, &sink)).await.expect("consume");
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next(&mut events).await);
    }
    assert_eq!(
        first.iter().map(|d| number(&d.message)).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
    // The consumer goes first (so nothing requeued is delivered to it again), then two of
    // its deliveries go back to their places and the others are acknowledged.
    let cancelled = queue.cancel(channel(), "c".into()).await;
    assert!(cancelled);
    queue
        .reject(channel(), vec![first[1].seq, first[3].seq], true)
        .await;
    queue
        .ack(channel(), vec![first[0].seq, first[2].seq, first[4].seq])
        .await;
    let (sink, mut events) = super::tests::sink_and_events();
    queue.consume(consumer(0, &sink)).await.expect("consume");
    let mut expected = vec![2, 6];
    expected.extend((10..40).step_by(2));
    expected.extend((1..40).step_by(2));
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(number(&next(&mut events).await.message));
    }
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_waits_for_a_paged_head_instead_of_answering_empty() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let queue = declare(&vhost, "q", FieldTable::default()).await;
    for n in 0..10 {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    for n in 0..10 {
        let got = queue.get(channel(), true).await.expect("alive");
        let got = got.expect("a message, not get-empty");
        assert_eq!(number(&got.message), n);
        assert_eq!(got.remaining as usize, 9 - n);
    }
    assert!(queue.get(channel(), true).await.expect("alive").is_none());
    assert_eq!(overflow.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_message_expires_and_is_dead_lettered_with_its_body() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let dead = declare(&vhost, "dead", FieldTable::default()).await;
    let arguments = FieldTable::from_iter([
        ("x-message-ttl".to_owned(), FieldValue::I32(50)),
        ("x-dead-letter-exchange".to_owned(), FieldValue::string("")),
        (
            "x-dead-letter-routing-key".to_owned(),
            FieldValue::string("dead"),
        ),
    ]);
    let queue = declare(&vhost, "q", arguments).await;
    for n in 0..20 {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    eventually(async || queue.stats().await.expect("stats").ready == 0).await;
    eventually(async || dead.stats().await.expect("stats").ready == 20).await;
    for n in 0..20 {
        let got = dead.get(channel(), true).await.expect("alive");
        assert_eq!(number(&got.expect("dead-lettered").message), n);
    }
    eventually(async || overflow.live() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_paged_messages_without_a_dead_letter_exchange_go_unread() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let arguments = FieldTable::from_iter([("x-message-ttl".to_owned(), FieldValue::I32(20))]);
    let queue = declare(&vhost, "q", arguments).await;
    for n in 0..20 {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    eventually(async || queue.stats().await.expect("stats").ready == 0).await;
    assert_eq!(overflow.live(), 0);
    assert_eq!(overflow.reads(), 0, "nothing was read back to be dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_releases_every_page() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let queue = declare(&vhost, "q", FieldTable::default()).await;
    for n in 0..50 {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    assert_eq!(queue.stats().await.expect("stats").ready, 50);
    assert!(overflow.live() > 0);
    assert_eq!(queue.purge().await.expect("purge"), 50);
    assert_eq!(overflow.live(), 0);
}

/// A backlog several times longer than a level's head (the spill in between holds the rest
/// compactly): a message with an expiry waits behind the compact run, delivered messages
/// rejected back return to the front, and every message comes back once, in order, each
/// page released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_the_head_comes_back_in_order_with_requeues_and_expiries() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let queue = declare(&vhost, "q", FieldTable::default()).await;
    let run = 3 * super::level::HEAD_MIN + 100;
    for n in 0..run {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    let mut expiring = Message::clone(&numbered(run, None));
    expiring.properties.expiration = Some("600000".into());
    queue.publish(Arc::new(expiring)).await.expect("publish");
    let total = run + 10;
    for n in run + 1..total {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    assert_eq!(queue.stats().await.expect("stats").ready as usize, total);
    assert_eq!(
        overflow.live(),
        total - 3,
        "all but three bodies left memory"
    );

    let (sink, mut events) = super::tests::sink_and_events();
    queue.consume(consumer(10, &sink)).await.expect("consume");
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(next(&mut events).await);
    }
    assert!(queue.cancel(channel(), "c".into()).await);
    queue
        .reject(channel(), first.iter().map(|d| d.seq).collect(), true)
        .await;

    let (sink, mut events) = super::tests::sink_and_events();
    queue.consume(consumer(0, &sink)).await.expect("consume");
    let mut got = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..total {
        let delivery = next(&mut events).await;
        got.push(number(&delivery.message));
        seqs.push(delivery.seq);
    }
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    queue.ack(channel(), seqs).await;
    assert_eq!(queue.stats().await.expect("stats").ready, 0);
    assert_eq!(overflow.live(), 0, "every page was released");
}

/// Purging a backlog whose middle is compact releases the pages of all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_long_backlog_releases_every_page() {
    let overflow = MemoryOverflow::new();
    let vhost = paging_vhost(&overflow);
    let queue = declare(&vhost, "q", FieldTable::default()).await;
    let total = 4 * super::level::HEAD_MIN;
    for n in 0..total {
        queue.publish(numbered(n, None)).await.expect("publish");
    }
    assert_eq!(queue.stats().await.expect("stats").ready as usize, total);
    assert_eq!(overflow.live(), total - 3);
    assert_eq!(queue.purge().await.expect("purge") as usize, total);
    assert_eq!(overflow.live(), 0);
}
