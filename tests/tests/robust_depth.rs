//! Issue 13, defects 1, 7 and 20: nesting limits, storable properties and handshake checks.
//!
//! - Field tables nested thousands of levels deep (message headers, method arguments, client
//!   properties) once overflowed a worker's stack and killed the broker; now they close only
//!   the sender's connection with 502, and a canary connection keeps working.
//! - Whatever is accepted reads back from the store: a confirmed persistent message and a
//!   durable queue at the maximum depth (32) survive paging and a restart, and anything deeper
//!   is refused up front instead of being acknowledged and then lost.
//! - A blank password is refused on AMQP, MQTT and STOMP, and a tune-ok beyond what
//!   connection.tune offered closes the connection with 530, as RabbitMQ does.

mod common;
// This file uses part of the raw client only.
#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use junction_tests::{Broker, Listeners, temp_dir};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};
use support::raw_amqp::{
    Close, FRAME_HEADER, Method, PROTOCOL_HEADER, RawClient, basic_publish, body, bool_entry,
    connection_open, frame, start_ok, tune_ok,
};
use support::raw_mqtt;

/// The deepest nesting the broker accepts (`junction_core::field::MAX_DEPTH`).
const MAX_DEPTH: usize = 32;
/// Deep enough to overflow a recursive parser's stack (2,000 levels did).
const THOUSANDS: usize = 10_000;
/// 502, the reply code for a frame the broker refuses to decode.
const SYNTAX_ERROR: u16 = 502;

/// The entries (no length prefix) of a table nested `depth` levels deep, itself level 1: entry
/// `k` holds a table whose entry `k` holds the next, down to an empty table. Built without
/// recursion, so any depth is cheap.
fn nested_entries(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 7);
    if depth < 2 {
        return out;
    }
    out.extend_from_slice(b"\x01kF");
    for level in 2..=depth {
        let below = (depth - level) as u32;
        out.extend_from_slice(&(7 * below).to_be_bytes());
        if level < depth {
            out.extend_from_slice(b"\x01kF");
        }
    }
    out
}

/// A content header frame whose headers table holds `entries`, persistent when asked.
fn header_with(channel: u16, body_size: u64, entries: &[u8], persistent: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(entries.len() + 20);
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&body_size.to_be_bytes());
    let flags: u16 = (1 << 13) | if persistent { 1 << 12 } else { 0 };
    payload.extend_from_slice(&flags.to_be_bytes());
    payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    payload.extend_from_slice(entries);
    if persistent {
        payload.push(2);
    }
    frame(FRAME_HEADER, channel, &payload)
}

/// queue.declare of `name`, durable or not, with `arguments` as the table's entries.
fn declare_with(name: &str, durable: bool, arguments: &[u8]) -> Method {
    Method::new(50, 10)
        .u16(0)
        .short(name)
        .u8(if durable { 2 } else { 0 })
        .table(arguments)
}

/// Reads connection.close and checks code and blamed method; answers close-ok and waits for
/// the socket to close.
fn expect_refusal(client: &mut RawClient, code: u16, ids: (u16, u16)) -> Close {
    let close = client.expect_connection_close();
    assert_eq!(close.code, code, "{close:?}");
    assert_eq!((close.class_id, close.method_id), ids, "{close:?}");
    client.close_ok_then_eof();
    close
}

/// A broker with a canary connection that must keep working whatever the others send.
struct Scene {
    broker: Broker,
    canary: RawClient,
}

impl Scene {
    fn start() -> Scene {
        let broker = Broker::start();
        let mut canary = RawClient::open(broker.amqp_addr());
        canary.open_channel(1);
        assert_eq!(canary.declare_queue(1, "canary"), 0);
        Scene { broker, canary }
    }

    /// A fresh connection with channel 1 open.
    fn client(&self) -> RawClient {
        let mut client = RawClient::open(self.broker.amqp_addr());
        client.open_channel(1);
        client
    }

    /// The canary still works, a new connection opens, and the process is alive.
    fn still_serving(mut self) {
        assert_eq!(
            self.canary.declare_queue(1, "canary"),
            0,
            "the canary queue"
        );
        RawClient::open(self.broker.amqp_addr()).close();
        self.canary.close();
        assert!(self.broker.stop(), "the broker exits cleanly");
    }
}

#[test]
fn headers_nested_thousands_deep_close_only_their_connection() {
    let scene = Scene::start();
    let mut bad = scene.client();
    bad.send(&basic_publish("", "canary").frame(1));
    bad.send(&header_with(1, 1, &nested_entries(THOUSANDS), false));
    let _ = bad.try_send(&body(1, b"x"));
    let close = expect_refusal(&mut bad, SYNTAX_ERROR, (60, 40));
    assert!(
        close.text.contains("nested deeper than 32 levels"),
        "{close:?}"
    );
    scene.still_serving();
}

