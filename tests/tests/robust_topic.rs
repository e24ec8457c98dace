//! Robustness of topic routing against the real binary (issue 13, defects 2 to 4): a filter of
//! 16,000 levels is refused without taking the broker down, a binding full of `#`s meets a long
//! routing key without freezing every protocol, and many binds and unbinds (and a restart that
//! restores them) leave routing right.
//!
//! The MQTT and STOMP clients here are raw sockets, so nothing limits what they send. Each
//! wait has a deadline; the deadlines are generous and only catch a crash or a freeze.

// The MQTT packets; the AMQP client goes unused.
#[allow(dead_code)]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use junction_tests::{Broker, Listeners, temp_dir};
use support::raw_mqtt as mqtt;

/// How long anything may take before the test calls it a freeze.
const DEADLINE: Duration = Duration::from_secs(10);

/// A broker with AMQP, MQTT and STOMP listeners on free loopback ports.
fn start() -> Broker {
    start_in(temp_dir("robust-topic"))
}

/// Like [`start`], on an existing data directory.
fn start_in(data_dir: PathBuf) -> Broker {
    Broker::start_listening(data_dir, Listeners::Tcp)
}

/// Stops the broker (SIGKILL is enough: only durable definitions matter here) and returns its
/// data directory.
fn kill(mut broker: Broker) -> PathBuf {
    broker.signal("KILL");
    broker.wait_exit(DEADLINE);
    broker.data_dir.clone()
}

/// `levels` copies of `word` joined by `separator`.
fn repeated(word: &str, separator: &str, levels: usize) -> String {
    vec![word; levels].join(separator)
}

/// A socket with a read buffer and a deadline-bounded read.
struct Socket {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Socket {
    fn connect(addr: SocketAddr) -> Socket {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        Socket {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes; false when the broker closed the connection or the deadline passed.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }
}

/// A raw MQTT client.
struct MqttClient(Socket);

impl MqttClient {
    /// Connects as guest with a clean session and waits for CONNACK 0.
    fn connect(addr: SocketAddr, client_id: &str) -> MqttClient {
        let mut client = MqttClient(Socket::connect(addr));
        client
            .0
            .send(&mqtt::connect(client_id, true))
            .expect("CONNECT");
        let (first, body) = client.packet().expect("CONNACK");
        assert_eq!((first, body), (0x20, vec![0, 0]), "CONNACK accepted");
        client
    }

    /// The next packet, or `None` when the broker closed the connection or went quiet for
    /// [`DEADLINE`].
    fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(packet) = mqtt::split(&mut self.0.buffer) {
                return Some(packet);
            }
            if !self.0.fill(deadline) {
                return None;
            }
        }
    }

    /// The next packet of kind `first`, skipping others (deliveries, say).
    fn expect(&mut self, first: u8) -> Vec<u8> {
        loop {
            match self.packet() {
                Some((kind, body)) if kind == first => return body,
                Some(_) => continue,
                None => panic!("no packet 0x{first:02x} within {DEADLINE:?}"),
            }
        }
    }

    /// The SUBACK codes for `filters`.
    fn subscribe(&mut self, packet_id: u16, filters: &[&str]) -> Vec<u8> {
        self.0
            .send(&mqtt::subscribe(packet_id, filters))
            .expect("SUBSCRIBE");
        let body = self.expect(0x90);
        assert_eq!(body[..2], packet_id.to_be_bytes(), "SUBACK packet id");
        body[2..].to_vec()
    }

    fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) {
        self.0
            .send(&mqtt::unsubscribe(packet_id, filters))
            .expect("UNSUBSCRIBE");
        let body = self.expect(0xB0);
        assert_eq!(body, packet_id.to_be_bytes(), "UNSUBACK packet id");
    }

    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.0
            .send(&mqtt::publish(topic, payload))
            .expect("PUBLISH");
    }

    /// A PINGREQ answered by a PINGRESP: the broker still serves this connection.
    fn ping(&mut self) {
        self.0.send(&mqtt::PINGREQ).expect("PINGREQ");
        self.expect(0xD0);
    }

    /// The next delivery's topic and payload.
    fn delivery(&mut self) -> (String, Vec<u8>) {
        mqtt::topic_and_payload(&self.expect(0x30))
    }

    /// Whether the broker closes the connection within [`DEADLINE`] (packets before are
    /// skipped): the read ends before the deadline.
    fn closed_by_broker(&mut self) -> bool {
        let started = Instant::now();
        while self.packet().is_some() {}
        started.elapsed() < DEADLINE
    }
}

