//! The queue class with lapin: server-named, passive, inequivalent, exclusive and auto-delete
//! queues, reserved names, bind/unbind, purge and delete (with if-unused and if-empty), and the
//! counts in declare-ok.

mod common;

use common::*;
use junction_tests::Broker;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

async fn declare_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), options, arguments),
    )
    .await
}

async fn delete(ch: &Channel, queue: &str, options: QueueDeleteOptions) -> lapin::Result<u32> {
    within("queue.delete", ch.queue_delete(queue.into(), options)).await
}

async fn purge(ch: &Channel, queue: &str) -> lapin::Result<u32> {
    within(
        "queue.purge",
        ch.queue_purge(queue.into(), QueuePurgeOptions::default()),
    )
    .await
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

fn ttl(ms: i32) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    arguments
}

/// Publishes `n` messages to `queue` through the default exchange.
async fn fill(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

async fn gone(connection: &Connection, queue: &str) {
    let queue = queue.to_owned();
    until(&format!("queue {queue} deleted"), || {
        let queue = queue.clone();
        async move { !exists(connection, &queue).await }
    })
    .await;
}

#[tokio::test]
async fn an_empty_name_gets_a_server_generated_one() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    let first = declare_with(&ch, "", exclusive(), FieldTable::default())
        .await
        .expect("declare");
    let second = declare_with(&ch, "", exclusive(), FieldTable::default())
        .await
        .expect("declare");
    let name = first.name().as_str();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(name.len() > "amq.gen-".len() + 10, "{name}");
    assert_ne!(name, second.name().as_str());
    // The generated name is a usable queue name.
    publish(&ch, "", name, b"to generated").await;
    assert_eq!(ready(&ch, name).await, 1);
}

#[tokio::test]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    let declared = declare_with(
        &ch,
        "counted",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    assert_eq!(
        (declared.message_count(), declared.consumer_count()),
        (0, 0)
    );
    fill(&ch, "counted", 3).await;
    let again = declare_with(
        &ch,
        "counted",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("redeclare");
    assert_eq!((again.message_count(), again.consumer_count()), (3, 0));

    declare(&ch, "watched").await;
    let consumer_ch = channel(&connection).await;
    let _first = consume(&consumer_ch, "watched").await;
    let _second = consume(&consumer_ch, "watched").await;
    let watched = passive(&ch, "watched").await.expect("passive");
    assert_eq!((watched.message_count(), watched.consumer_count()), (0, 2));
}

#[tokio::test]
async fn declare_ok_message_count_excludes_unacknowledged() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "unacked-count").await;
    fill(&ch, "unacked-count", 3).await;
    let _taken = get(&ch, "unacked-count", false).await;
    let again = passive(&ch, "unacked-count").await.expect("passive");
    assert_eq!(again.message_count(), 2);
    assert_eq!(again.consumer_count(), 0);
}

#[tokio::test]
async fn a_passive_declare_of_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_code(
        passive(&ch, "no-such-queue").await,
        code::NOT_FOUND,
        "passive declare",
    );
    assert!(connection.status().connected(), "404 is a channel error");
}

#[tokio::test]
async fn an_inequivalent_redeclare_is_a_precondition_failure() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_with(&ch, "q-eq", QueueDeclareOptions::default(), ttl(60_000))
        .await
        .expect("declare");

    let ch = channel(&connection).await;
    assert_code(
        declare_with(
            &ch,
            "q-eq",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            ttl(60_000),
        )
        .await,
        code::PRECONDITION_FAILED,
        "different durable",
    );
    let ch = channel(&connection).await;
    assert_code(
        declare_with(
            &ch,
            "q-eq",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            ttl(60_000),
        )
        .await,
        code::PRECONDITION_FAILED,
        "different auto_delete",
    );
    let ch = channel(&connection).await;
    assert_code(
        declare_with(&ch, "q-eq", QueueDeclareOptions::default(), ttl(1_000)).await,
        code::PRECONDITION_FAILED,
        "different x-message-ttl",
    );
    let ch = channel(&connection).await;
    declare_with(&ch, "q-eq", QueueDeclareOptions::default(), ttl(60_000))
        .await
        .expect("an equivalent redeclare is fine");
}

