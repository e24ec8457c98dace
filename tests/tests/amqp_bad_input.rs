//! Bad input on the AMQP port: broken frames, unknown frame types and methods, malformed
//! arguments, content out of place, misused channels, foreign protocol headers, clients that
//! vanish mid-frame and plain random bytes.
//!
//! Every test speaks AMQP 0-9-1 by hand over a `TcpStream` (see `support/raw_amqp.rs`), sends
//! one kind of bad input and checks the broker's answer as AMQP 0-9-1 and RabbitMQ define it:
//! the reply code and text of connection.close, the class and method it blames, and that the
//! socket is closed once the client has sent close-ok. Then it checks that the damage stayed
//! on that one connection: a well-behaved connection opened before the bad one still works,
//! a new connection can be opened, and the broker process is still running.

mod support;

use std::time::{Duration, Instant};

use junction_tests::Broker;
use support::raw_amqp::{
    Close, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, Method, PROTOCOL_HEADER,
    RawClient, TIMEOUT, basic_publish, body, bool_entry, channel_open, content_header, frame,
    frame_ending_with, frame_header, queue_declare, split_frame,
};

/// A broker and a well-behaved connection that was opened before any bad one.
struct Scene {
    broker: Broker,
    good: RawClient,
    next_channel: u16,
}

impl Scene {
    fn start() -> Scene {
        let broker = Broker::start();
        let mut good = RawClient::open(broker.amqp_addr());
        good.open_channel(1);
        assert_eq!(good.declare_queue(1, "well-behaved"), 0);
        Scene {
            broker,
            good,
            next_channel: 2,
        }
    }

    /// A new connection, handshake done, channel 1 open.
    fn bad_client(&self) -> RawClient {
        let mut bad = RawClient::open(self.broker.amqp_addr());
        bad.open_channel(1);
        bad
    }

    /// Checks that the broker runs, that the connection opened before the bad one still
    /// works (a new channel, a queue declared on it), and that new connections are accepted.
    fn assert_survived(&mut self) {
        assert_alive(&mut self.broker);
        let number = self.next_channel;
        self.next_channel += 1;
        self.good.open_channel(number);
        self.good
            .declare_queue(number, &format!("well-behaved-{number}"));
        let mut fresh = RawClient::open(self.broker.amqp_addr());
        fresh.open_channel(1);
        assert_eq!(fresh.declare_queue(1, "well-behaved"), 0);
        fresh.close();
        assert_alive(&mut self.broker);
    }
}

fn assert_alive(broker: &mut Broker) {
    assert_eq!(
        broker.wait_exit(Duration::from_millis(100)),
        None,
        "the broker process exited"
    );
}

/// Reads connection.close and checks its code, the code name that starts its text, and that
/// the class and method it blames are one of `ids` ((0, 0) when no method caused it). Then
/// answers with close-ok and checks that the broker closes the socket.
fn expect_hard_error(bad: &mut RawClient, code: u16, name: &str, ids: &[(u16, u16)]) -> Close {
    let close = bad.expect_connection_close();
    assert_eq!(close.code, code, "reply code of {close:?}");
    assert!(
        close.text.starts_with(&format!("{name} - ")),
        "reply text should start with '{name} - ': {close:?}"
    );
    assert!(
        ids.contains(&(close.class_id, close.method_id)),
        "class/method ids of {close:?} should be one of {ids:?}"
    );
    bad.close_ok_then_eof();
    close
}

/// Sends `input` instead of a protocol header and checks the broker answers with its own
/// header, then closes.
fn expect_header_refused(broker: &Broker, input: &[u8]) {
    let mut client = RawClient::connect(broker.amqp_addr());
    client.send(input);
    let reply = client
        .read_until_closed(TIMEOUT)
        .unwrap_or_else(|| panic!("the broker kept the socket open after {input:02x?}"));
    assert_eq!(
        reply,
        PROTOCOL_HEADER.to_vec(),
        "reply to {:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn a_frame_not_ending_in_0xce_is_a_frame_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&frame_ending_with(
        FRAME_METHOD,
        1,
        queue_declare("never").payload(),
        0x00,
    ));
    expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
    scene.assert_survived();
}