#[test]
fn arguments_nested_thousands_deep_are_refused_in_every_method() {
    let scene = Scene::start();
    let deep = nested_entries(THOUSANDS);
    let methods = [
        declare_with("deep", false, &deep),
        Method::new(40, 10)
            .u16(0)
            .short("deep-x")
            .short("topic")
            .u8(0)
            .table(&deep),
        Method::new(40, 30)
            .u16(0)
            .short("amq.topic")
            .short("amq.direct")
            .short("k")
            .u8(0)
            .table(&deep),
        Method::new(40, 40)
            .u16(0)
            .short("amq.topic")
            .short("amq.direct")
            .short("k")
            .u8(0)
            .table(&deep),
        Method::new(50, 20)
            .u16(0)
            .short("canary")
            .short("amq.direct")
            .short("k")
            .u8(0)
            .table(&deep),
        Method::new(50, 50)
            .u16(0)
            .short("canary")
            .short("amq.direct")
            .short("k")
            .table(&deep),
        Method::new(60, 20)
            .u16(0)
            .short("canary")
            .short("")
            .u8(0)
            .table(&deep),
    ];
    for method in methods {
        let ids = (
            u16::from_be_bytes([method.payload()[0], method.payload()[1]]),
            u16::from_be_bytes([method.payload()[2], method.payload()[3]]),
        );
        let mut bad = scene.client();
        bad.send(&method.frame(1));
        expect_refusal(&mut bad, SYNTAX_ERROR, ids);
    }
    scene.still_serving();
}

#[test]
fn client_properties_nested_thousands_deep_are_refused_before_login() {
    let scene = Scene::start();
    let mut bad = RawClient::connect(scene.broker.amqp_addr());
    bad.send(PROTOCOL_HEADER);
    bad.expect_method(0, (10, 10), "connection.start");
    // Before tune, frames are at most 4096 bytes: 800 nested arrays (5 bytes each) fit.
    let start_ok = Method::new(10, 11)
        .table(&mixed_entries(&[b'A'; 800]))
        .short("PLAIN")
        .long(b"\0nobody\0wrong")
        .short("en_US");
    bad.send(&start_ok.frame(0));
    expect_refusal(&mut bad, SYNTAX_ERROR, (10, 11));
    scene.still_serving();
}

/// The entries of a table (level 1) whose entry `k` holds a value nesting one container per
/// tag in `kinds` (`F` a table, `A` an array), outermost first: depth `1 + kinds.len()`.
fn mixed_entries(kinds: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (at, kind) in kinds.iter().enumerate().rev() {
        let mut value = vec![*kind];
        value.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        value.extend_from_slice(&inner);
        let parent_is_table = at == 0 || kinds[at - 1] == b'F';
        inner = if parent_is_table {
            [&b"\x01k"[..], &value].concat()
        } else {
            value
        };
    }
    inner
}

/// Publishes one message with headers `entries` to `queue` on channel 1.
fn publish_headers(client: &mut RawClient, queue: &str, entries: &[u8]) {
    client.send(&basic_publish("", queue).frame(1));
    client.send(&header_with(1, 1, entries, false));
    let _ = client.try_send(&body(1, b"x"));
}

#[test]
fn the_limit_is_32_levels_of_tables_and_arrays() {
    let scene = Scene::start();
    let mut client = scene.client();
    assert_eq!(client.declare_queue(1, "limit"), 0);
    publish_headers(&mut client, "limit", &nested_entries(MAX_DEPTH));
    assert_eq!(
        client.declare_queue(1, "limit"),
        1,
        "32 tables are accepted"
    );
    let mut kinds = vec![b'F'; MAX_DEPTH - 2];
    kinds.push(b'A');
    publish_headers(&mut client, "limit", &mixed_entries(&kinds));
    assert_eq!(
        client.declare_queue(1, "limit"),
        2,
        "31 tables and an array too"
    );

    // One level more, whether a table or an array, closes the connection.
    kinds.push(b'A');
    publish_headers(&mut client, "limit", &mixed_entries(&kinds));
    expect_refusal(&mut client, SYNTAX_ERROR, (60, 40));
    let mut client = scene.client();
    publish_headers(&mut client, "limit", &nested_entries(MAX_DEPTH + 1));
    expect_refusal(&mut client, SYNTAX_ERROR, (60, 40));
    let mut client = scene.client();
    client.send(&declare_with("deep", false, &nested_entries(MAX_DEPTH + 1)).frame(1));
    expect_refusal(&mut client, SYNTAX_ERROR, (50, 10));
    scene.still_serving();
}