#[tokio::test]
async fn integer_arguments_of_any_width_are_equivalent_on_redeclare() {
    // amqplib sends small numbers as a byte; pika, kombu and lapin users often as an int.
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    let priority = |value: AMQPValue| {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-priority".into(), value);
        arguments
    };
    declare_with(
        &ch,
        "q-widths",
        QueueDeclareOptions::default(),
        priority(AMQPValue::ShortShortInt(10)),
    )
    .await
    .expect("declare with a byte");
    declare_with(
        &ch,
        "q-widths",
        QueueDeclareOptions::default(),
        priority(AMQPValue::LongInt(10)),
    )
    .await
    .expect("redeclare with an int of the same value");

    let refused = declare_with(
        &ch,
        "q-widths",
        QueueDeclareOptions::default(),
        priority(AMQPValue::LongInt(5)),
    )
    .await
    .expect_err("a different value is refused");
    assert_eq!(reply_code(&refused), Some(code::PRECONDITION_FAILED));
    let text = format!("{refused:?}");
    assert!(
        text.contains("received the value '5' of type 'signedint' but current is the value '10' of type 'byte'"),
        "RabbitMQ's wording: {text}"
    );
}

#[tokio::test]
async fn unknown_queue_arguments_are_not_compared_on_redeclare() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    let mut custom = FieldTable::default();
    custom.insert("x-app-tag".into(), AMQPValue::LongInt(1));
    declare_with(&ch, "q-custom", QueueDeclareOptions::default(), custom)
        .await
        .expect("declare");
    declare_with(
        &ch,
        "q-custom",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("RabbitMQ ignores arguments it does not know when comparing");
}

#[tokio::test]
async fn the_amq_prefix_is_reserved_for_queue_names() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_code(
        declare_with(
            &ch,
            "amq.mine",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        code::ACCESS_REFUSED,
        "declare amq.mine",
    );
    assert!(connection.status().connected(), "403 is a channel error");
}

#[tokio::test]
async fn a_server_named_queue_cannot_be_redeclared_by_name() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    let declared = declare_with(&ch, "", exclusive(), FieldTable::default())
        .await
        .expect("declare");
    let name = declared.name().as_str().to_owned();
    passive(&ch, &name)
        .await
        .expect("a passive declare is fine");
    assert_code(
        declare_with(&ch, &name, exclusive(), FieldTable::default()).await,
        code::ACCESS_REFUSED,
        "non-passive redeclare of amq.gen-...",
    );
}

#[tokio::test]
async fn another_connections_exclusive_queue_is_locked() {
    let broker = Broker::start();
    let owner = connect(&broker).await;
    let owner_ch = channel(&owner).await;
    declare_with(&owner_ch, "mine-only", exclusive(), FieldTable::default())
        .await
        .expect("declare exclusive");
    fill(&owner_ch, "mine-only", 1).await;
    assert_eq!(ready(&owner_ch, "mine-only").await, 1);

    let other = connect(&broker).await;
    let ch = channel(&other).await;
    assert_code(
        declare_with(&ch, "mine-only", exclusive(), FieldTable::default()).await,
        code::RESOURCE_LOCKED,
        "redeclare",
    );
    let ch = channel(&other).await;
    assert_code(
        passive(&ch, "mine-only").await,
        code::RESOURCE_LOCKED,
        "passive",
    );
    let ch = channel(&other).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(
                "mine-only".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::RESOURCE_LOCKED,
        "consume",
    );
    let ch = channel(&other).await;
    assert_code(
        within(
            "basic.get",
            ch.basic_get("mine-only".into(), BasicGetOptions::default()),
        )
        .await,
        code::RESOURCE_LOCKED,
        "get",
    );
    let ch = channel(&other).await;
    assert_code(
        purge(&ch, "mine-only").await,
        code::RESOURCE_LOCKED,
        "purge",
    );
    let ch = channel(&other).await;
    assert_code(
        bind(&ch, "mine-only", "amq.fanout", "").await,
        code::RESOURCE_LOCKED,
        "bind",
    );
    let ch = channel(&other).await;
    assert_code(
        delete(&ch, "mine-only", QueueDeleteOptions::default()).await,
        code::RESOURCE_LOCKED,
        "delete",
    );
    assert!(other.status().connected(), "405 is a channel error");
    assert_eq!(ready(&owner_ch, "mine-only").await, 1, "untouched");
}

