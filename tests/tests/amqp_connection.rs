//! The connection and channel classes with lapin: PLAIN and AMQPLAIN logins, refused logins and
//! vhosts, per-operation permissions of a restricted user, the capabilities in connection.start,
//! heartbeats, shutdown with connection-forced, and channel open/close/flow and soft errors.

mod common;

use std::time::Duration;

use common::*;
use junction_tests::Broker;
use lapin::options::{
    AccessRequestOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ChannelFlowOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPClass, connection as conn};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A broker with guest, and `alice` who may only touch names starting with `alice-` in `/` and
/// has no permissions at all in vhost `other`.
fn broker_with_alice() -> Broker {
    broker_with_config(
        "alice",
        r#"
[[vhosts]]
name = "/"

[[vhosts]]
name = "other"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [
    { vhost = "/", configure = ".*", write = ".*", read = ".*" },
    { vhost = "other", configure = ".*", write = ".*", read = ".*" },
]

[[users]]
name = "alice"
password = "wonderland"
permissions = [{ vhost = "/", configure = "^alice-", write = "^alice-", read = "^alice-" }]
"#,
    )
}

fn alice_url(broker: &Broker, vhost: &str) -> String {
    format!("amqp://alice:wonderland@{}/{vhost}", broker.amqp_addr())
}

#[tokio::test]
async fn plain_login_opens_the_default_vhost() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    assert!(connection.status().connected());
    assert_eq!(connection.status().username(), "guest");
    assert_eq!(connection.status().vhost().as_str(), "/");
    let channel = channel(&connection).await;
    declare(&channel, "plain-ok").await;
    within("close", connection.close(200, "OK".into()))
        .await
        .expect("connection.close");
    assert!(!connection.status().connected());
}

