//! The exchange class with lapin: declaring every type (and the `x-random` plugin type), passive
//! and inequivalent declares, reserved names, deletes, internal and auto-delete exchanges,
//! exchange-to-exchange bindings and the routing of direct, fanout, topic and headers exchanges.

mod common;

use common::*;
use junction_tests::Broker;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions,
    QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, options, FieldTable::default()),
    )
    .await
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    declare_exchange(ch, name, kind, ExchangeDeclareOptions::default())
        .await
        .expect("exchange.declare");
}

async fn bind_with(ch: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            arguments,
        ),
    )
    .await
    .expect("queue.bind");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_with(ch, queue, exchange, key, FieldTable::default()).await;
}

async fn exchange_bind(
    ch: &Channel,
    destination: &str,
    source: &str,
    key: &str,
) -> lapin::Result<()> {
    within(
        "exchange.bind",
        ch.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn delete_exchange(ch: &Channel, name: &str, if_unused: bool) -> lapin::Result<()> {
    within(
        "exchange.delete",
        ch.exchange_delete(
            name.into(),
            ExchangeDeleteOptions {
                if_unused,
                ..Default::default()
            },
        ),
    )
    .await
}

/// Declares queues named `names` on `ch`.
async fn queues(ch: &Channel, names: &[&str]) {
    for name in names {
        declare(ch, name).await;
    }
}

/// The ready counts of `names`, read on `ch` after everything it published.
async fn counts(ch: &Channel, names: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for name in names {
        out.push(ready(ch, name).await);
    }
    out
}

#[tokio::test]
async fn every_builtin_type_and_the_plugin_type_can_be_declared() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    for (name, kind) in [
        ("t-direct", ExchangeKind::Direct),
        ("t-fanout", ExchangeKind::Fanout),
        ("t-topic", ExchangeKind::Topic),
        ("t-headers", ExchangeKind::Headers),
        ("t-random", ExchangeKind::Custom("x-random".into())),
    ] {
        exchange(&ch, name, kind.clone()).await;
        // An identical redeclare and a passive declare are fine.
        exchange(&ch, name, kind).await;
        declare_exchange(
            &ch,
            name,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .await
        .expect("passive declare of an existing exchange");
    }
}

/// As in RabbitMQ 4: an unknown type is a precondition failure that closes only the channel
/// (RabbitMQ 3 closed the connection with 503).
#[tokio::test]
async fn an_unknown_exchange_type_closes_the_channel_with_precondition_failed() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_code(
        declare_exchange(
            &ch,
            "typo",
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::PRECONDITION_FAILED,
        "unknown exchange type",
    );
    let fresh = channel(&connection).await;
    declare(&fresh, "still-usable").await;
}

#[tokio::test]
async fn an_unknown_exchange_type_is_refused_even_for_an_existing_name() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    assert_code(
        declare_exchange(
            &ch,
            "amq.direct",
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await,
        code::PRECONDITION_FAILED,
        "unknown type on amq.direct",
    );
}

#[tokio::test]
async fn a_passive_declare_of_a_missing_exchange_is_not_found() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    assert_code(
        declare_exchange(
            &ch,
            "missing-exchange",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .await,
        code::NOT_FOUND,
        "passive declare of a missing exchange",
    );
    assert!(connection.status().connected(), "404 is a channel error");
}

#[tokio::test]
async fn an_inequivalent_redeclare_is_a_precondition_failure() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    exchange(&ch, "eq", ExchangeKind::Direct).await;

    let cases: [(&str, ExchangeKind, ExchangeDeclareOptions); 4] = [
        (
            "type",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
        ),
        (
            "durable",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        (
            "auto_delete",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        ),
        (
            "internal",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
        ),
    ];
    for (field, kind, options) in cases {
        let ch = channel(&connection).await;
        assert_code(
            declare_exchange(&ch, "eq", kind, options).await,
            code::PRECONDITION_FAILED,
            &format!("redeclare with a different {field}"),
        );
    }
    // The standard exchanges are durable: a transient redeclare differs too.
    let ch = channel(&connection).await;
    assert_code(
        declare_exchange(
            &ch,
            "amq.direct",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::PRECONDITION_FAILED,
        "transient redeclare of amq.direct",
    );
    let ch = channel(&connection).await;
    declare_exchange(
        &ch,
        "amq.topic",
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .expect("an equivalent redeclare of a standard exchange is fine");
}

#[tokio::test]
async fn the_amq_prefix_is_reserved() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(
        declare_exchange(
            &ch,
            "amq.mine",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::ACCESS_REFUSED,
        "declare amq.mine",
    );
    assert!(connection.status().connected(), "403 is a channel error");
    let ch = channel(&connection).await;
    assert_code(
        delete_exchange(&ch, "amq.direct", false).await,
        code::ACCESS_REFUSED,
        "delete amq.direct",
    );
    assert!(exchange_exists(&connection, "amq.direct").await);
}

#[tokio::test]
async fn the_default_exchange_cannot_be_deleted() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    assert_code(
        delete_exchange(&ch, "", false).await,
        code::ACCESS_REFUSED,
        "delete the default exchange",
    );
}

#[tokio::test]
async fn the_default_exchange_cannot_be_declared() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(
        declare_exchange(
            &ch,
            "",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await,
        code::ACCESS_REFUSED,
        "declare the default exchange",
    );
    let ch = channel(&connection).await;
    assert_code(
        declare_exchange(
            &ch,
            "",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .await,
        code::ACCESS_REFUSED,
        "passive declare of the default exchange",
    );
}

#[tokio::test]
async fn delete_if_unused_refuses_an_exchange_with_bindings() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    exchange(&ch, "used", ExchangeKind::Fanout).await;
    declare(&ch, "used-q").await;
    bind(&ch, "used-q", "used", "").await;
    assert_code(
        delete_exchange(&ch, "used", true).await,
        code::PRECONDITION_FAILED,
        "delete if-unused of a bound exchange",
    );
    assert!(exchange_exists(&connection, "used").await);

    // Without if-unused it goes, with its bindings.
    let ch = channel(&connection).await;
    delete_exchange(&ch, "used", false)
        .await
        .expect("plain delete");
    assert!(!exchange_exists(&connection, "used").await);
    exchange(&ch, "used", ExchangeKind::Fanout).await;
    publish(&ch, "used", "", b"x").await;
    assert_eq!(ready(&ch, "used-q").await, 0, "the old binding is gone");
}

#[tokio::test]
async fn delete_if_unused_only_counts_bindings_where_the_exchange_is_the_source() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    exchange(&ch, "only-destination", ExchangeKind::Fanout).await;
    exchange_bind(&ch, "only-destination", "amq.fanout", "")
        .await
        .expect("exchange.bind");
    delete_exchange(&ch, "only-destination", true)
        .await
        .expect("an exchange that is only a destination is unused");
    assert!(!exchange_exists(&connection, "only-destination").await);
}

#[tokio::test]
async fn deleting_a_missing_exchange_is_fine() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    delete_exchange(&ch, "never-declared", false)
        .await
        .expect("delete of a missing exchange");
    delete_exchange(&ch, "never-declared", true)
        .await
        .expect("delete if-unused of a missing exchange");
    assert!(connection.status().connected());
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_not_found() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    let mut errors = ErrorWatch::new(&connection);
    publish(&ch, "no-such-exchange", "k", b"x").await;
    errors
        .expect(code::NOT_FOUND, "publish to a missing exchange")
        .await;
    assert!(connection.status().connected());
}

#[tokio::test]
async fn an_internal_exchange_refuses_publishes_but_routes_from_other_exchanges() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    declare_exchange(
        &ch,
        "inside",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
    )
    .await
    .expect("declare internal");
    exchange(&ch, "front", ExchangeKind::Direct).await;
    declare(&ch, "inside-q").await;
    bind(&ch, "inside-q", "inside", "").await;
    exchange_bind(&ch, "inside", "front", "k")
        .await
        .expect("bind internal exchange as destination");
    publish(&ch, "front", "k", b"via front").await;
    assert_eq!(ready(&ch, "inside-q").await, 1);

    let mut errors = ErrorWatch::new(&connection);
    publish(&ch, "inside", "", b"direct to internal").await;
    errors
        .expect(code::ACCESS_REFUSED, "publish to an internal exchange")
        .await;
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "inside-q").await, 1, "nothing more arrived");
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_when_its_last_binding_goes() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_exchange(&ch, "ephemeral", ExchangeKind::Direct, auto_delete)
        .await
        .expect("declare");
    assert!(
        exchange_exists(&connection, "ephemeral").await,
        "never bound: still there"
    );
    queues(&ch, &["eph-a", "eph-b"]).await;
    bind(&ch, "eph-a", "ephemeral", "a").await;
    bind(&ch, "eph-b", "ephemeral", "b").await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "eph-a".into(),
            "ephemeral".into(),
            "a".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind a");
    assert!(
        exchange_exists(&connection, "ephemeral").await,
        "one binding left"
    );
    // Deleting the last bound queue removes the last binding.
    within(
        "queue.delete",
        ch.queue_delete("eph-b".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete eph-b");
    assert!(!exchange_exists(&connection, "ephemeral").await);

    // The same through queue.unbind.
    declare_exchange(&ch, "ephemeral2", ExchangeKind::Fanout, auto_delete)
        .await
        .expect("declare");
    bind(&ch, "eph-a", "ephemeral2", "").await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "eph-a".into(),
            "ephemeral2".into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind");
    assert!(!exchange_exists(&connection, "ephemeral2").await);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_until_unbound() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "e2e-src", ExchangeKind::Topic).await;
    exchange(&ch, "e2e-dst", ExchangeKind::Fanout).await;
    declare(&ch, "e2e-q").await;
    bind(&ch, "e2e-q", "e2e-dst", "").await;
    exchange_bind(&ch, "e2e-dst", "e2e-src", "orders.*")
        .await
        .expect("exchange.bind");

    publish(&ch, "e2e-src", "orders.new", b"1").await;
    publish(&ch, "e2e-src", "invoices.new", b"not matched").await;
    assert_eq!(ready(&ch, "e2e-q").await, 1);
    let got = get(&ch, "e2e-q", true).await;
    assert_eq!(
        got.delivery.exchange.as_str(),
        "e2e-src",
        "the original exchange"
    );
    assert_eq!(got.delivery.routing_key.as_str(), "orders.new");

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            "e2e-dst".into(),
            "e2e-src".into(),
            "orders.*".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, "e2e-src", "orders.new", b"2").await;
    assert_eq!(ready(&ch, "e2e-q").await, 0, "unbound: no longer routed");
}

