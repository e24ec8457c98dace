//! Resource alarms over a raw AMQP socket (issue 13, defects 11 and 18): during an alarm a
//! connection's first basic.publish is held back like the later ones (not routed until the
//! alarm clears), and a blocked publisher that keeps sending heartbeats is not closed for
//! "missed heartbeats" while the broker is the one not reading; the broker's own heartbeats
//! keep coming. MQTT, STOMP and WebSocket are covered in
//! `tests/interop/python/test_robust_alarms.py`.

// Shared helpers, of which these tests use a few.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use junction_tests::{Broker, Listeners, temp_dir};
use support::raw_amqp::{
    FRAME_HEARTBEAT, Method, PROTOCOL_HEADER, RawClient, ReadEnd, basic_publish, body, bool_entry,
    content_header, frame, start_ok,
};

/// A broker whose memory alarm is raised from the start and stays raised.
fn broker_always_over_the_watermark() -> Broker {
    Broker::start_configured(
        temp_dir("robust-alarms"),
        "[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n",
        Listeners::Amqp,
    )
}

/// Connects as guest on `/` asking for `heartbeat` seconds, and opens channel 1.
fn open_with_heartbeat(broker: &Broker, heartbeat: u16) -> RawClient {
    let mut client = RawClient::connect(broker.amqp_addr());
    client.send(PROTOCOL_HEADER);
    client.expect_method(0, (10, 10), "connection.start");
    let capabilities = bool_entry("connection.blocked", true);
    client.send(&start_ok("guest", "guest", &capabilities).frame(0));
    client.tune_and_open(None, heartbeat);
    client.open_channel(1);
    client
}

/// One whole basic.publish of `data` to the default exchange with `routing_key`.
fn publish(client: &mut RawClient, routing_key: &str, data: &[u8]) {
    let mut bytes = basic_publish("", routing_key).frame(1);
    bytes.extend(content_header(1, data.len() as u64));
    bytes.extend(body(1, data));
    client.send(&bytes);
}

/// The number of ready messages in `queue`, by a passive queue.declare on `client`'s channel 1.
fn ready_messages(client: &mut RawClient, queue: &str) -> u32 {
    let passive = Method::new(50, 10).u16(0).short(queue).u8(1).table(&[]);
    client.send(&passive.frame(1));
    let ok = client.expect_method(1, (50, 11), "queue.declare-ok");
    let mut fields = ok.arguments();
    let _name = fields.short();
    fields.u32()
}

#[test]
fn a_fresh_connection_s_first_publish_is_held_during_an_alarm() {
    let broker = broker_always_over_the_watermark();
    let mut consumer = open_with_heartbeat(&broker, 0);
    consumer.declare_queue(1, "held-first");

    let mut publisher = open_with_heartbeat(&broker, 0);
    publish(&mut publisher, "held-first", b"first");
    // The publisher is told it is blocked (it asked for connection.blocked)...
    let blocked = publisher.expect_method(0, (10, 60), "connection.blocked");
    assert_eq!(blocked.arguments().short(), "low on memory");
    // ...and its first message is not routed while the alarm holds: the consumer's
    // connection, which does not publish, is served and sees an empty queue throughout.
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        assert_eq!(
            ready_messages(&mut consumer, "held-first"),
            0,
            "the first publish of a blocked connection was routed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_blocked_publisher_that_sends_heartbeats_is_not_timed_out() {
    const HEARTBEAT: u16 = 1;
    let broker = broker_always_over_the_watermark();
    let mut publisher = open_with_heartbeat(&broker, HEARTBEAT);
    publish(&mut publisher, "anywhere", b"blocked");
    publisher.expect_method(0, (10, 60), "connection.blocked");

    // Four intervals, twice the limit: the broker reads nothing from a blocked publisher, so
    // it does not see the heartbeats sent here, and must not hang up. Each of its own
    // heartbeats (every half interval) is answered with one.
    let heartbeat = frame(FRAME_HEARTBEAT, 0, &[]);
    let started = Instant::now();
    let until = started + Duration::from_secs(u64::from(HEARTBEAT)) * 4;
    let mut received = 0;
    while Instant::now() < until {
        assert!(
            publisher.try_send(&heartbeat),
            "the broker closed the socket"
        );
        match publisher.read_frame() {
            Ok(frame) if frame.kind == FRAME_HEARTBEAT => received += 1,
            Ok(frame) => panic!("unexpected frame from the broker while blocked: {frame:?}"),
            Err(ReadEnd::TimedOut) => panic!("the broker stopped sending heartbeats"),
            Err(ReadEnd::Closed) => panic!(
                "a blocked publisher sending heartbeats was disconnected after {:?}",
                started.elapsed()
            ),
        }
    }
    assert!(
        received >= 4,
        "{received} heartbeats from the broker in 4 intervals"
    );
}