/// A raw STOMP 1.2 client.
struct StompClient(Socket);

impl StompClient {
    fn connect(addr: SocketAddr) -> StompClient {
        let mut client = StompClient(Socket::connect(addr));
        client.send_frame(
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "/"),
                ("login", "guest"),
                ("passcode", "guest"),
                ("heart-beat", "0,0"),
            ],
        );
        let (command, _) = client.frame().expect("CONNECTED");
        assert_eq!(command, "CONNECTED");
        client
    }

    fn send_frame(&mut self, command: &str, headers: &[(&str, &str)]) {
        let mut frame = format!("{command}\n");
        for (name, value) in headers {
            frame.push_str(&format!("{name}:{value}\n"));
        }
        frame.push_str("\n\0");
        self.0.send(frame.as_bytes()).expect("send a STOMP frame");
    }

    /// The next frame's command and headers, or `None` when the connection closed or went
    /// quiet for [`DEADLINE`].
    fn frame(&mut self) -> Option<(String, Vec<(String, String)>)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            while matches!(self.0.buffer.first(), Some(b'\n' | b'\r')) {
                self.0.buffer.remove(0);
            }
            if let Some(end) = self.0.buffer.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.0.buffer.drain(..=end).collect();
                let text = String::from_utf8_lossy(&frame[..end]).into_owned();
                let head = text.split("\n\n").next().unwrap_or_default();
                let mut lines = head.lines();
                let command = lines.next().unwrap_or_default().to_owned();
                let headers = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                return Some((command, headers));
            }
            if !self.0.fill(deadline) {
                return None;
            }
        }
    }

    /// SUBSCRIBE with a receipt; returns the broker's answer (`RECEIPT` or `ERROR`).
    fn subscribe(&mut self, id: &str, destination: &str) -> String {
        self.send_frame(
            "SUBSCRIBE",
            &[
                ("id", id),
                ("destination", destination),
                ("ack", "auto"),
                ("receipt", id),
            ],
        );
        match self.frame() {
            Some((command, _)) => command,
            None => panic!("no answer to SUBSCRIBE within {DEADLINE:?}"),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A client on every protocol's listener still gets answers.
fn canaries_answer(broker: &Broker) {
    let mut mqtt = MqttClient::connect(broker.mqtt_addr(), "canary");
    mqtt.ping();
    let mut stomp = StompClient::connect(broker.stomp_addr());
    assert_eq!(stomp.subscribe("canary", "/topic/canary"), "RECEIPT");
}

#[test]
fn a_deep_mqtt_filter_is_refused_and_the_broker_stays_up() {
    let mut broker = start();
    let mut client = MqttClient::connect(broker.mqtt_addr(), "deep");
    let deep = repeated("a", "/", 16_000);
    let at_limit = repeated("a", "/", 256);
    // The deep filter fails, the others in the same SUBSCRIBE are granted.
    let codes = client.subscribe(1, &[&deep, "ok/+", &at_limit]);
    assert_eq!(codes, vec![0x80, 0, 0]);
    // A filter at the limit routes.
    client.publish(&at_limit, b"at the limit");
    assert_eq!(
        client.delivery(),
        (at_limit.clone(), b"at the limit".to_vec())
    );
    // Unsubscribing from an even deeper filter is harmless.
    client.unsubscribe(2, &[&repeated("b", "/", 32_000), &deep]);
    client.ping();
    // Publishing to a topic past the limit closes that connection only.
    client.publish(&deep, b"too deep");
    assert!(client.closed_by_broker(), "the connection is closed");
    assert!(broker.running(), "the broker is still running");
    canaries_answer(&broker);
}

#[test]
fn a_stomp_exchange_key_past_the_word_limit_gets_an_error_frame() {
    let mut broker = start();
    let mut client = StompClient::connect(broker.stomp_addr());
    let long = format!("/exchange/amq.topic/{}", repeated("#", ".", 5_000));
    assert_eq!(client.subscribe("long", &long), "ERROR");
    assert!(broker.running());
    canaries_answer(&broker);
}

#[test]
fn many_hashes_and_a_long_key_route_quickly_while_canaries_keep_working() {
    let broker = start();
    // The binding: twelve `#`s then `z`, from a STOMP subscriber.
    let mut subscriber = StompClient::connect(broker.stomp_addr());
    let pattern = format!("{}.z", repeated("#", ".", 12));
    assert_eq!(
        subscriber.subscribe("hashes", &format!("/topic/{pattern}")),
        "RECEIPT"
    );
    // Also the most `#`s a /topic/ key allows, apart, so many trie nodes stay active.
    let apart = format!("{}.#", repeated("#.q", ".", 60));
    assert_eq!(
        subscriber.subscribe("apart", &format!("/topic/{apart}")),
        "RECEIPT"
    );
    let mut canary = MqttClient::connect(broker.mqtt_addr(), "canary-before");
    let mut publisher = MqttClient::connect(broker.mqtt_addr(), "publisher");
    let started = Instant::now();
    let long = repeated("q", "/", 250);
    publisher.publish(&long, b"no z");
    publisher.publish(&format!("{long}/z"), b"ends in z");
    canary.ping();
    publisher.ping();
    // Every message that matches arrives, in order: "no z" only through `apart`.
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let Some((command, headers)) = subscriber.frame() else {
            panic!("deliveries stopped after {bodies:?}");
        };
        assert_eq!(command, "MESSAGE");
        bodies.push(
            header(&headers, "subscription")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    bodies.sort();
    assert_eq!(bodies, vec!["apart", "apart", "hashes"]);
    assert!(
        started.elapsed() < DEADLINE,
        "routing took {:?}",
        started.elapsed()
    );
    canaries_answer(&broker);
}

#[test]
fn many_binds_and_unbinds_leave_routing_right_and_survive_a_restart() {
    let broker = start();
    let mut subscriber = MqttClient::connect(broker.mqtt_addr(), "many");
    const DEVICES: usize = 3_000;
    let filters: Vec<String> = (0..DEVICES).map(|i| format!("dev/{i}/#")).collect();
    for (batch, chunk) in filters.chunks(500).enumerate() {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let codes = subscriber.subscribe(batch as u16 + 1, &chunk);
        assert!(codes.iter().all(|c| *c == 0), "all granted");
    }
    let odd: Vec<&str> = filters
        .iter()
        .skip(1)
        .step_by(2)
        .map(String::as_str)
        .collect();
    for (batch, chunk) in odd.chunks(500).enumerate() {
        subscriber.unsubscribe(100 + batch as u16, chunk);
    }
    let mut publisher = MqttClient::connect(broker.mqtt_addr(), "many-publisher");
    for i in [1, 2, 2_999, 2_998, 1_501, 0] {
        publisher.publish(&format!("dev/{i}/reading"), format!("{i}").as_bytes());
    }
    publisher.publish("dev/0/end", b"end");
    let mut got = Vec::new();
    loop {
        let (topic, payload) = subscriber.delivery();
        if topic == "dev/0/end" {
            break;
        }
        got.push(String::from_utf8_lossy(&payload).into_owned());
    }
    assert_eq!(got, vec!["2", "2998", "0"], "even devices only, in order");
    drop(subscriber);

    // Durable bindings come back after a restart, through the one-pass recovery.
    let mut stomp = StompClient::connect(broker.stomp_addr());
    for i in 0..300 {
        let destination = format!("/topic/room.{i}.*");
        stomp.send_frame(
            "SUBSCRIBE",
            &[
                ("id", &format!("room-{i}")),
                ("destination", &destination),
                ("durable", "true"),
                ("auto-delete", "false"),
            ],
        );
    }
    assert_eq!(stomp.subscribe("last", "/topic/last"), "RECEIPT");
    drop(stomp);
    let data_dir = kill(broker);
    let broker = start_in(data_dir);
    // Published before anyone subscribes again: only the recovered bindings route these.
    let mut publisher = MqttClient::connect(broker.mqtt_addr(), "after-restart");
    publisher.publish("room/8/temp", b"other room");
    publisher.publish("room/299/temp", b"299");
    publisher.publish("room/7/temp", b"7");
    publisher.ping();
    let mut stomp = StompClient::connect(broker.stomp_addr());
    let mut seen = Vec::new();
    for i in [7, 299] {
        stomp.send_frame(
            "SUBSCRIBE",
            &[
                ("id", &format!("room-{i}")),
                ("destination", &format!("/topic/room.{i}.*")),
                ("durable", "true"),
                ("auto-delete", "false"),
            ],
        );
        let Some((command, headers)) = stomp.frame() else {
            panic!("no delivery after the restart; got {seen:?}");
        };
        assert_eq!(command, "MESSAGE");
        seen.push(
            header(&headers, "destination")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(seen, vec!["/topic/room.7.temp", "/topic/room.299.temp"]);
}
