//! The basic class with lapin: prefetch (per consumer and global), exclusive and no-ack
//! consumers, cancel (client and broker), mandatory returns, get, ack/nack/reject (single and
//! multiple), recover, requeue on channel and connection close, round-robin, properties and
//! bodies, and the errors of consumer tags, delivery tags and user_id.

mod common;

use common::*;
use futures_lite::StreamExt;
use junction_tests::Broker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};

async fn qos(ch: &Channel, count: u16, global: bool) {
    within("basic.qos", ch.basic_qos(count, BasicQosOptions { global }))
        .await
        .expect("basic.qos");
}

async fn ack(ch: &Channel, tag: u64, multiple: bool) {
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions { multiple }))
        .await
        .expect("basic.ack");
}

async fn fill(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

/// The next delivery from either consumer.
async fn next_of(a: &mut Consumer, b: &mut Consumer) -> Delivery {
    let either = futures_lite::future::or(a.next(), b.next());
    within("delivery from either consumer", either)
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

#[tokio::test]
async fn prefetch_limits_unacknowledged_deliveries_per_consumer() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "prefetched").await;
    let consumer_ch = channel(&connection).await;
    qos(&consumer_ch, 2, false).await;
    let mut consumer = consume(&consumer_ch, "prefetched").await;
    fill(&ch, "prefetched", 5).await;

    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!(ready(&ch, "prefetched").await, 3, "only two are out");
    nothing_more(&mut consumer, "prefetch of 2 reached").await;

    ack(&consumer_ch, first.delivery_tag, false).await;
    let third = next(&mut consumer).await;
    assert_eq!(text(&third.data), "m2");
    assert_eq!(ready(&ch, "prefetched").await, 2);
    nothing_more(&mut consumer, "prefetch of 2 reached again").await;
    assert!(second.delivery_tag < third.delivery_tag);
    ack(&consumer_ch, third.delivery_tag, true).await; // acks second too
    next(&mut consumer).await;
    next(&mut consumer).await;
    assert_eq!(ready(&ch, "prefetched").await, 0);
}

#[tokio::test]
async fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "per-consumer").await;
    let consumer_ch = channel(&connection).await;
    qos(&consumer_ch, 1, false).await;
    let mut a = consume(&consumer_ch, "per-consumer").await;
    let mut b = consume(&consumer_ch, "per-consumer").await;
    fill(&ch, "per-consumer", 4).await;
    next(&mut a).await;
    next(&mut b).await;
    assert_eq!(ready(&ch, "per-consumer").await, 2, "one each");
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_consumers_of_a_channel() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "global-a").await;
    declare(&ch, "global-b").await;
    let consumer_ch = channel(&connection).await;
    qos(&consumer_ch, 3, true).await;
    let mut a = consume(&consumer_ch, "global-a").await;
    let mut b = consume(&consumer_ch, "global-b").await;
    fill(&ch, "global-a", 4).await;
    fill(&ch, "global-b", 4).await;

    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(next_of(&mut a, &mut b).await);
    }
    let left = ready(&ch, "global-a").await + ready(&ch, "global-b").await;
    assert_eq!(left, 5, "three out across both consumers");
    nothing_more(&mut a, "global limit reached (a)").await;
    nothing_more(&mut b, "global limit reached (b)").await;

    ack(&consumer_ch, received[0].delivery_tag, false).await;
    next_of(&mut a, &mut b).await;
    let left = ready(&ch, "global-a").await + ready(&ch, "global-b").await;
    assert_eq!(left, 4, "one more after one ack");
}

#[tokio::test]
async fn no_ack_consumers_ignore_prefetch_and_leave_nothing_unacknowledged() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "no-ack").await;
    let consumer_ch = channel(&connection).await;
    qos(&consumer_ch, 1, false).await;
    let mut consumer = consume_with(
        &consumer_ch,
        "no-ack",
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    fill(&ch, "no-ack", 3).await;
    for i in 0..3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(text(&delivery.data), format!("m{i}"));
    }
    within("channel.close", consumer_ch.close(200, "OK".into()))
        .await
        .expect("close");
    assert_eq!(ready(&ch, "no-ack").await, 0, "nothing comes back");
}