#[tokio::test]
async fn exchange_bind_needs_both_exchanges() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    exchange(&ch, "present", ExchangeKind::Direct).await;
    assert_code(
        exchange_bind(&ch, "present", "absent-source", "").await,
        code::NOT_FOUND,
        "missing source",
    );
    let ch = channel(&connection).await;
    assert_code(
        exchange_bind(&ch, "absent-destination", "present", "").await,
        code::NOT_FOUND,
        "missing destination",
    );
    let ch = channel(&connection).await;
    assert_code(
        exchange_bind(&ch, "present", "", "").await,
        code::ACCESS_REFUSED,
        "the default exchange as source",
    );
}

#[tokio::test]
async fn a_cycle_of_exchange_bindings_delivers_once() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "ring-a", ExchangeKind::Fanout).await;
    exchange(&ch, "ring-b", ExchangeKind::Fanout).await;
    exchange_bind(&ch, "ring-b", "ring-a", "")
        .await
        .expect("a -> b");
    exchange_bind(&ch, "ring-a", "ring-b", "")
        .await
        .expect("b -> a");
    declare(&ch, "ring-q").await;
    bind(&ch, "ring-q", "ring-a", "").await;
    bind(&ch, "ring-q", "ring-b", "").await;
    publish(&ch, "ring-a", "", b"once").await;
    assert_eq!(ready(&ch, "ring-q").await, 1);
}