#[tokio::test]
async fn amqplain_login_works_for_guest_and_for_another_user() {
    let broker = broker_with_alice();
    let guest = try_connect(&format!("{}?auth_mechanism=amqplain", broker.amqp_url()))
        .await
        .expect("guest logs in with AMQPLAIN");
    assert!(guest.status().connected());
    let alice = try_connect(&format!(
        "{}?auth_mechanism=amqplain",
        alice_url(&broker, "%2f")
    ))
    .await
    .expect("alice logs in with AMQPLAIN");
    assert_eq!(alice.status().username(), "alice");
    let channel = channel(&alice).await;
    declare(&channel, "alice-amqplain").await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_access_refused() {
    let broker = Broker::start();
    let url = format!("amqp://guest:wrong@{}/%2f", broker.amqp_addr());
    assert_code(
        try_connect(&url).await,
        code::ACCESS_REFUSED,
        "wrong password",
    );
    let url = format!("amqp://nobody:guest@{}/%2f", broker.amqp_addr());
    assert_code(
        try_connect(&url).await,
        code::ACCESS_REFUSED,
        "unknown user",
    );
    let url = format!(
        "amqp://guest:wrong@{}/%2f?auth_mechanism=amqplain",
        broker.amqp_addr()
    );
    assert_code(
        try_connect(&url).await,
        code::ACCESS_REFUSED,
        "wrong AMQPLAIN password",
    );
    // The broker is still fine.
    connect(&broker).await;
}

#[tokio::test]
async fn an_unknown_vhost_is_refused_with_not_allowed() {
    let broker = Broker::start();
    let url = format!("amqp://guest:guest@{}/no-such-vhost", broker.amqp_addr());
    assert_code(try_connect(&url).await, code::NOT_ALLOWED, "unknown vhost");
}

#[tokio::test]
async fn a_user_without_permissions_in_a_vhost_is_refused_with_not_allowed() {
    let broker = broker_with_alice();
    assert_code(
        try_connect(&alice_url(&broker, "other")).await,
        code::NOT_ALLOWED,
        "alice in vhost other",
    );
    // guest may use it.
    let url = format!("amqp://guest:guest@{}/other", broker.amqp_addr());
    try_connect(&url).await.expect("guest in vhost other");
}

#[tokio::test]
async fn a_restricted_user_may_do_what_its_patterns_allow() {
    let broker = broker_with_alice();
    let alice = try_connect(&alice_url(&broker, "%2f"))
        .await
        .expect("alice connects");
    let ch = channel(&alice).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "alice-x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("alice may configure alice-x");
    declare(&ch, "alice-q").await;
    within(
        "queue.bind",
        ch.queue_bind(
            "alice-q".into(),
            "alice-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("alice may bind alice-q (write) from alice-x (read)");
    publish(&ch, "alice-x", "k", b"hello alice").await;
    let got = get(&ch, "alice-q", true).await;
    assert_eq!(got.delivery.data, b"hello alice");
    within(
        "queue.delete",
        ch.queue_delete("alice-q".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("alice may delete alice-q");
}

#[tokio::test]
async fn configure_is_checked_on_declare_and_delete() {
    let broker = broker_with_alice();
    let (_guest, guest_ch) = open(&broker).await;
    declare(&guest_ch, "guest-owned").await;
    let alice = try_connect(&alice_url(&broker, "%2f"))
        .await
        .expect("alice");

    let ch = channel(&alice).await;
    assert_code(
        within(
            "queue.declare",
            ch.queue_declare(
                "bob-q".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "declare queue outside the configure pattern",
    );
    let ch = channel(&alice).await;
    assert_code(
        within(
            "exchange.declare",
            ch.exchange_declare(
                "bob-x".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "declare exchange outside the configure pattern",
    );
    let ch = channel(&alice).await;
    assert_code(
        within(
            "queue.delete",
            ch.queue_delete("guest-owned".into(), QueueDeleteOptions::default()),
        )
        .await,
        code::ACCESS_REFUSED,
        "delete a queue outside the configure pattern",
    );
    assert!(!exists(&alice, "alice-never").await);
    assert!(alice.status().connected(), "403 only closes the channel");
}

#[tokio::test]
async fn write_is_checked_on_publish_and_on_the_queue_of_a_binding() {
    let broker = broker_with_alice();
    let (_guest, guest_ch) = open(&broker).await;
    declare(&guest_ch, "guest-target").await;
    let alice = try_connect(&alice_url(&broker, "%2f"))
        .await
        .expect("alice");
    let mut errors = ErrorWatch::new(&alice);

    // Publishing to amq.direct needs write on that exchange.
    let ch = channel(&alice).await;
    publish(&ch, "amq.direct", "k", b"x").await;
    errors
        .expect(code::ACCESS_REFUSED, "publish to amq.direct")
        .await;

    // The default exchange is checked as amq.default.
    let ch = channel(&alice).await;
    publish(&ch, "", "alice-q", b"x").await;
    errors
        .expect(code::ACCESS_REFUSED, "publish to the default exchange")
        .await;

    // queue.bind needs write on the queue.
    let ch = channel(&alice).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "alice-src".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare alice-src");
    assert_code(
        within(
            "queue.bind",
            ch.queue_bind(
                "guest-target".into(),
                "alice-src".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "bind a queue outside the write pattern",
    );
}

#[tokio::test]
async fn read_is_checked_on_get_consume_and_the_exchange_of_a_binding() {
    let broker = broker_with_alice();
    let (_guest, guest_ch) = open(&broker).await;
    declare(&guest_ch, "guest-private").await;
    let alice = try_connect(&alice_url(&broker, "%2f"))
        .await
        .expect("alice");

    let ch = channel(&alice).await;
    assert_code(
        within(
            "basic.get",
            ch.basic_get("guest-private".into(), BasicGetOptions::default()),
        )
        .await,
        code::ACCESS_REFUSED,
        "get from a queue outside the read pattern",
    );
    let ch = channel(&alice).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(
                "guest-private".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "consume from a queue outside the read pattern",
    );
    let ch = channel(&alice).await;
    declare(&ch, "alice-reader").await;
    assert_code(
        within(
            "queue.bind",
            ch.queue_bind(
                "alice-reader".into(),
                "amq.fanout".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        code::ACCESS_REFUSED,
        "bind from an exchange outside the read pattern",
    );
}

#[tokio::test]
#[ignore = "differs from RabbitMQ >= 4.2.6 only: passive declares skip permission checks (RabbitMQ >= 4.2.6 needs any permission)"]
async fn a_passive_declare_needs_some_permission_on_the_queue() {
    let broker = broker_with_alice();
    let (_guest, guest_ch) = open(&broker).await;
    declare(&guest_ch, "guest-secret").await;
    let alice = try_connect(&alice_url(&broker, "%2f"))
        .await
        .expect("alice");
    let ch = channel(&alice).await;
    assert_code(
        passive(&ch, "guest-secret").await,
        code::ACCESS_REFUSED,
        "passive declare without any permission",
    );
}

/// Reads one frame from a raw socket: (type, channel, payload).
async fn read_frame(stream: &mut tokio::net::TcpStream) -> (u8, u16, Vec<u8>) {
    let mut header = [0u8; 7];
    within("frame header", stream.read_exact(&mut header))
        .await
        .expect("read frame header");
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    within("frame payload", stream.read_exact(&mut payload))
        .await
        .expect("read frame payload");
    assert_eq!(payload.pop(), Some(0xCE), "frame end octet");
    (
        header[0],
        u16::from_be_bytes([header[1], header[2]]),
        payload,
    )
}

#[tokio::test]
async fn connection_start_announces_rabbitmq_capabilities_and_mechanisms() {
    let broker = Broker::start();
    let mut stream = within(
        "tcp connect",
        tokio::net::TcpStream::connect(broker.amqp_addr()),
    )
    .await
    .expect("tcp connect");
    within("write header", stream.write_all(b"AMQP\x00\x00\x09\x01"))
        .await
        .expect("write protocol header");
    let (kind, channel, payload) = read_frame(&mut stream).await;
    assert_eq!((kind, channel), (1, 0), "a method frame on channel 0");
    let (_, method) = lapin::protocol::parse_class(&payload[..]).expect("parse connection.start");
    let AMQPClass::Connection(conn::AMQPMethod::Start(start)) = method else {
        panic!("expected connection.start, got {method:?}");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_string();
    let mechanisms: Vec<&str> = mechanisms.split_whitespace().collect();
    assert!(mechanisms.contains(&"PLAIN"), "{mechanisms:?}");
    assert!(mechanisms.contains(&"AMQPLAIN"), "{mechanisms:?}");
    let properties = start.server_properties.inner();
    for key in ["product", "version", "platform"] {
        assert!(
            properties.contains_key(key),
            "server property {key} missing"
        );
    }
    let Some(AMQPValue::FieldTable(capabilities)) = properties.get("capabilities") else {
        panic!("no capabilities table in {properties:?}");
    };
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            capabilities.inner().get(capability),
            Some(&AMQPValue::Boolean(true)),
            "capability {capability}"
        );
    }
}

#[tokio::test]
async fn heartbeats_keep_an_idle_connection_alive() {
    let broker = Broker::start();
    let connection = try_connect(&format!("{}?heartbeat=1", broker.amqp_url()))
        .await
        .expect("connect");
    assert_eq!(
        connection.configuration().heartbeat(),
        1,
        "the lower of client and server heartbeat is used"
    );
    let ch = channel(&connection).await;
    declare(&ch, "idle").await;
    // Idle for three heartbeat intervals: without heartbeats in both directions one side would
    // declare the other dead after two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(connection.status().connected(), "still connected");
    assert_eq!(ready(&ch, "idle").await, 0);
}

#[tokio::test]
async fn the_server_offers_its_configured_heartbeat() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    assert_eq!(
        connection.configuration().heartbeat(),
        60,
        "a client without a preference takes the server's 60 s"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_connection_forced_and_exits_cleanly() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let mut errors = ErrorWatch::new(&connection);
    let ch = channel(&connection).await;
    declare(&ch, "before-shutdown").await;

    broker.signal("TERM");
    errors
        .expect(code::CONNECTION_FORCED, "connection.close at shutdown")
        .await;
    until("connection closed", || {
        let closed = !connection.status().connected();
        async move { closed }
    })
    .await;
    let result = within(
        "declare after shutdown",
        ch.queue_declare(
            "after-shutdown".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert!(result.is_err(), "the channel is gone: {result:?}");

    let mut broker = broker;
    let exited = tokio::task::spawn_blocking(move || broker.wait_exit(STEP))
        .await
        .expect("join");
    assert_eq!(exited, Some(true), "the broker exits with status 0");
}

#[tokio::test]
async fn channels_open_and_close_independently() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let first = channel(&connection).await;
    let second = channel(&connection).await;
    assert_ne!(first.id(), second.id());
    within("channel.close", first.close(200, "OK".into()))
        .await
        .expect("channel.close");
    assert!(!first.status().connected());
    declare(&second, "still-open").await;
    let third = channel(&connection).await;
    declare(&third, "third").await;
    assert!(connection.status().connected());
}

#[tokio::test]
async fn a_channel_error_closes_only_that_channel() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let failing = channel(&connection).await;
    let healthy = channel(&connection).await;
    assert_code(
        passive(&failing, "does-not-exist").await,
        code::NOT_FOUND,
        "passive declare of a missing queue",
    );
    until("channel closed", || {
        let closed = !failing.status().connected();
        async move { closed }
    })
    .await;
    let again = within(
        "declare on closed channel",
        failing.queue_declare(
            "x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert!(again.is_err(), "a closed channel cannot be used");
    declare(&healthy, "healthy").await;
    assert!(connection.status().connected());
    let fresh = channel(&connection).await;
    declare(&fresh, "fresh").await;
}

#[tokio::test]
async fn channel_flow_active_is_acknowledged() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    let active = within(
        "channel.flow",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("channel.flow-ok");
    assert!(active);
    declare(&ch, "after-flow").await;
}

/// RabbitMQ refuses `channel.flow active=false` (540); Junction honours it: deliveries to the
/// channel wait until flow is switched back on.
#[tokio::test]
async fn channel_flow_inactive_pauses_deliveries_until_flow_resumes() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "flow-q").await;
    let mut consumer = consume(&ch, "flow-q").await;
    let active = within(
        "channel.flow off",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await
    .expect("channel.flow-ok");
    assert!(!active);
    let (_other, publisher) = open(&broker).await;
    publish(&publisher, "", "flow-q", b"paused").await;
    nothing_more(&mut consumer, "no delivery while flow is off").await;
    within(
        "channel.flow on",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("channel.flow-ok");
    assert_eq!(text(&next(&mut consumer).await.data), "paused");
}

#[tokio::test]
async fn publishing_with_immediate_is_not_implemented() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    let mut errors = ErrorWatch::new(&connection);
    let _ = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        ),
    )
    .await;
    errors
        .expect(
            code::NOT_IMPLEMENTED,
            "immediate=true closes the connection",
        )
        .await;
    until("connection closed", || {
        let closed = !connection.status().connected();
        async move { closed }
    })
    .await;
}

#[tokio::test]
async fn update_secret_is_accepted_for_internal_users() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    within(
        "connection.update-secret",
        connection.update_secret("guest".into(), "rotation".into()),
    )
    .await
    .expect("update-secret-ok");
    let ch = channel(&connection).await;
    declare(&ch, "after-update-secret").await;
}

#[tokio::test]
async fn access_request_is_answered_for_old_clients() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    within(
        "access.request",
        ch.access_request("/data".into(), AccessRequestOptions::default()),
    )
    .await
    .expect("access.request-ok");
    declare(&ch, "after-access-request").await;
}
