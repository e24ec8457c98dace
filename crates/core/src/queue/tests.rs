//! Queue semantics, driven through a virtual host without any protocol.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::exchange::ExchangeTypeRegistry;
use crate::message::{Message, Properties};
use crate::vhost::VirtualHost;

const OWNER: ConnectionId = ConnectionId(1);

pub(super) fn channel(number: u16) -> ChannelId {
    ChannelId {
        connection: OWNER,
        number,
        generation: 1,
    }
}

async fn queue_with(vhost: &Arc<VirtualHost>, name: &str, auto_delete: bool) -> QueueHandle {
    let spec = QueueSpec {
        name: name.into(),
        auto_delete,
        ..Default::default()
    };
    declare(vhost, spec).await
}

/// Declares `spec` for the tests' connection.
pub(super) async fn declare(vhost: &Arc<VirtualHost>, spec: QueueSpec) -> QueueHandle {
    vhost
        .declare_queue(spec, false, false, OWNER)
        .await
        .expect("declare")
        .handle
}

fn message(body: &'static str) -> Arc<Message> {
    Arc::new(Message::new(
        "",
        "q",
        Properties::default(),
        Bytes::from_static(body.as_bytes()),
    ))
}

pub(super) fn consumer(tag: &str, number: u16, prefetch: u32, sink: &ConsumerSink) -> ConsumerSpec {
    ConsumerSpec {
        tag: tag.into(),
        channel: channel(number),
        no_ack: false,
        settles_transient: false,
        exclusive: false,
        prefetch,
        channel_credit: None,
        sink: sink.clone(),
        priority: 0,
    }
}

/// A connection's sink with the default budget, and its end of the events.
pub(super) fn sink_and_events() -> (ConsumerSink, mpsc::UnboundedReceiver<ConsumerEvent>) {
    let (events, receiver) = mpsc::unbounded_channel();
    (ConsumerSink::new(events, DEFAULT_DELIVERY_BUDGET), receiver)
}

async fn next_delivery(events: &mut mpsc::UnboundedReceiver<ConsumerEvent>) -> Delivery {
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(ConsumerEvent::Deliver(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

fn body(delivery: &Delivery) -> &[u8] {
    &delivery.message.body
}

#[tokio::test]
async fn prefetch_holds_back_deliveries_until_an_ack() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    for body in ["a", "b", "c"] {
        queue.publish(message(body)).await.expect("publish");
    }
    let (sink, mut events) = sink_and_events();
    queue
        .consume(consumer("c1", 1, 2, &sink))
        .await
        .expect("consume");
    let first = next_delivery(&mut events).await;
    let second = next_delivery(&mut events).await;
    assert_eq!((body(&first), body(&second)), (&b"a"[..], &b"b"[..]));
    assert_eq!(queue.stats().await.expect("stats").ready, 1);
    assert!(events.try_recv().is_err(), "the third waits for credit");
    queue.ack(channel(1), vec![first.seq]).await;
    assert_eq!(body(&next_delivery(&mut events).await), b"c");
}

#[tokio::test]
async fn rejected_messages_return_to_their_place_flagged_redelivered() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    for body in ["a", "b", "c"] {
        queue.publish(message(body)).await.expect("publish");
    }
    let a = queue.get(channel(1), false).await.expect("get").expect("a");
    let b = queue.get(channel(1), false).await.expect("get").expect("b");
    queue.reject(channel(1), vec![b.seq, a.seq], true).await;
    let order: Vec<(Vec<u8>, bool)> = {
        let mut out = Vec::new();
        while let Some(got) = queue.get(channel(1), true).await.expect("get") {
            out.push((got.message.body.to_vec(), got.redelivered));
        }
        out
    };
    assert_eq!(
        order,
        vec![
            (b"a".to_vec(), true),
            (b"b".to_vec(), true),
            (b"c".to_vec(), false)
        ]
    );
}

#[tokio::test]
async fn unacked_messages_return_to_the_queue_when_the_channel_closes() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    queue.publish(message("work")).await.expect("publish");
    let (sink1, mut events1) = sink_and_events();
    queue
        .consume(consumer("c1", 1, 1, &sink1))
        .await
        .expect("consume");
    let first = next_delivery(&mut events1).await;
    assert!(!first.redelivered);
    let (sink2, mut events2) = sink_and_events();
    queue
        .consume(consumer("c2", 2, 1, &sink2))
        .await
        .expect("consume");
    queue.channel_closed(channel(1)).await;
    let again = next_delivery(&mut events2).await;
    assert_eq!(body(&again), b"work");
    assert!(again.redelivered);
}

#[tokio::test]
async fn consumers_take_turns() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    let (sink, mut events) = sink_and_events();
    queue
        .consume(consumer("c1", 1, 0, &sink))
        .await
        .expect("consume");
    queue
        .consume(consumer("c2", 1, 0, &sink))
        .await
        .expect("consume");
    for body in ["1", "2", "3", "4"] {
        queue.publish(message(body)).await.expect("publish");
    }
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(next_delivery(&mut events).await.consumer_tag.to_string());
    }
    assert_eq!(tags, ["c1", "c2", "c1", "c2"]);
}