#[tokio::test]
async fn an_exclusive_queue_goes_when_its_connection_closes() {
    let broker = Broker::start();
    let owner = connect(&broker).await;
    let owner_ch = channel(&owner).await;
    declare_with(&owner_ch, "short-lived", exclusive(), FieldTable::default())
        .await
        .expect("declare exclusive");
    let observer = connect(&broker).await;
    let probe = channel(&observer).await;
    assert_code(
        passive(&probe, "short-lived").await,
        code::RESOURCE_LOCKED,
        "exists while its owner lives",
    );
    within("connection.close", owner.close(200, "OK".into()))
        .await
        .expect("close owner");
    gone(&observer, "short-lived").await;
    // The name is free again.
    let ch = channel(&observer).await;
    declare(&ch, "short-lived").await;
}

#[tokio::test]
async fn an_exclusive_queue_is_gone_as_soon_as_its_connection_close_completes() {
    let broker = Broker::start();
    let observer = connect(&broker).await;
    for round in 0..50 {
        let owner = connect(&broker).await;
        let owner_ch = channel(&owner).await;
        declare_with(&owner_ch, "reclaimed", exclusive(), FieldTable::default())
            .await
            .expect("declare exclusive");
        let ch = channel(&observer).await;
        within("connection.close", owner.close(200, "OK".into()))
            .await
            .expect("close owner");
        // No polling: a client that reconnects takes the name over at once.
        let result = declare_with(&ch, "reclaimed", exclusive(), FieldTable::default()).await;
        assert!(result.is_ok(), "round {round}: {result:?}");
        // Hand the name back for the next round.
        delete(&ch, "reclaimed", QueueDeleteOptions::default())
            .await
            .expect("delete");
        within("channel.close", ch.close(200, "OK".into()))
            .await
            .expect("close");
    }
}

#[tokio::test]
async fn an_exclusive_queue_is_not_deleted_when_only_its_channel_closes() {
    let broker = Broker::start();
    let owner = connect(&broker).await;
    let first = channel(&owner).await;
    declare_with(&first, "per-connection", exclusive(), FieldTable::default())
        .await
        .expect("declare exclusive");
    within("channel.close", first.close(200, "OK".into()))
        .await
        .expect("close channel");
    let second = channel(&owner).await;
    passive(&second, "per-connection")
        .await
        .expect("still there: exclusivity is per connection");
}