#[test]
fn a_frame_larger_than_frame_max_is_a_frame_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    assert!(
        bad.frame_max > 0 && bad.frame_max < 1 << 20,
        "frame_max {}",
        bad.frame_max
    );
    // Only the header: a broker must refuse the frame before buffering a megabyte of it.
    bad.send(&frame_header(FRAME_METHOD, 1, 1 << 20));
    expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
    scene.assert_survived();
}

// frame_max counts the whole frame, header and frame-end included.
#[test]
fn a_frame_of_exactly_frame_max_is_accepted_and_one_octet_more_is_not() {
    let mut scene = Scene::start();
    let frame_max = 4096u32;
    let mut bad = RawClient::open_with_frame_max(scene.broker.amqp_addr(), Some(frame_max));
    bad.open_channel(1);
    bad.declare_queue(1, "at-frame-max");
    let payload = vec![7u8; frame_max as usize - 8];
    let mut publish = basic_publish("", "at-frame-max").frame(1);
    publish.extend_from_slice(&content_header(1, payload.len() as u64));
    let body_frame = body(1, &payload);
    assert_eq!(body_frame.len(), frame_max as usize);
    publish.extend_from_slice(&body_frame);
    bad.send(&publish);
    assert_eq!(
        bad.declare_queue(1, "at-frame-max"),
        1,
        "the message in a frame of exactly frame_max was routed"
    );

    bad.send(&frame_header(FRAME_BODY, 1, frame_max - 8 + 1));
    expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
    scene.assert_survived();
}

#[test]
fn an_unknown_frame_type_is_a_frame_error() {
    let mut scene = Scene::start();
    for kind in [9u8, 0, 4, 0xFF] {
        let mut bad = scene.bad_client();
        bad.send(&frame(kind, 0, &[]));
        let close = expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
        assert!(
            close.text.contains(&kind.to_string()),
            "type {kind}: {close:?}"
        );
    }
    scene.assert_survived();
}

#[test]
fn an_unknown_class_or_method_is_not_implemented() {
    let mut scene = Scene::start();
    let cases = [
        (1u16, Method::new(60, 99)),
        (1, Method::new(77, 10).u32(0)),
        (0, Method::new(10, 99)),
    ];
    for (channel, method) in cases {
        let ids = {
            let p = method.payload();
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        };
        let mut bad = scene.bad_client();
        bad.send(&method.frame(channel));
        expect_hard_error(&mut bad, 540, "NOT_IMPLEMENTED", &[ids]);
    }
    scene.assert_survived();
}

#[test]
fn malformed_method_arguments_are_a_syntax_error() {
    let mut scene = Scene::start();
    // queue.declare whose queue name announces 5 octets and carries 2, then ends.
    let truncated = Method::new(50, 10).u16(0).raw(&[5, b'a', b'b']);
    let mut bad = scene.bad_client();
    bad.send(&truncated.frame(1));
    expect_hard_error(&mut bad, 502, "SYNTAX_ERROR", &[(50, 10)]);

    // queue.declare cut off before its bits and arguments table.
    let short = Method::new(50, 10).u16(0).short("q");
    let mut bad = scene.bad_client();
    bad.send(&short.frame(1));
    expect_hard_error(&mut bad, 502, "SYNTAX_ERROR", &[(50, 10)]);
    scene.assert_survived();
}

#[test]
fn a_content_header_without_a_publish_is_an_unexpected_frame() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&content_header(1, 5));
    expect_hard_error(&mut bad, 505, "UNEXPECTED_FRAME", &[(0, 0)]);
    scene.assert_survived();
}

#[test]
fn a_content_body_without_a_publish_is_an_unexpected_frame() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&body(1, b"hello"));
    expect_hard_error(&mut bad, 505, "UNEXPECTED_FRAME", &[(0, 0)]);
    scene.assert_survived();
}