#[test]
fn a_message_too_deep_for_the_store_is_refused_not_confirmed_and_lost() {
    let scene = Scene::start();
    let mut client = scene.client();
    client.send(&declare_with("durable-deep", true, &[]).frame(1));
    client.expect_method(1, (50, 11), "queue.declare-ok");
    client.send(&Method::new(85, 10).u8(0).frame(1));
    client.expect_method(1, (85, 11), "confirm.select-ok");
    client.send(&basic_publish("", "durable-deep").frame(1));
    client.send(&header_with(1, 1, &nested_entries(64), true));
    let _ = client.try_send(&body(1, b"x"));
    // Before the limit, this was confirmed and then dropped at restart (unreadable JSON).
    expect_refusal(&mut client, SYNTAX_ERROR, (60, 40));
    scene.still_serving();
}

#[test]
fn queue_arguments_too_deep_for_the_store_are_refused() {
    let scene = Scene::start();
    let mut client = scene.client();
    // Before the limit, this was declared and then vanished at restart.
    client.send(&declare_with("durable-deep-args", true, &nested_entries(63)).frame(1));
    expect_refusal(&mut client, SYNTAX_ERROR, (50, 10));
    scene.still_serving();
}

/// A table of every kind of value lapin and the broker carry losslessly, nesting tables and
/// arrays, alternating, `depth` levels deep (itself level 1).
fn lapin_nested(depth: usize) -> FieldTable {
    let mut value = AMQPValue::LongString(LongString::from("leaf"));
    for level in (2..=depth).rev() {
        value = if level % 2 == 0 {
            let mut table = FieldTable::default();
            table.insert("n".into(), AMQPValue::LongInt(level as i32));
            table.insert("k".into(), value);
            AMQPValue::FieldTable(table)
        } else {
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true), value]))
        };
    }
    let mut table = FieldTable::default();
    table.insert("k".into(), value);
    table
}

/// A configuration that keeps at most 4 KiB of each queue's messages in memory.
const PAGING: &str = "[storage]\nmax_loaded_bytes_per_queue = 4096\n";

/// The body and headers of the next message in `queue`, taken with no-ack.
async fn get_headers(ch: &Channel, queue: &str) -> (Vec<u8>, Option<FieldTable>) {
    let got = get(ch, queue, true).await;
    (
        got.delivery.data.clone(),
        got.delivery.properties.headers().clone(),
    )
}

#[tokio::test]
async fn a_persistent_message_at_the_maximum_depth_survives_paging_and_restart() {
    let broker = Broker::start_configured(temp_dir("depth-paging"), PAGING, Listeners::Amqp);
    let headers = lapin_nested(MAX_DEPTH);
    let (connection, ch) = open(&broker).await;
    declare_durable(&ch, "deep-headers", FieldTable::default())
        .await
        .expect("declare");
    confirm_select(&ch).await;
    for n in 0..20u8 {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers.clone());
        assert!(
            matches!(
                publish_confirmed(&ch, "", "deep-headers", &[n; 1024], properties).await,
                Confirmation::Ack(_)
            ),
            "message {n} confirmed"
        );
    }
    // A 4 KiB budget keeps about three bodies in memory: the rest are read back from the log.
    for n in 0..10u8 {
        let (body, got) = get_headers(&ch, "deep-headers").await;
        assert_eq!(body, vec![n; 1024], "message {n}");
        assert_eq!(got.as_ref(), Some(&headers), "headers of message {n}");
    }
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());

    let broker = Broker::start_configured(data_dir, PAGING, Listeners::Amqp);
    let (_connection, ch) = open(&broker).await;
    declare_durable(&ch, "deep-headers", FieldTable::default())
        .await
        .expect("declare");
    for n in 10..20u8 {
        let (body, got) = get_headers(&ch, "deep-headers").await;
        assert_eq!(body, vec![n; 1024], "message {n} after the restart");
        assert_eq!(
            got.as_ref(),
            Some(&headers),
            "headers of message {n} after the restart"
        );
    }
}

#[tokio::test]
async fn a_durable_queue_with_arguments_at_the_maximum_depth_survives_restart() {
    let broker = Broker::start();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "deep".into(),
        AMQPValue::FieldTable(lapin_nested(MAX_DEPTH - 1)),
    );
    {
        let (connection, ch) = open(&broker).await;
        declare_durable(&ch, "deep-arguments", arguments.clone())
            .await
            .expect("declare");
        within("close", connection.close(200, "bye".into()))
            .await
            .expect("close");
    }
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());

    let broker = Broker::start_in(data_dir, &[]);
    let (_connection, ch) = open(&broker).await;
    passive(&ch, "deep-arguments")
        .await
        .expect("the durable queue is back");
    declare_durable(&ch, "deep-arguments", arguments)
        .await
        .expect("declare");
}