#[tokio::test]
async fn an_auto_delete_queue_goes_when_its_last_consumer_cancels() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_with(
        &ch,
        "auto",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    let first = consume_with(&ch, "auto", "first", BasicConsumeOptions::default()).await;
    let second = consume_with(&ch, "auto", "second", BasicConsumeOptions::default()).await;
    within(
        "basic.cancel",
        ch.basic_cancel(first.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel first");
    assert!(exists(&connection, "auto").await, "one consumer left");
    within(
        "basic.cancel",
        ch.basic_cancel(second.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel second");
    gone(&connection, "auto").await;
}

#[tokio::test]
async fn an_auto_delete_queue_without_consumers_yet_stays() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_with(
        &ch,
        "auto-unused",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    fill(&ch, "auto-unused", 2).await;
    let _ = get(&ch, "auto-unused", true).await;
    assert_eq!(ready(&ch, "auto-unused").await, 1, "never consumed: kept");
}

#[tokio::test]
async fn an_auto_delete_queue_goes_when_its_consumers_channel_closes() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_with(
        &ch,
        "auto-channel",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    let _consumer = consume(&ch, "auto-channel").await;
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    gone(&connection, "auto-channel").await;
}

#[tokio::test]
async fn bind_and_unbind_control_delivery() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "bound").await;
    bind(&ch, "bound", "amq.direct", "key").await.expect("bind");
    // Binding twice is idempotent.
    bind(&ch, "bound", "amq.direct", "key")
        .await
        .expect("bind again");
    publish(&ch, "amq.direct", "key", b"1").await;
    assert_eq!(ready(&ch, "bound").await, 1, "delivered once");
    within(
        "queue.unbind",
        ch.queue_unbind(
            "bound".into(),
            "amq.direct".into(),
            "key".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind");
    publish(&ch, "amq.direct", "key", b"2").await;
    assert_eq!(ready(&ch, "bound").await, 1, "unbound: not delivered");
}

#[tokio::test]
async fn binding_needs_an_existing_exchange_and_queue() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare(&ch, "lonely").await;
    assert_code(
        bind(&ch, "lonely", "no-such-exchange", "k").await,
        code::NOT_FOUND,
        "bind to a missing exchange",
    );
    let ch = channel(&connection).await;
    assert_code(
        bind(&ch, "no-such-queue", "amq.direct", "k").await,
        code::NOT_FOUND,
        "bind a missing queue",
    );
    assert!(connection.status().connected());
}

#[tokio::test]
async fn binding_to_the_default_exchange_is_refused() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare(&ch, "defaulted").await;
    assert_code(
        bind(&ch, "defaulted", "", "defaulted").await,
        code::ACCESS_REFUSED,
        "bind to the default exchange",
    );
    let ch = channel(&connection).await;
    assert_code(
        within(
            "queue.unbind",
            ch.queue_unbind(
                "defaulted".into(),
                "".into(),
                "defaulted".into(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "unbind from the default exchange",
    );
}

#[tokio::test]
async fn purge_drops_ready_messages_and_returns_the_count() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "purged").await;
    fill(&ch, "purged", 5).await;
    let held = get(&ch, "purged", false).await; // unacked: purge leaves it alone
    assert_eq!(purge(&ch, "purged").await.expect("purge"), 4);
    assert_eq!(ready(&ch, "purged").await, 0);
    assert_eq!(purge(&ch, "purged").await.expect("purge"), 0);
    within(
        "basic.reject",
        held.delivery
            .reject(lapin::options::BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    assert_eq!(ready(&ch, "purged").await, 1, "the unacked one survived");
}

#[tokio::test]
async fn purging_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    assert_code(purge(&ch, "nope").await, code::NOT_FOUND, "purge missing");
}

#[tokio::test]
async fn delete_returns_the_message_count_and_removes_the_queue() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare(&ch, "doomed").await;
    bind(&ch, "doomed", "amq.fanout", "").await.expect("bind");
    fill(&ch, "doomed", 3).await;
    assert_eq!(
        delete(&ch, "doomed", QueueDeleteOptions::default())
            .await
            .expect("delete"),
        3
    );
    assert!(!exists(&connection, "doomed").await);
    // Its bindings went with it.
    declare(&ch, "doomed").await;
    publish(&ch, "amq.fanout", "", b"x").await;
    assert_eq!(ready(&ch, "doomed").await, 0);
}

#[tokio::test]
async fn deleting_a_missing_queue_is_fine() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_eq!(
        delete(&ch, "never-was", QueueDeleteOptions::default())
            .await
            .expect("delete missing"),
        0
    );
    assert!(connection.status().connected());
}

#[tokio::test]
async fn delete_if_unused_refuses_a_queue_with_consumers() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let consumer_ch = channel(&connection).await;
    declare(&consumer_ch, "in-use").await;
    let _consumer = consume(&consumer_ch, "in-use").await;
    let ch = channel(&connection).await;
    assert_code(
        delete(
            &ch,
            "in-use",
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await,
        code::PRECONDITION_FAILED,
        "delete if-unused",
    );
    assert!(exists(&connection, "in-use").await);
}

#[tokio::test]
async fn delete_if_empty_refuses_a_queue_with_messages() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare(&ch, "not-empty").await;
    fill(&ch, "not-empty", 1).await;
    assert_code(
        delete(
            &ch,
            "not-empty",
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await,
        code::PRECONDITION_FAILED,
        "delete if-empty",
    );
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "not-empty").await, 1);
    let _ = get(&ch, "not-empty", true).await;
    assert_eq!(
        delete(
            &ch,
            "not-empty",
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect("empty and unused now"),
        0
    );
}

#[tokio::test]
async fn redeclaring_with_a_different_exclusive_flag_is_locked() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_with(&ch, "flip", exclusive(), FieldTable::default())
        .await
        .expect("declare exclusive");
    assert_code(
        declare_with(
            &ch,
            "flip",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        code::RESOURCE_LOCKED,
        "non-exclusive redeclare of the connection's own exclusive queue",
    );
    let ch = channel(&connection).await;
    declare(&ch, "plain-flip").await;
    assert_code(
        declare_with(&ch, "plain-flip", exclusive(), FieldTable::default()).await,
        code::RESOURCE_LOCKED,
        "exclusive redeclare of a shared queue",
    );
}

#[tokio::test]
async fn an_invalid_message_ttl_argument_is_refused() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(
        declare_with(&ch, "bad-ttl", QueueDeclareOptions::default(), ttl(-1)).await,
        code::PRECONDITION_FAILED,
        "x-message-ttl = -1",
    );
    let ch = channel(&connection).await;
    let mut text_ttl = FieldTable::default();
    text_ttl.insert("x-message-ttl".into(), AMQPValue::LongString("soon".into()));
    assert_code(
        declare_with(&ch, "bad-ttl", QueueDeclareOptions::default(), text_ttl).await,
        code::PRECONDITION_FAILED,
        "x-message-ttl = 'soon'",
    );
    assert!(!exists(&connection, "bad-ttl").await);
}