#[test]
fn a_method_while_a_publish_waits_for_its_content_is_an_unexpected_frame() {
    let mut scene = Scene::start();
    // The blamed method may be the one that arrived (queue.declare) or, as RabbitMQ reports
    // it, the publish whose content was interrupted; never none.
    let blamed = [(50, 10), (60, 40)];

    // Waiting for the body.
    let mut bad = scene.bad_client();
    let mut input = basic_publish("", "well-behaved").frame(1);
    input.extend_from_slice(&content_header(1, 10));
    input.extend_from_slice(&queue_declare("interloper").frame(1));
    bad.send(&input);
    expect_hard_error(&mut bad, 505, "UNEXPECTED_FRAME", &blamed);

    // Waiting for the content header.
    let mut bad = scene.bad_client();
    let mut input = basic_publish("", "well-behaved").frame(1);
    input.extend_from_slice(&queue_declare("interloper").frame(1));
    bad.send(&input);
    expect_hard_error(&mut bad, 505, "UNEXPECTED_FRAME", &blamed);

    // Neither half-published message reached the queue.
    assert_eq!(scene.good.declare_queue(1, "well-behaved"), 0);
    scene.assert_survived();
}

#[test]
fn a_method_on_a_channel_never_opened_is_a_channel_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&queue_declare("nowhere").frame(5));
    expect_hard_error(&mut bad, 504, "CHANNEL_ERROR", &[(50, 10)]);
    scene.assert_survived();
}

/// The resident set size of process `pid` in KiB, where `/proc` tells it.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// A frame on the highest channel number: refusing it must not cost memory in proportion to the
// channel number. Each bad connection sends one 27-octet frame and holds the close unanswered.
#[test]
fn a_frame_on_the_highest_unopened_channel_costs_no_memory() {
    let mut scene = Scene::start();
    let pid = scene.broker.pid();
    let Some(before) = resident_kib(pid) else {
        eprintln!("no /proc/{pid}/status here; nothing to measure");
        return;
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut bad = scene.bad_client();
        bad.send(&queue_declare("nowhere").frame(u16::MAX));
        let close = bad.expect_connection_close();
        assert_eq!(
            (close.code, close.class_id, close.method_id),
            (504, 50, 10),
            "{close:?}"
        );
        held.push(bad);
    }
    let after = resident_kib(pid).expect("resident size");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "8 refused frames grew the broker by {grown} KiB ({before} -> {after} KiB)"
    );
    for mut bad in held {
        bad.close_ok_then_eof();
    }
    scene.assert_survived();
}

#[test]
fn garbage_instead_of_or_before_the_protocol_header_gets_our_header_back() {
    let mut scene = Scene::start();
    expect_header_refused(&scene.broker, b"HELLO WORLD!");
    expect_header_refused(&scene.broker, b"xAMQP\x00\x00\x09\x01");
    expect_header_refused(&scene.broker, b"\x01\x00\x00\x00\x00\x00\x00\xce");
    scene.assert_survived();
}

#[test]
fn a_heartbeat_on_a_channel_other_than_zero_is_a_frame_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&frame(FRAME_HEARTBEAT, 1, &[]));
    expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
    scene.assert_survived();
}

// The other way a heartbeat can be invalid: it carries a payload. AMQP 0-9-1 defines the
// heartbeat frame with an empty payload; RabbitMQ answers any other with 501.
#[test]
fn a_heartbeat_with_a_payload_is_a_frame_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&frame(FRAME_HEARTBEAT, 0, b"thump"));
    expect_hard_error(&mut bad, 501, "FRAME_ERROR", &[(0, 0)]);
    scene.assert_survived();
}

#[test]
fn opening_an_open_channel_again_is_a_channel_error() {
    let mut scene = Scene::start();
    let mut bad = scene.bad_client();
    bad.send(&channel_open().frame(1));
    expect_hard_error(&mut bad, 504, "CHANNEL_ERROR", &[(20, 10)]);
    scene.assert_survived();
}