#[tokio::test]
async fn an_exclusive_consumer_keeps_others_out() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare(&ch, "exclusive-use").await;
    let _owner = consume_with(
        &ch,
        "exclusive-use",
        "owner",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let other = channel(&connection).await;
    assert_code(
        within(
            "basic.consume",
            other.basic_consume(
                "exclusive-use".into(),
                "second".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "consume beside an exclusive consumer",
    );
    assert!(connection.status().connected(), "403 is a channel error");

    // Nor can an exclusive consumer join existing ones.
    declare(&ch, "shared-use").await;
    let _plain = consume(&ch, "shared-use").await;
    let other = channel(&connection).await;
    assert_code(
        within(
            "basic.consume",
            other.basic_consume(
                "shared-use".into(),
                "wants-it-all".into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "exclusive consume of a queue with consumers",
    );
}

#[tokio::test]
async fn consuming_or_getting_from_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(
                "missing".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::NOT_FOUND,
        "consume",
    );
    let ch = channel(&connection).await;
    assert_code(
        within(
            "basic.get",
            ch.basic_get("missing".into(), BasicGetOptions::default()),
        )
        .await,
        code::NOT_FOUND,
        "get",
    );
}

#[tokio::test]
async fn server_generated_consumer_tags_look_like_rabbitmqs() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "tagged").await;
    let consumer = consume(&ch, "tagged").await;
    let tag = consumer.tag();
    assert!(tag.as_str().starts_with("amq.ctag-"), "{tag}");
    let mine = consume_with(&ch, "tagged", "my-tag", BasicConsumeOptions::default()).await;
    assert_eq!(mine.tag().as_str(), "my-tag");
}

#[tokio::test]
async fn cancel_stops_delivery() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "cancelled").await;
    let consumer_ch = channel(&connection).await;
    let mut consumer = consume_with(
        &consumer_ch,
        "cancelled",
        "going",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    fill(&ch, "cancelled", 1).await;
    next(&mut consumer).await;
    within(
        "basic.cancel",
        consumer_ch.basic_cancel("going".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    fill(&ch, "cancelled", 2).await;
    assert_eq!(
        ready(&ch, "cancelled").await,
        2,
        "nothing delivered after cancel"
    );
    let after = within("stream after cancel", consumer.next()).await;
    assert!(after.is_none(), "the stream ends: {after:?}");
    // Cancelling an unknown tag is answered with cancel-ok.
    within(
        "basic.cancel",
        consumer_ch.basic_cancel("never-existed".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel of an unknown tag");
    assert!(consumer_ch.status().connected());
}

#[tokio::test]
async fn deleting_the_queue_cancels_its_consumers() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "pulled-away").await;
    let consumer_ch = channel(&connection).await;
    let mut consumer = consume(&consumer_ch, "pulled-away").await;
    within(
        "queue.delete",
        ch.queue_delete("pulled-away".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    let after = within("broker-sent basic.cancel", consumer.next()).await;
    assert!(after.is_none(), "the consumer was cancelled: {after:?}");
    assert!(consumer_ch.status().connected(), "the channel stays open");
    declare(&consumer_ch, "still-usable").await;
}

#[tokio::test]
async fn a_mandatory_unroutable_message_is_returned() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    declare(&ch, "routable").await;

    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nobody-bound".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"returned",
            BasicProperties::default().with_message_id("r-1".into()),
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirmation");
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack with the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, code::NO_ROUTE);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), "nobody-bound");
    assert_eq!(returned.delivery.data, b"returned");
    assert_eq!(
        returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("r-1")
    );

    // Routable mandatory messages and unroutable non-mandatory ones are not returned.
    for (key, mandatory) in [("routable", true), ("nowhere", false)] {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"x",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let confirmation = within("confirm", confirm).await.expect("confirmation");
        assert_eq!(confirmation, Confirmation::Ack(None), "{key}");
    }
}

