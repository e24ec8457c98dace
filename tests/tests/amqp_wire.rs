//! Wire-level checks lapin cannot express, over a raw socket: heartbeats sent by the broker, a
//! silent client being dropped and a heartbeating one kept, and basic.qos with a prefetch size
//! (lapin always sends 0). Malformed input is covered by `amqp_bad_input.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use junction_tests::Broker;
use lapin::protocol::{AMQPClass, channel as ch, connection as conn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;

fn short(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("short string")];
    out.extend_from_slice(s.as_bytes());
    out
}

fn long(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn method_frame(channel: u16, class: u16, method: u16, arguments: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(arguments);
    let mut frame = vec![FRAME_METHOD];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

struct Raw {
    stream: TcpStream,
}

enum Frame {
    Method(u16, AMQPClass),
    Heartbeat,
    Other(u8),
}

impl Raw {
    async fn connect(broker: &Broker) -> Raw {
        let stream = within("tcp connect", TcpStream::connect(broker.amqp_addr()))
            .await
            .expect("tcp connect");
        Raw { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    async fn method(&mut self, channel: u16, class: u16, method: u16, arguments: &[u8]) {
        self.send(&method_frame(channel, class, method, arguments))
            .await;
    }

    /// The next frame, or None at end of stream.
    async fn frame(&mut self) -> Option<Frame> {
        let mut header = [0u8; 7];
        match within("frame header", self.stream.read_exact(&mut header)).await {
            Ok(_) => {}
            Err(_) => return None,
        }
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        within("frame payload", self.stream.read_exact(&mut payload))
            .await
            .expect("frame payload");
        assert_eq!(payload.pop(), Some(0xCE), "frame end");
        let channel = u16::from_be_bytes([header[1], header[2]]);
        Some(match header[0] {
            FRAME_METHOD => {
                let (_, method) = lapin::protocol::parse_class(&payload[..]).expect("parse method");
                Frame::Method(channel, method)
            }
            FRAME_HEARTBEAT => Frame::Heartbeat,
            other => Frame::Other(other),
        })
    }

    /// The next method frame, skipping heartbeats.
    async fn next_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.frame().await {
                Some(Frame::Method(channel, method)) => return (channel, method),
                Some(_) => continue,
                None => panic!("connection closed while waiting for a method"),
            }
        }
    }

    /// Runs the handshake as guest on `/` with the given heartbeat; returns after open-ok.
    async fn open(broker: &Broker, heartbeat: u16) -> Raw {
        let mut raw = Raw::connect(broker).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        let (_, start) = raw.next_method().await;
        assert!(matches!(
            start,
            AMQPClass::Connection(conn::AMQPMethod::Start(_))
        ));
        let mut start_ok = 0u32.to_be_bytes().to_vec(); // empty client-properties
        start_ok.extend(short("PLAIN"));
        start_ok.extend(long(b"\0guest\0guest"));
        start_ok.extend(short("en_US"));
        raw.method(0, 10, 11, &start_ok).await;
        let (_, tune) = raw.next_method().await;
        let AMQPClass::Connection(conn::AMQPMethod::Tune(tune)) = tune else {
            panic!("expected connection.tune, got {tune:?}");
        };
        let mut tune_ok = tune.channel_max.to_be_bytes().to_vec();
        tune_ok.extend_from_slice(&tune.frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&heartbeat.to_be_bytes());
        raw.method(0, 10, 31, &tune_ok).await;
        let mut open = short("/");
        open.extend(short(""));
        open.push(0);
        raw.method(0, 10, 40, &open).await;
        let (_, open_ok) = raw.next_method().await;
        assert!(
            matches!(open_ok, AMQPClass::Connection(conn::AMQPMethod::OpenOk(_))),
            "expected connection.open-ok, got {open_ok:?}"
        );
        raw
    }

    async fn open_channel(&mut self, number: u16) {
        self.method(number, 20, 10, &short("")).await;
        let (channel, open_ok) = self.next_method().await;
        assert_eq!(channel, number);
        assert!(
            matches!(open_ok, AMQPClass::Channel(ch::AMQPMethod::OpenOk(_))),
            "expected channel.open-ok, got {open_ok:?}"
        );
    }

    /// Expects connection.close with `code`, answers close-ok and sees the socket close.
    async fn expect_connection_close(&mut self, code: u16, what: &str) {
        let (channel, method) = self.next_method().await;
        let AMQPClass::Connection(conn::AMQPMethod::Close(close)) = method else {
            panic!("{what}: expected connection.close, got {method:?}");
        };
        assert_eq!(channel, 0);
        assert_eq!(close.reply_code, code, "{what}: {}", close.reply_text);
        self.method(0, 10, 51, &[]).await;
        assert!(
            self.frame().await.is_none(),
            "{what}: socket closed after close-ok"
        );
    }
}

#[tokio::test]
async fn the_broker_sends_heartbeats_and_drops_a_silent_client() {
    let broker = Broker::start();
    let mut raw = Raw::open(&broker, 1).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    loop {
        match raw.frame().await {
            Some(Frame::Heartbeat) => heartbeats += 1,
            Some(Frame::Method(_, method)) => panic!("unexpected method {method:?}"),
            Some(Frame::Other(kind)) => panic!("unexpected frame type {kind}"),
            None => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a client silent for far more than two heartbeat intervals is still connected"
        );
    }
    let after = started.elapsed();
    assert!(heartbeats >= 1, "the broker sent heartbeats");
    assert!(
        after >= Duration::from_secs(1),
        "not dropped before a heartbeat interval passed: {after:?}"
    );
}

#[tokio::test]
async fn a_client_that_sends_heartbeats_is_kept() {
    let broker = Broker::start();
    let mut raw = Raw::open(&broker, 1).await;
    let started = Instant::now();
    // Send a heartbeat every half second for three seconds; the broker must not hang up.
    while started.elapsed() < Duration::from_secs(3) {
        raw.send(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0xCE]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    raw.open_channel(1).await;
}

#[tokio::test]
async fn a_prefetch_size_is_not_implemented() {
    let broker = Broker::start();
    let mut raw = Raw::open(&broker, 0).await;
    raw.open_channel(1).await;
    let mut qos = 4096u32.to_be_bytes().to_vec(); // prefetch-size
    qos.extend_from_slice(&10u16.to_be_bytes()); // prefetch-count
    qos.push(0); // global
    raw.method(1, 60, 10, &qos).await;
    raw.expect_connection_close(code::NOT_IMPLEMENTED, "prefetch_size=4096")
        .await;
}

/// connection.close's arguments: reply code, text, and the (absent) failing method.
fn close_arguments(code: u16, text: &str) -> Vec<u8> {
    let mut arguments = code.to_be_bytes().to_vec();
    arguments.extend(short(text));
    arguments.extend_from_slice(&[0, 0, 0, 0]);
    arguments
}

#[tokio::test]
async fn after_close_ok_the_socket_stays_open_until_the_client_closes_it() {
    let broker = Broker::start();
    let mut raw = Raw::open(&broker, 0).await;
    raw.method(0, 10, 50, &close_arguments(200, "bye")).await;
    let (channel, method) = raw.next_method().await;
    assert_eq!(channel, 0);
    assert!(
        matches!(method, AMQPClass::Connection(conn::AMQPMethod::CloseOk(_))),
        "expected connection.close-ok, got {method:?}"
    );
    // What the client still had buffered reaches an open socket and is dropped: no reply,
    // no end of stream, no reset.
    raw.send(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0xCE]).await;
    raw.method(1, 20, 10, &short("")).await;
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(500), raw.stream.read(&mut byte)).await;
    assert!(
        quiet.is_err(),
        "the broker answered or closed the socket after close-ok: {quiet:?}"
    );
    // Once the client closes its side, so does the broker.
    within("shutdown", raw.stream.shutdown())
        .await
        .expect("shutdown");
    assert!(
        raw.frame().await.is_none(),
        "the broker closes after the client"
    );
}

#[tokio::test]
async fn a_channel_close_crossing_the_brokers_is_answered_and_its_close_ok_awaited() {
    let broker = Broker::start();
    let mut raw = Raw::open(&broker, 0).await;
    raw.open_channel(1).await;
    // A passive declare of a missing queue: the broker closes the channel with 404...
    let mut declare = 0u16.to_be_bytes().to_vec();
    declare.extend(short("no-such-queue-crossing"));
    declare.push(1); // passive
    declare.extend_from_slice(&0u32.to_be_bytes());
    raw.method(1, 50, 10, &declare).await;
    // ...while the client, not having read that yet, closes the channel itself.
    raw.method(1, 20, 40, &close_arguments(200, "done")).await;
    let (channel, method) = raw.next_method().await;
    assert_eq!(channel, 1);
    let AMQPClass::Channel(ch::AMQPMethod::Close(close)) = method else {
        panic!("expected channel.close, got {method:?}");
    };
    assert_eq!(close.reply_code, code::NOT_FOUND);
    let (channel, method) = raw.next_method().await;
    assert_eq!(channel, 1);
    assert!(
        matches!(method, AMQPClass::Channel(ch::AMQPMethod::CloseOk(_))),
        "the client's channel.close is answered: got {method:?}"
    );
    // The client's close-ok to the broker's close ends the channel, not the connection.
    raw.method(1, 20, 41, &[]).await;
    raw.open_channel(1).await;
}