#[test]
fn a_connection_method_on_a_channel_other_than_zero_is_command_invalid() {
    let mut scene = Scene::start();
    let open = Method::new(10, 40).short("/").short("").u8(0);
    let mut bad = scene.bad_client();
    bad.send(&open.frame(1));
    expect_hard_error(&mut bad, 503, "COMMAND_INVALID", &[(10, 40)]);
    scene.assert_survived();
}

#[test]
fn the_header_of_another_protocol_version_gets_our_header_back() {
    let mut scene = Scene::start();
    // AMQP 0-9 as its spec spells it (RabbitMQ maps this one onto 0-9-1; Junction speaks only
    // 0-9-1), AMQP 0-10, and AMQP 1.0.
    expect_header_refused(&scene.broker, b"AMQP\x01\x01\x00\x09");
    expect_header_refused(&scene.broker, b"AMQP\x01\x01\x00\x0a");
    expect_header_refused(&scene.broker, b"AMQP\x00\x01\x00\x00");
    scene.assert_survived();
}

#[test]
fn a_client_that_stops_mid_frame_harms_no_one_else() {
    let mut scene = Scene::start();
    let addr = scene.broker.amqp_addr();

    // Half a protocol header.
    let mut quitter = RawClient::connect(addr);
    quitter.send(&PROTOCOL_HEADER[..3]);
    quitter.shutdown_write();
    assert_eq!(quitter.read_until_closed(TIMEOUT), Some(Vec::new()));

    // Half a method frame.
    let mut quitter = scene.bad_client();
    let declare = queue_declare("half").frame(1);
    quitter.send(&declare[..declare.len() / 2]);
    quitter.shutdown_write();
    assert_eq!(quitter.read_until_closed(TIMEOUT), Some(Vec::new()));

    // Half a body frame of a message to a queue the good connection watches.
    let mut quitter = scene.bad_client();
    let mut input = basic_publish("", "well-behaved").frame(1);
    input.extend_from_slice(&content_header(1, 100));
    let whole_body = body(1, &[b'x'; 100]);
    input.extend_from_slice(&whole_body[..50]);
    quitter.send(&input);
    quitter.shutdown_write();
    assert_eq!(quitter.read_until_closed(TIMEOUT), Some(Vec::new()));

    // Half a frame header, and the socket dropped without a shutdown.
    let mut quitter = scene.bad_client();
    quitter.send(&frame_header(FRAME_METHOD, 1, 20)[..4]);
    drop(quitter);

    assert_eq!(
        scene.good.declare_queue(1, "well-behaved"),
        0,
        "half a message was published"
    );
    scene.assert_survived();
}

/// A xorshift64 generator: deterministic, so a failing input can be reproduced.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Methods a client may send, to aim random arguments at the method decoders.
const CLIENT_METHODS: &[(u16, u16)] = &[
    (10, 11),
    (10, 31),
    (10, 40),
    (10, 50),
    (10, 51),
    (20, 10),
    (20, 20),
    (20, 21),
    (20, 40),
    (20, 41),
    (30, 10),
    (40, 10),
    (40, 20),
    (40, 30),
    (40, 40),
    (50, 10),
    (50, 20),
    (50, 30),
    (50, 40),
    (50, 50),
    (60, 10),
    (60, 20),
    (60, 30),
    (60, 40),
    (60, 70),
    (60, 80),
    (60, 90),
    (60, 100),
    (60, 110),
    (60, 120),
    (85, 10),
    (90, 10),
    (90, 20),
    (90, 30),
];