#[tokio::test]
async fn unbinding_a_binding_that_does_not_exist_is_fine() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "never-bound").await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "never-bound".into(),
            "amq.direct".into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind of a missing binding");
    assert!(connection.status().connected());
}

#[tokio::test]
async fn an_empty_queue_name_without_a_previous_declare_is_not_found() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(
        within(
            "basic.get",
            ch.basic_get("".into(), BasicGetOptions::default()),
        )
        .await,
        code::NOT_FOUND,
        "basic.get of '' on a fresh channel",
    );
    let ch = channel(&connection).await;
    assert_code(
        bind(&ch, "", "amq.direct", "k").await,
        code::NOT_FOUND,
        "queue.bind of '' on a fresh channel",
    );
}

#[tokio::test]
async fn an_empty_queue_name_means_the_last_queue_declared_on_the_channel() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    let declared = declare_with(&ch, "", exclusive(), FieldTable::default())
        .await
        .expect("declare");
    let name = declared.name().as_str().to_owned();
    // An empty routing key too stands for the queue's name.
    bind(&ch, "", "amq.direct", "").await.expect("bind ''");
    publish(&ch, "amq.direct", &name, b"via shortcut").await;
    assert_eq!(ready(&ch, &name).await, 1);
    let got = get(&ch, "", true).await;
    assert_eq!(got.delivery.data, b"via shortcut");
    fill(&ch, &name, 2).await;
    assert_eq!(purge(&ch, "").await.expect("purge ''"), 2);
    delete(&ch, "", QueueDeleteOptions::default())
        .await
        .expect("delete ''");
    assert!(!exists(&connection, &name).await);
}