#[tokio::test]
async fn basic_get_reports_the_remaining_count_and_get_empty() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "gettable").await;
    let empty = within(
        "basic.get",
        ch.basic_get("gettable".into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get");
    assert!(empty.is_none(), "get-empty");

    fill(&ch, "gettable", 3).await;
    let first = get(&ch, "gettable", false).await;
    assert_eq!(first.message_count, 2, "two left after this one");
    assert_eq!(text(&first.delivery.data), "m0");
    assert!(!first.delivery.redelivered);
    assert_eq!(first.delivery.exchange.as_str(), "");
    assert_eq!(first.delivery.routing_key.as_str(), "gettable");
    let second = get(&ch, "gettable", true).await;
    assert_eq!(second.message_count, 1);
    let third = get(&ch, "gettable", true).await;
    assert_eq!(third.message_count, 0);
    let none = within(
        "basic.get",
        ch.basic_get("gettable".into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get");
    assert!(none.is_none(), "drained");
    // The first one (not no-ack) is still owed an ack; ack it and nothing comes back.
    ack(&ch, first.delivery.delivery_tag, false).await;
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "gettable").await, 0);
}

#[tokio::test]
async fn ack_multiple_settles_everything_up_to_the_tag() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "ack-multi").await;
    fill(&ch, "ack-multi", 4).await;
    let consumer_ch = channel(&connection).await;
    let mut consumer = consume(&consumer_ch, "ack-multi").await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(next(&mut consumer).await.delivery_tag);
    }
    ack(&consumer_ch, tags[2], true).await; // first three
    within("channel.close", consumer_ch.close(200, "OK".into()))
        .await
        .expect("close");
    until("the unacked fourth is back", || {
        let ch = ch.clone();
        async move { ready(&ch, "ack-multi").await == 1 }
    })
    .await;
    let back = get(&ch, "ack-multi", true).await;
    assert_eq!(text(&back.delivery.data), "m3");
    assert!(back.delivery.redelivered);
}

#[tokio::test]
async fn nack_multiple_with_requeue_redelivers_everything_up_to_the_tag() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "nack-multi").await;
    fill(&ch, "nack-multi", 3).await;
    let consumer_ch = channel(&connection).await;
    qos(&consumer_ch, 3, false).await;
    let mut consumer = consume(&consumer_ch, "nack-multi").await;
    let mut last = 0;
    for i in 0..3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(text(&delivery.data), format!("m{i}"));
        assert!(!delivery.redelivered);
        last = delivery.delivery_tag;
    }
    within(
        "basic.nack",
        consumer_ch.basic_nack(
            last,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .expect("nack");
    for i in 0..3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(text(&delivery.data), format!("m{i}"), "original order");
        assert!(delivery.redelivered, "redelivered flag");
    }
}

#[tokio::test]
async fn nack_without_requeue_drops_the_messages() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "nack-drop").await;
    fill(&ch, "nack-drop", 2).await;
    let _a = get(&ch, "nack-drop", false).await;
    let b = get(&ch, "nack-drop", false).await;
    within(
        "basic.nack",
        ch.basic_nack(
            b.delivery.delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .expect("nack");
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "nack-drop").await, 0, "both dropped");
}

#[tokio::test]
async fn reject_with_requeue_redelivers_and_without_drops() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "rejected").await;
    fill(&ch, "rejected", 1).await;
    let first = get(&ch, "rejected", false).await;
    assert!(!first.delivery.redelivered);
    within(
        "basic.reject",
        ch.basic_reject(
            first.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        ),
    )
    .await
    .expect("reject");
    let again = get(&ch, "rejected", false).await;
    assert_eq!(text(&again.delivery.data), "m0");
    assert!(again.delivery.redelivered, "requeued: redelivered");
    within(
        "basic.reject",
        ch.basic_reject(
            again.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("reject");
    assert_eq!(ready(&ch, "rejected").await, 0, "dropped");
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "rejected").await, 0, "not owed either");
}

#[tokio::test]
async fn requeued_messages_keep_their_place_in_the_queue() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "ordered").await;
    fill(&ch, "ordered", 4).await;
    let m0 = get(&ch, "ordered", false).await;
    let m1 = get(&ch, "ordered", false).await;
    for taken in [&m1, &m0] {
        within(
            "basic.reject",
            ch.basic_reject(
                taken.delivery.delivery_tag,
                BasicRejectOptions { requeue: true },
            ),
        )
        .await
        .expect("reject");
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(text(&get(&ch, "ordered", true).await.delivery.data));
    }
    assert_eq!(order, ["m0", "m1", "m2", "m3"]);
}