#[tokio::test]
async fn direct_exchanges_route_by_exact_key() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    let names = ["d-red", "d-red2", "d-blue"];
    queues(&ch, &names).await;
    bind(&ch, "d-red", "d", "red").await;
    bind(&ch, "d-red2", "d", "red").await;
    bind(&ch, "d-blue", "d", "blue").await;
    bind(&ch, "d-blue", "d", "navy").await;
    publish(&ch, "d", "red", b"r").await;
    publish(&ch, "d", "blue", b"b").await;
    publish(&ch, "d", "navy", b"n").await;
    publish(&ch, "d", "green", b"g").await;
    publish(&ch, "d", "RED", b"case matters").await;
    assert_eq!(counts(&ch, &names).await, vec![1, 1, 2]);
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "by-name").await;
    publish(&ch, "", "by-name", b"x").await;
    publish(&ch, "", "no-such-queue", b"dropped").await;
    assert_eq!(ready(&ch, "by-name").await, 1);
}

#[tokio::test]
async fn fanout_exchanges_ignore_the_key() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "f", ExchangeKind::Fanout).await;
    let names = ["f-1", "f-2", "f-3"];
    queues(&ch, &names).await;
    for name in names {
        bind(&ch, name, "f", "ignored").await;
    }
    publish(&ch, "f", "anything", b"x").await;
    publish(&ch, "f", "", b"y").await;
    assert_eq!(counts(&ch, &names).await, vec![2, 2, 2]);
}