#[tokio::test]
async fn an_auto_delete_queue_goes_with_its_last_consumer() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "temp", true).await;
    let (sink, _events) = sink_and_events();
    queue
        .consume(consumer("c1", 1, 0, &sink))
        .await
        .expect("consume");
    assert!(queue.cancel(channel(1), "c1".into()).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while vhost.queue("temp").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "queue still there");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(queue.is_deleted());
}

#[tokio::test]
async fn channel_credit_is_shared_across_queues() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let q1 = queue_with(&vhost, "q1", false).await;
    let q2 = queue_with(&vhost, "q2", false).await;
    let credit = Arc::new(ChannelCredit::new(1));
    let (sink, mut events) = sink_and_events();
    for (queue, tag) in [(&q1, "c1"), (&q2, "c2")] {
        let mut spec = consumer(tag, 1, 0, &sink);
        spec.channel_credit = Some(credit.clone());
        queue.consume(spec).await.expect("consume");
        queue.publish(message(tag)).await.expect("publish");
    }
    let first = next_delivery(&mut events).await;
    let stats: u32 =
        q1.stats().await.expect("stats").ready + q2.stats().await.expect("stats").ready;
    assert_eq!(stats, 1, "one delivery in flight for the whole channel");
    first.queue.ack(channel(1), vec![first.seq]).await;
    q1.wake().await;
    q2.wake().await;
    let second = next_delivery(&mut events).await;
    assert_ne!(first.consumer_tag, second.consumer_tag);
}

/// A definition store that records what it was asked, and can refuse queue deletions.
#[derive(Default)]
struct RecordingDefinitions {
    calls: parking_lot::Mutex<Vec<String>>,
    refuse_delete: std::sync::atomic::AtomicBool,
}

impl crate::definitions::DefinitionStore for RecordingDefinitions {
    fn save_exchange(
        &self,
        _vhost: &str,
        _spec: &crate::exchange::ExchangeSpec,
    ) -> Result<(), crate::definitions::StoreFailure> {
        Ok(())
    }
    fn delete_exchange(
        &self,
        _vhost: &str,
        _name: &str,
    ) -> Result<(), crate::definitions::StoreFailure> {
        Ok(())
    }
    fn save_queue(
        &self,
        _vhost: &str,
        spec: &QueueSpec,
    ) -> Result<(), crate::definitions::StoreFailure> {
        self.calls.lock().push(format!("save {}", spec.name));
        Ok(())
    }
    fn delete_queue(
        &self,
        _vhost: &str,
        name: &str,
    ) -> Result<(), crate::definitions::StoreFailure> {
        if self
            .refuse_delete
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(crate::definitions::StoreFailure("disk full".into()));
        }
        self.calls.lock().push(format!("delete {name}"));
        Ok(())
    }
    fn save_binding(
        &self,
        _vhost: &str,
        _binding: &crate::definitions::BindingRecord,
    ) -> Result<(), crate::definitions::StoreFailure> {
        Ok(())
    }
    fn delete_binding(
        &self,
        _vhost: &str,
        _binding: &crate::definitions::BindingRecord,
    ) -> Result<(), crate::definitions::StoreFailure> {
        Ok(())
    }
    fn load(
        &self,
        _vhost: &str,
    ) -> Result<crate::definitions::VhostDefinitions, crate::definitions::StoreFailure> {
        Ok(Default::default())
    }
}

/// A durable queue's record is removed only once the delete's preconditions hold: a refused
/// if-empty delete never removes it (a crash then would lose a queue that still exists), a
/// record that cannot be removed fails the delete with the queue intact, and an allowed
/// delete removes it.
#[tokio::test]
async fn a_refused_delete_leaves_the_durable_record_alone() {
    let definitions = Arc::new(RecordingDefinitions::default());
    let storage = crate::persistence::Storage {
        definitions: Some(definitions.clone()),
        ..Default::default()
    };
    let vhost = VirtualHost::with_store(
        "/",
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        storage,
    );
    let spec = QueueSpec {
        name: "kept".into(),
        durable: true,
        ..Default::default()
    };
    let queue = vhost
        .declare_queue(spec, false, false, OWNER)
        .await
        .expect("declare")
        .handle;
    queue.publish(message("m")).await.expect("published");
    let refused = vhost.delete_queue("kept", false, true, OWNER).await;
    assert!(refused.is_err(), "a non-empty queue refuses if-empty");
    assert_eq!(
        *definitions.calls.lock(),
        ["save kept"],
        "the record was not touched"
    );

    definitions
        .refuse_delete
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        vhost
            .delete_queue("kept", false, false, OWNER)
            .await
            .is_err()
    );
    assert!(
        vhost.queue("kept").is_some(),
        "the queue stays when its record stays"
    );
    assert_eq!(queue.stats().await.expect("alive").ready, 1);

    definitions
        .refuse_delete
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        vhost
            .delete_queue("kept", false, false, OWNER)
            .await
            .expect("deleted"),
        1
    );
    assert!(vhost.queue("kept").is_none());
    assert_eq!(
        definitions.calls.lock().first().map(String::as_str),
        Some("save kept")
    );
    assert!(definitions.calls.lock().iter().any(|c| c == "delete kept"));
    assert!(
        !definitions
            .calls
            .lock()
            .iter()
            .skip(1)
            .any(|c| c.starts_with("save"))
    );
}