#[tokio::test]
async fn recover_redelivers_unacknowledged_messages() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "recovered").await;
    fill(&ch, "recovered", 2).await;
    let consumer_ch = channel(&connection).await;
    let mut consumer = consume(&consumer_ch, "recovered").await;
    for _ in 0..2 {
        assert!(!next(&mut consumer).await.redelivered);
    }
    within(
        "basic.recover",
        consumer_ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("basic.recover-ok");
    for i in 0..2 {
        let delivery = next(&mut consumer).await;
        assert_eq!(text(&delivery.data), format!("m{i}"));
        assert!(delivery.redelivered);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack redelivery");
    }
    assert_eq!(ready(&ch, "recovered").await, 0);
}

#[tokio::test]
async fn recover_without_requeue_is_not_implemented() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_code(
        within(
            "basic.recover",
            ch.basic_recover(BasicRecoverOptions { requeue: false }),
        )
        .await,
        code::NOT_IMPLEMENTED,
        "recover requeue=false",
    );
    until("connection closed", || {
        let closed = !connection.status().connected();
        async move { closed }
    })
    .await;
}

#[tokio::test]
async fn unacknowledged_messages_return_when_their_channel_closes() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "channel-requeue").await;
    fill(&ch, "channel-requeue", 3).await;
    let consumer_ch = channel(&connection).await;
    let mut consumer = consume(&consumer_ch, "channel-requeue").await;
    let first = next(&mut consumer).await;
    next(&mut consumer).await;
    next(&mut consumer).await;
    ack(&consumer_ch, first.delivery_tag, false).await;
    within("channel.close", consumer_ch.close(200, "OK".into()))
        .await
        .expect("close");
    assert_eq!(ready(&ch, "channel-requeue").await, 2);
    for i in 1..3 {
        let back = get(&ch, "channel-requeue", true).await;
        assert_eq!(text(&back.delivery.data), format!("m{i}"));
        assert!(back.delivery.redelivered);
    }
}

#[tokio::test]
async fn unacknowledged_messages_return_when_their_connection_closes() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "connection-requeue").await;
    fill(&ch, "connection-requeue", 3).await;
    let worker = connect(&broker).await;
    let worker_ch = channel(&worker).await;
    qos(&worker_ch, 2, false).await;
    let mut consumer = consume(&worker_ch, "connection-requeue").await;
    next(&mut consumer).await;
    next(&mut consumer).await;
    let _got = get(&worker_ch, "connection-requeue", false)
        .await
        .delivery_tag;
    assert_eq!(ready(&ch, "connection-requeue").await, 0);
    within("connection.close", worker.close(200, "OK".into()))
        .await
        .expect("close");
    until("all three messages back", || {
        let ch = ch.clone();
        async move { ready(&ch, "connection-requeue").await == 3 }
    })
    .await;
    let back = get(&ch, "connection-requeue", true).await;
    assert!(back.delivery.redelivered);
}

#[tokio::test]
async fn consumers_of_one_queue_take_turns() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "round-robin").await;
    let consumer_ch = channel(&connection).await;
    let mut a = consume_with(
        &consumer_ch,
        "round-robin",
        "a",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let mut b = consume_with(
        &consumer_ch,
        "round-robin",
        "b",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    fill(&ch, "round-robin", 6).await;
    let mut at_a = Vec::new();
    let mut at_b = Vec::new();
    for _ in 0..3 {
        at_a.push(text(&next(&mut a).await.data));
        at_b.push(text(&next(&mut b).await.data));
    }
    assert_eq!(at_a.len(), 3);
    assert_eq!(at_b.len(), 3);
    let mut all: Vec<String> = at_a.iter().chain(at_b.iter()).cloned().collect();
    all.sort();
    assert_eq!(all, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // Alternating: one consumer got the even messages, the other the odd ones.
    let evens = ["m0", "m2", "m4"];
    let odds = ["m1", "m3", "m5"];
    assert!(
        (at_a == evens && at_b == odds) || (at_a == odds && at_b == evens),
        "a got {at_a:?}, b got {at_b:?}"
    );
    nothing_more(&mut a, "six delivered").await;
}

fn every_header_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert(
        "inner".into(),
        AMQPValue::LongString(LongString::from("deep")),
    );
    let mut headers = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-1600)),
        ("u16", AMQPValue::ShortUInt(60000)),
        ("i32", AMQPValue::LongInt(-320_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-64_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("string", AMQPValue::LongString(LongString::from("héllo"))),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString(LongString::from("two")),
                AMQPValue::Void,
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 255])),
        ),
        ("void", AMQPValue::Void),
    ];
    for (key, value) in values {
        headers.insert(key.into(), value);
    }
    headers
}