/// Connects, logs in as `user` with PLAIN and waits for connection.tune (or a refusal).
fn start_login(addr: SocketAddr, user: &str, password: &str) -> RawClient {
    let mut client = RawClient::connect(addr);
    client.send(PROTOCOL_HEADER);
    client.expect_method(0, (10, 10), "connection.start");
    let capabilities = bool_entry("authentication_failure_close", true);
    client.send(&start_ok(user, password, &capabilities).frame(0));
    client
}

/// Sends tune-ok with the given values after connection.tune.
fn tuned(addr: SocketAddr, channel_max: u16, frame_max: u32) -> RawClient {
    let mut client = start_login(addr, "guest", "guest");
    client.expect_method(0, (10, 30), "connection.tune");
    client.send(&tune_ok(channel_max, frame_max, 0).frame(0));
    client
}

#[test]
fn tune_ok_beyond_the_offer_closes_the_connection_with_530() {
    let scene = Scene::start();
    let addr = scene.broker.amqp_addr();
    for (channel_max, frame_max, text) in [
        (
            3000,
            131_072,
            "negotiated channel_max = 3000 is higher than the maximum allowed value (2047)",
        ),
        (
            0,
            131_072,
            "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
        (
            2047,
            1024,
            "negotiated frame_max = 1024 is lower than the minimum allowed value (4096)",
        ),
        (
            2047,
            200_000,
            "negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
        ),
    ] {
        let mut client = tuned(addr, channel_max, frame_max);
        let close = expect_refusal(&mut client, 530, (10, 31));
        assert_eq!(close.text, format!("NOT_ALLOWED - {text}"));
    }
    // What the broker offered is accepted.
    let mut client = tuned(addr, 2047, 131_072);
    client.send(&connection_open("/").frame(0));
    client.expect_method(0, (10, 41), "connection.open-ok");
    client.close();
    scene.still_serving();
}

/// Reads from `stream` until `done` says the answer is whole, the socket closes or 5 s pass.
fn read_answer(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while Instant::now() < deadline && !done(&answer) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
    }
    answer
}

/// The CONNACK return code for an MQTT 3.1.1 CONNECT with these credentials.
fn mqtt_login(addr: SocketAddr, user: &str, password: &str) -> Option<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let connect = raw_mqtt::connect_as("depth-test", user, password, true);
    stream.write_all(&connect).expect("send CONNECT");
    let answer = read_answer(&mut stream, |a| a.len() >= 4);
    (answer.len() >= 4 && answer[0] == 0x20).then(|| answer[3])
}

/// The command of the STOMP frame the broker answers a CONNECT with.
fn stomp_login(addr: SocketAddr, user: &str, password: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let connect =
        format!("CONNECT\naccept-version:1.2\nhost:/\nlogin:{user}\npasscode:{password}\n\n\0");
    stream.write_all(connect.as_bytes()).expect("send CONNECT");
    let answer = read_answer(&mut stream, |a| a.contains(&0));
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The first method a PLAIN login gets after start-ok: tune (10/30) or close (10/50).
fn amqp_login(addr: SocketAddr, user: &str, password: &str) -> Option<(u16, u16)> {
    let mut client = start_login(addr, user, password);
    client.expect_frame("an answer to start-ok").method_ids()
}

#[test]
fn a_blank_password_is_refused_on_every_protocol() {
    let broker = Broker::start_configured(
        temp_dir("blank-password"),
        r#"
[[users]]
name = "guest"
password = "guest"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "blank"
password = ""
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "carol"
password = "pw"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
"#,
        Listeners::Tcp,
    );

    let amqp = broker.amqp_addr();
    assert_eq!(
        amqp_login(amqp, "carol", "pw"),
        Some((10, 30)),
        "carol logs in"
    );
    let mut client = start_login(amqp, "blank", "");
    let close = client.expect_connection_close();
    assert_eq!(close.code, 403, "{close:?}");
    client.close_ok_then_eof();

    let mqtt = broker.mqtt_addr();
    assert_eq!(mqtt_login(mqtt, "carol", "pw"), Some(0), "carol logs in");
    assert_eq!(
        mqtt_login(mqtt, "blank", ""),
        Some(4),
        "bad user name or password"
    );

    let stomp = broker.stomp_addr();
    assert_eq!(stomp_login(stomp, "carol", "pw"), "CONNECTED");
    assert_eq!(stomp_login(stomp, "blank", ""), "ERROR");
}
