//! Authorisation of AMQP declarations that act on other resources (issue 13, defect 16), with
//! RabbitMQ's rules: a new queue with `x-dead-letter-exchange` needs read on the queue and
//! write on that exchange; a new exchange with `alternate-exchange` needs read on itself and
//! write on the alternate; a passive declaration needs some permission on what it names.
//! Without the first two, a user that may not publish to `amq.topic` reached MQTT topics
//! through a dead-letter or alternate exchange. And the connection's cache of those answers
//! stays bounded however many names a client asks about.

mod common;
// A few of the hand-made AMQP frames are used here.
#[allow(dead_code)]
mod support;

use common::*;
use junction_tests::Broker;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use support::raw_amqp::{RawClient, basic_publish, channel_open, content_header};

/// guest may do anything; `dana` only touches names starting with `dana-`.
fn broker_with_dana() -> Broker {
    broker_with_config(
        "robust-auth",
        r#"
[[vhosts]]
name = "/"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "dana"
password = "dana"
permissions = [{ vhost = "/", configure = "^dana-", write = "^dana-", read = "^dana-" }]
"#,
    )
}

async fn dana(broker: &Broker) -> lapin::Connection {
    try_connect(&format!("amqp://dana:dana@{}/%2f", broker.amqp_addr()))
        .await
        .expect("dana connects")
}

fn with_string(key: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        key.into(),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
    table
}

async fn declare_queue_with(
    connection: &lapin::Connection,
    name: &str,
    arguments: FieldTable,
) -> lapin::Result<lapin::Queue> {
    let ch = channel(connection).await;
    within(
        "queue.declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments),
    )
    .await
}

async fn declare_exchange_with(
    connection: &lapin::Connection,
    name: &str,
    arguments: FieldTable,
) -> lapin::Result<()> {
    let ch = channel(connection).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            arguments,
        ),
    )
    .await
}

#[tokio::test]
async fn a_dead_letter_exchange_needs_write_permission_on_it() {
    let broker = broker_with_dana();
    let dana = dana(&broker).await;
    assert_code(
        declare_queue_with(
            &dana,
            "dana-dl",
            with_string("x-dead-letter-exchange", "amq.topic"),
        )
        .await,
        code::ACCESS_REFUSED,
        "dead-lettering to amq.topic, which dana may not write to",
    );
    assert_code(
        declare_queue_with(&dana, "dana-dl", with_string("x-dead-letter-exchange", "")).await,
        code::ACCESS_REFUSED,
        "dead-lettering to the default exchange (amq.default)",
    );
    assert!(!exists(&dana, "dana-dl").await, "nothing was declared");
    declare_queue_with(
        &dana,
        "dana-dl",
        with_string("x-dead-letter-exchange", "dana-dlx"),
    )
    .await
    .expect("dead-lettering to an exchange dana may write to");
    // Redeclaring the existing queue asks configure only, as in RabbitMQ.
    declare_queue_with(
        &dana,
        "dana-dl",
        with_string("x-dead-letter-exchange", "dana-dlx"),
    )
    .await
    .expect("redeclaration");
}

#[tokio::test]
async fn an_alternate_exchange_needs_write_permission_on_it() {
    let broker = broker_with_dana();
    let dana = dana(&broker).await;
    assert_code(
        declare_exchange_with(
            &dana,
            "dana-x",
            with_string("alternate-exchange", "amq.topic"),
        )
        .await,
        code::ACCESS_REFUSED,
        "amq.topic as alternate exchange, which dana may not write to",
    );
    assert!(
        !exchange_exists(&dana, "dana-x").await,
        "nothing was declared"
    );
    declare_exchange_with(
        &dana,
        "dana-x",
        with_string("alternate-exchange", "dana-ae"),
    )
    .await
    .expect("an alternate exchange dana may write to");
    declare_exchange_with(
        &dana,
        "dana-x",
        with_string("alternate-exchange", "dana-ae"),
    )
    .await
    .expect("redeclaration");
}

#[tokio::test]
async fn a_passive_declaration_needs_some_permission_on_what_it_names() {
    let broker = broker_with_dana();
    let (_guest, guest_ch) = open(&broker).await;
    declare(&guest_ch, "guest-private").await;
    let dana = dana(&broker).await;
    let ch = channel(&dana).await;
    assert_code(
        passive(&ch, "guest-private").await,
        code::ACCESS_REFUSED,
        "passive queue.declare of a queue dana has no permission on",
    );
    let ch = channel(&dana).await;
    assert_code(
        within(
            "passive exchange.declare",
            ch.exchange_declare(
                "amq.fanout".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "passive exchange.declare of an exchange dana has no permission on",
    );
    // Its own names: the answer is whether they exist.
    let ch = channel(&dana).await;
    assert_code(
        passive(&ch, "dana-missing").await,
        code::NOT_FOUND,
        "passive declare of a missing queue dana may use",
    );
}

/// The broker's resident memory in KiB.
fn resident_kib(broker: &Broker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
        .expect("the broker's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

#[test]
fn publishing_to_ever_new_exchange_names_does_not_grow_the_connection() {
    // Each publish to a missing exchange is asked for write permission (cached per connection)
    // and then closes its channel with 404; 200,000 names of 200 bytes made one connection hold
    // 55 MiB of cached answers before the cache was bounded (100,000 here).
    const CHANNELS: u16 = 256;
    const ROUNDS: usize = 400;
    let broker = Broker::start();
    let mut client = RawClient::open(broker.amqp_addr());
    let padding = "x".repeat(180);
    let round = |n: usize, client: &mut RawClient| {
        let mut batch = Vec::new();
        for channel in 1..=CHANNELS {
            batch.extend(channel_open().frame(channel));
            let exchange = format!("missing-{n:05}-{channel:04}-{padding}");
            batch.extend(basic_publish(&exchange, "k").frame(channel));
            batch.extend(content_header(channel, 0));
        }
        client.send(&batch);
        let mut closed = 0;
        while closed < CHANNELS {
            let frame = client.expect_frame("channel.close");
            match frame.method_ids() {
                Some((20, 40)) => closed += 1,
                Some((20, 11)) => {}
                other => panic!("expected channel.open-ok or channel.close, got {other:?}"),
            }
        }
        let mut close_oks = Vec::new();
        for channel in 1..=CHANNELS {
            close_oks.extend(support::raw_amqp::Method::new(20, 41).frame(channel));
        }
        client.send(&close_oks);
    };
    // Warm up (buffers, the connection's tables at their working size), then measure.
    for n in 0..20 {
        round(n, &mut client);
    }
    let before = resident_kib(&broker);
    for n in 20..ROUNDS {
        round(n, &mut client);
    }
    let grown = resident_kib(&broker).saturating_sub(before);
    eprintln!("resident memory grew by {grown} KiB");
    assert!(
        grown < 12 * 1024,
        "the broker grew by {grown} KiB for one connection's publishes to missing exchanges"
    );
}