#[tokio::test]
async fn every_property_and_header_type_round_trips() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "props").await;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_header_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("junction-tests".into())
        .with_cluster_id("cluster-x".into());
    publish_with(&ch, "", "props", b"{}", properties.clone()).await;

    let mut consumer = consume(&ch, "props").await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.properties, properties, "delivered properties");
    delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    let redelivered = next(&mut consumer).await;
    assert_eq!(redelivered.properties, properties, "after a requeue");
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    redelivered
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    let got = get(&ch, "props", true).await;
    assert_eq!(got.delivery.properties, properties, "through basic.get");
}

#[tokio::test]
async fn a_one_mebibyte_body_survives_frame_splitting() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "large").await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert!(
        body.len() > connection.configuration().frame_max() as usize * 4,
        "spans several frames"
    );
    publish(&ch, "", "large", &body).await;
    let mut consumer = consume(&ch, "large").await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.data.len(), body.len());
    assert!(delivery.data == body, "identical bytes");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    publish(&ch, "", "large", &body).await;
    let got = next(&mut consumer).await;
    assert!(got.data == body, "a second one too");
}

#[tokio::test]
async fn an_empty_body_is_delivered_as_empty() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "empty").await;
    publish_with(
        &ch,
        "",
        "empty",
        b"",
        BasicProperties::default().with_message_id("nothing".into()),
    )
    .await;
    let got = get(&ch, "empty", true).await;
    assert!(got.delivery.data.is_empty());
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("nothing")
    );
    publish(&ch, "", "empty", b"").await;
    let mut consumer = consume(&ch, "empty").await;
    assert!(next(&mut consumer).await.data.is_empty());
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_closes_the_connection() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "tag-a").await;
    declare(&ch, "tag-b").await;
    let _first = consume_with(&ch, "tag-a", "same-tag", BasicConsumeOptions::default()).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(
                "tag-b".into(),
                "same-tag".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::NOT_ALLOWED,
        "reused consumer tag",
    );
    until("connection closed", || {
        let closed = !connection.status().connected();
        async move { closed }
    })
    .await;
}

#[tokio::test]
async fn the_same_consumer_tag_on_another_channel_is_fine() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "tag-shared").await;
    let _first = consume_with(
        &ch,
        "tag-shared",
        "same-tag",
        BasicConsumeOptions::default(),
    )
    .await;
    let other = channel(&connection).await;
    let _second = consume_with(
        &other,
        "tag-shared",
        "same-tag",
        BasicConsumeOptions::default(),
    )
    .await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    let mut errors = ErrorWatch::new(&connection);
    ack(&ch, 42, false).await;
    errors
        .expect(code::PRECONDITION_FAILED, "ack of an unknown tag")
        .await;
    assert!(connection.status().connected(), "406 is a channel error");

    // Acking the same delivery twice is the same error.
    let ch = channel(&connection).await;
    declare(&ch, "double-ack").await;
    fill(&ch, "double-ack", 1).await;
    let got = get(&ch, "double-ack", false).await;
    ack(&ch, got.delivery.delivery_tag, false).await;
    ack(&ch, got.delivery.delivery_tag, false).await;
    errors
        .expect(code::PRECONDITION_FAILED, "second ack of a tag")
        .await;

    // Rejects and nacks name tags the same way.
    let ch = channel(&connection).await;
    within(
        "basic.reject",
        ch.basic_reject(7, BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("send reject");
    errors
        .expect(code::PRECONDITION_FAILED, "reject of an unknown tag")
        .await;
}

#[tokio::test]
async fn ack_multiple_of_a_tag_that_is_not_outstanding_closes_the_channel() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "multi-unknown").await;
    fill(&ch, "multi-unknown", 3).await;
    let first = get(&ch, "multi-unknown", false).await;
    let second = get(&ch, "multi-unknown", false).await;
    let third = get(&ch, "multi-unknown", false).await;
    ack(&ch, third.delivery.delivery_tag, false).await;
    let mut errors = ErrorWatch::new(&connection);
    // Tags 1 and 2 are outstanding, 3 is not: RabbitMQ looks for tag 3 and fails.
    ack(&ch, third.delivery.delivery_tag, true).await;
    errors
        .expect(
            code::PRECONDITION_FAILED,
            "multiple ack up to a settled tag",
        )
        .await;
    let _ = (first, second);
}