/// A random sequence of well-formed fields (integers, short strings, empty or boolean tables),
/// which sometimes lines up with a method's real arguments and gets past the decoder.
fn plausible_arguments(rng: &mut XorShift) -> Vec<u8> {
    let mut args = Method::new(0, 0);
    for _ in 0..rng.below(7) {
        let any = rng.next();
        args = match rng.below(6) {
            0 => args.u8(rng.next() as u8),
            1 => args.u16(rng.pick(&[0, 1, any as u16])),
            2 => args.u32(rng.pick(&[0, 1, any as u32])),
            3 => {
                let len = rng.below(12);
                let name: String = (0..len)
                    .map(|_| char::from(b'a' + rng.below(26) as u8))
                    .collect();
                args.short(&name)
            }
            4 => args.table(&[]),
            _ => args.table(&bool_entry("x-flag", rng.below(2) == 0)),
        };
    }
    args.payload()[4..].to_vec()
}

/// Reply codes a broker may close with when given nonsense; 541 (internal error) is not one.
const ACCEPTABLE_CODES: &[u16] = &[
    200, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540,
];

#[test]
fn random_bytes_after_the_handshake_never_take_the_broker_down() {
    let mut scene = Scene::start();
    let addr = scene.broker.amqp_addr();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    // Reply codes seen, and under 0 the inputs answered with no close at all.
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();

    for iteration in 0..200 {
        let mode = iteration % 5;
        let mut client = if mode == 4 {
            // Random bytes in place of start-ok.
            let mut client = RawClient::connect(addr);
            client.send(PROTOCOL_HEADER);
            client.expect_method(0, (10, 10), "connection.start");
            client
        } else {
            scene.bad_client()
        };
        let input = match mode {
            0 | 4 => {
                let len = 1 + rng.below(64);
                rng.bytes(len)
            }
            1 => {
                // A well-framed method with known ids and random arguments.
                let (class, method) = rng.pick(CLIENT_METHODS);
                let args = if rng.below(2) == 0 {
                    let len = rng.below(48);
                    rng.bytes(len)
                } else {
                    plausible_arguments(&mut rng)
                };
                let channel = rng.pick(&[0, 1, 1, 2]);
                Method::new(class, method).raw(&args).frame(channel)
            }
            2 => {
                // A well-framed frame of any type with a random payload.
                let kind = rng.pick(&[FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT]);
                let any = rng.next() as u16;
                let channel = rng.pick(&[0, 1, 2, any]);
                let len = rng.below(48);
                frame(kind, channel, &rng.bytes(len))
            }
            _ => {
                // A publish followed by a random content frame and random bytes.
                let mut input = basic_publish("", "well-behaved").frame(1);
                let kind = rng.pick(&[FRAME_HEADER, FRAME_BODY]);
                let len = rng.below(32);
                input.extend_from_slice(&frame(kind, 1, &rng.bytes(len)));
                let tail = rng.below(16);
                input.extend_from_slice(&rng.bytes(tail));
                input
            }
        };
        // The broker may already have closed the socket by the time the last bytes go out.
        let _ = client.try_send(&input);
        client.shutdown_write();
        let mut reply = client.read_until_closed(TIMEOUT).unwrap_or_else(|| {
            panic!("iteration {iteration}: the broker kept the socket open after {input:02x?}")
        });
        let mut closed = false;
        while let Some(frame) = split_frame(&mut reply) {
            if matches!(frame.method_ids(), Some((10, 50) | (20, 40))) {
                closed = true;
                let close = Close::decode(&frame);
                *codes.entry(close.code).or_default() += 1;
                assert!(
                    ACCEPTABLE_CODES.contains(&close.code),
                    "iteration {iteration}: {close:?} after {input:02x?}"
                );
            }
        }
        if !closed {
            *codes.entry(0).or_default() += 1;
        }
        assert!(
            reply.is_empty(),
            "iteration {iteration}: the broker's last frame was cut off: {reply:02x?}"
        );
        if iteration % 50 == 49 {
            assert_alive(&mut scene.broker);
        }
    }
    eprintln!(
        "fuzz: 200 inputs in {:?}, close codes {codes:?}",
        started.elapsed()
    );
    scene.assert_survived();
}