#[tokio::test]
async fn a_consumer_that_does_not_take_its_deliveries_holds_only_its_budget() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    let (events, mut receiver) = mpsc::unbounded_channel();
    let sink = ConsumerSink::new(events, 10 * 1024);
    let mut spec = consumer("c1", 1, 0, &sink);
    spec.no_ack = true;
    queue.consume(spec).await.expect("consume");
    let body = Bytes::from(vec![b'x'; 1024]);
    for _ in 0..100 {
        let message = Message::new("", "q", Properties::default(), body.clone());
        queue.publish(Arc::new(message)).await.expect("publish");
    }
    // Stats are answered within the batch that took the publishes; dispatch follows it.
    queue.stats().await.expect("stats");
    let stats = queue.stats().await.expect("stats");
    // 10 KiB of budget at what each message costs plus 256 bytes: the deliveries stop once
    // it is used up.
    let each = Message::new("", "q", Properties::default(), body.clone()).memory_size()
        + DELIVERY_OVERHEAD;
    let delivered = (10 * 1024_usize).div_ceil(each);
    assert_eq!(
        stats.ready as usize,
        100 - delivered,
        "the rest waits in the queue"
    );
    assert_eq!(sink.budget().used(), delivered * each);

    // Taking the deliveries (dropping them, as a connection does once written) lets the
    // queue go on until everything has come.
    let mut received = 0;
    while received < 100 {
        let delivery = next_delivery(&mut receiver).await;
        drop(delivery);
        received += 1;
    }
    assert_eq!(queue.stats().await.expect("stats").ready, 0);
    assert_eq!(sink.budget().used(), 0);
}

#[tokio::test]
async fn transient_messages_beyond_the_transient_limit_are_dropped_and_counted() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    queue.limit_transient(2);
    let persistent = Properties {
        delivery_mode: Some(2),
        ..Properties::default()
    };
    for body in ["a", "b", "c"] {
        queue.publish(message(body)).await.expect("publish");
    }
    let kept = Message::new("", "q", persistent, Bytes::from_static(b"p"));
    queue.publish(Arc::new(kept)).await.expect("publish");
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.dropped_transient), (3, 1));
}

#[tokio::test]
async fn a_queue_whose_mailbox_is_over_half_full_is_behind_until_it_catches_up() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    // On this single-threaded runtime the queue's task does not run while the test does not
    // wait (and tokio's cooperative budget does not make it), so the publishes pile up in
    // its mailbox.
    let published = tokio::task::unconstrained(async {
        let mut published = 0;
        while !queue.is_behind() && published < 100_000 {
            queue.publish(message("m")).await.expect("publish");
            published += 1;
        }
        published
    })
    .await;
    assert!(published > 1000, "behind after {published} publishes");
    let mut hold = crate::FlowHold::new(queue.clone());
    let held =
        std::future::poll_fn(|cx| std::task::Poll::Ready(hold.poll_caught_up(cx).is_pending()))
            .await;
    assert!(held, "the publisher is held while the queue is behind");
    tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| hold.poll_caught_up(cx)),
    )
    .await
    .expect("the hold ends once the queue has caught up");
    assert!(!queue.is_behind());
    assert_eq!(queue.stats().await.expect("stats").ready, published);
}

#[tokio::test]
async fn a_consumer_that_settles_transient_messages_gets_them_beyond_its_prefetch() {
    let vhost = VirtualHost::new("/", Arc::new(ExchangeTypeRegistry::with_builtins()));
    let queue = queue_with(&vhost, "q", false).await;
    let (sink, mut events) = sink_and_events();
    let mut spec = consumer("c1", 1, 1, &sink);
    spec.settles_transient = true;
    queue.consume(spec).await.expect("consume");
    let persistent = Properties {
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let kept = Message::new("", "q", persistent, Bytes::from_static(b"p"));
    for body in ["a", "b", "c"] {
        queue.publish(message(body)).await.expect("publish");
    }
    queue
        .publish(Arc::new(kept.clone()))
        .await
        .expect("publish");
    queue.publish(Arc::new(kept)).await.expect("publish");
    // The transient ones go out settled, without taking the one unit of prefetch; the first
    // persistent message takes it and the second waits for its ack.
    for expected in [b"a", b"b", b"c"] {
        let delivery = next_delivery(&mut events).await;
        assert_eq!(body(&delivery), expected);
        assert!(!delivery.needs_ack);
    }
    let first = next_delivery(&mut events).await;
    assert!(first.needs_ack);
    assert!(
        events.try_recv().is_err(),
        "the second persistent one waits"
    );
    queue.ack(channel(1), vec![first.seq]).await;
    assert!(next_delivery(&mut events).await.needs_ack);
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.unacked), (0, 1));
}