#[tokio::test]
async fn ack_multiple_of_tag_zero_settles_everything() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "ack-all").await;
    fill(&ch, "ack-all", 3).await;
    for _ in 0..3 {
        get(&ch, "ack-all", false).await;
    }
    ack(&ch, 0, true).await;
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "ack-all").await, 0, "all three were acked");
}

#[tokio::test]
async fn a_user_id_that_is_not_the_logged_in_user_is_refused() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "user-id").await;
    publish_with(
        &ch,
        "",
        "user-id",
        b"honest",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    assert_eq!(ready(&ch, "user-id").await, 1, "the real user is fine");

    let mut errors = ErrorWatch::new(&connection);
    publish_with(
        &ch,
        "",
        "user-id",
        b"impostor",
        BasicProperties::default().with_user_id("admin".into()),
    )
    .await;
    errors
        .expect(code::PRECONDITION_FAILED, "user_id mismatch")
        .await;
    let ch = channel(&connection).await;
    assert_eq!(
        ready(&ch, "user-id").await,
        1,
        "the impostor was not enqueued"
    );
}

#[tokio::test]
async fn an_invalid_expiration_property_is_refused() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "expiring").await;
    let mut errors = ErrorWatch::new(&connection);
    publish_with(
        &ch,
        "",
        "expiring",
        b"x",
        BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    errors
        .expect(code::PRECONDITION_FAILED, "expiration 'soon'")
        .await;
}

#[tokio::test]
async fn a_small_frame_max_splits_bodies_into_many_frames() {
    let broker = Broker::start();
    let connection = try_connect(&format!("{}?frame_max=4096", broker.amqp_url()))
        .await
        .expect("connect with frame_max 4096");
    assert_eq!(connection.configuration().frame_max(), 4096);
    let ch = channel(&connection).await;
    declare(&ch, "small-frames").await;
    let body: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
    publish(&ch, "", "small-frames", &body).await;
    let got = get(&ch, "small-frames", true).await;
    assert!(
        got.delivery.data == body,
        "identical after ~25 body frames each way"
    );
}

#[tokio::test]
async fn per_consumer_qos_only_applies_to_consumers_created_after_it() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "qos-later").await;
    let consumer_ch = channel(&connection).await;
    let mut unlimited = consume(&consumer_ch, "qos-later").await;
    qos(&consumer_ch, 1, false).await;
    fill(&ch, "qos-later", 3).await;
    for _ in 0..3 {
        next(&mut unlimited).await;
    }
    assert_eq!(
        ready(&ch, "qos-later").await,
        0,
        "the earlier consumer is not limited"
    );
}

#[tokio::test]
async fn a_message_over_the_maximum_size_is_refused() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "huge").await;
    let mut errors = ErrorWatch::new(&connection);
    let body = vec![7u8; 16 * 1024 * 1024 + 1];
    publish(&ch, "", "huge", &body).await;
    errors
        .expect(code::PRECONDITION_FAILED, "16 MiB + 1 byte")
        .await;
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "huge").await, 0);
}