#[tokio::test]
async fn topic_exchanges_match_words_with_star_and_hash() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    let names = ["t-star", "t-hash", "t-all", "t-exact"];
    queues(&ch, &names).await;
    bind(&ch, "t-star", "t", "*.orange.*").await;
    bind(&ch, "t-hash", "t", "lazy.#").await;
    bind(&ch, "t-all", "t", "#").await;
    bind(&ch, "t-exact", "t", "quick.orange.rabbit").await;
    for key in [
        "quick.orange.rabbit",      // star, all, exact
        "lazy.orange.elephant",     // star, hash, all
        "quick.orange.fox",         // star, all
        "lazy.brown.fox",           // hash, all
        "lazy",                     // hash (# matches zero words), all
        "quick.orange.male.rabbit", // all
        "orange",                   // all
    ] {
        publish(&ch, "t", key, key.as_bytes()).await;
    }
    assert_eq!(counts(&ch, &names).await, vec![3, 3, 7, 1]);
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn s(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[tokio::test]
async fn headers_exchanges_match_all_or_any() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    let names = ["h-all", "h-any", "h-default"];
    queues(&ch, &names).await;
    bind_with(
        &ch,
        "h-all",
        "h",
        "",
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    bind_with(
        &ch,
        "h-any",
        "h",
        "",
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    // Without x-match, all is the default.
    bind_with(
        &ch,
        "h-default",
        "h",
        "",
        table(&[("format", s("pdf")), ("type", s("report"))]),
    )
    .await;

    let with_headers =
        |pairs: &[(&str, AMQPValue)]| BasicProperties::default().with_headers(table(pairs));
    publish_with(
        &ch,
        "h",
        "",
        b"both",
        with_headers(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("extra", s("x")),
        ]),
    )
    .await;
    publish_with(&ch, "h", "", b"one", with_headers(&[("format", s("pdf"))])).await;
    publish_with(
        &ch,
        "h",
        "",
        b"wrong value",
        with_headers(&[("format", s("zip"))]),
    )
    .await;
    publish_with(&ch, "h", "", b"no headers", BasicProperties::default()).await;
    assert_eq!(counts(&ch, &names).await, vec![1, 2, 1]);
}

#[tokio::test]
async fn the_random_exchange_delivers_each_message_to_one_binding() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    exchange(&ch, "r", ExchangeKind::Custom("x-random".into())).await;
    let names = ["r-1", "r-2", "r-3"];
    queues(&ch, &names).await;
    for name in names {
        bind(&ch, name, "r", "").await;
    }
    for i in 0..60 {
        publish(&ch, "r", "", format!("{i}").as_bytes()).await;
    }
    let got = counts(&ch, &names).await;
    assert_eq!(
        got.iter().sum::<u32>(),
        60,
        "each message exactly once: {got:?}"
    );
    assert!(
        got.iter().filter(|n| **n > 0).count() >= 2,
        "spread over the bindings: {got:?}"
    );
}

#[tokio::test]
async fn an_invalid_x_match_is_refused_when_binding() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "bad-match").await;
    assert_code(
        within(
            "queue.bind",
            ch.queue_bind(
                "bad-match".into(),
                "amq.headers".into(),
                "".into(),
                QueueBindOptions::default(),
                table(&[("x-match", s("some")), ("a", s("1"))]),
            ),
        )
        .await,
        code::PRECONDITION_FAILED,
        "x-match = some",
    );
    assert!(connection.status().connected());
}
