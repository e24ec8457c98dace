//! MQTT 3.1.1 end to end with rumqttc against the real binary: QoS 0, 1 and 2 round trips over
//! TCP and over WebSocket (both listeners that serve `/ws`), crossing to AMQP and back through
//! `amq.topic` with lapin, and a persistent session (`clean_session = false`) that finds the
//! QoS 1 messages published while it was offline after the broker restarted, cleanly or after
//! SIGKILL; and connections that went quiet (and parked) waking for a delivery, a takeover and
//! shutdown, with parking on and off.
//!
//! Each client's event loop runs in its own task and hands every event to the test through a
//! channel; the test awaits those events with deadlines (nothing blocks the runtime, nothing
//! sleeps to synchronise).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use common::{STEP, open, text, unique, within};
use junction_tests::Broker;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

/// How a client reaches the broker.
#[derive(Debug, Clone)]
enum Way {
    /// MQTT over TCP.
    Tcp(SocketAddr),
    /// MQTT over WebSocket, at this `ws://` URL.
    Ws(String),
}

impl Way {
    fn tcp(broker: &Broker) -> Way {
        Way::Tcp(broker.mqtt_addr())
    }

    fn ws(addr: SocketAddr) -> Way {
        Way::Ws(format!("ws://{addr}/ws"))
    }
}

/// What the event-loop task reports: an event, or the error that ended the connection.
type Report = Result<Event, String>;

/// A connected rumqttc client whose event loop runs in a task. Publications that arrive while
/// the test waits for something else are kept for [`Client::next_publish`]. Dropping it ends
/// the event loop, which closes the socket without DISCONNECT.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Report>,
    publishes: VecDeque<Publish>,
    task: JoinHandle<()>,
    /// The CONNACK's session-present flag.
    session_present: bool,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects as guest (keep-alive 30 s) and waits for a successful CONNACK.
    async fn connect(way: &Way, client_id: &str, clean_session: bool) -> Client {
        let mut options = match way {
            Way::Tcp(addr) => MqttOptions::new(client_id, addr.ip().to_string(), addr.port()),
            Way::Ws(url) => {
                let mut options = MqttOptions::new(client_id, url.clone(), 0);
                options.set_transport(Transport::Ws);
                options
            }
        };
        options
            .set_credentials("guest", "guest")
            .set_clean_session(clean_session)
            .set_keep_alive(Duration::from_secs(30));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        let mut connected = Client {
            client,
            events,
            publishes: VecDeque::new(),
            task,
            session_present: false,
        };
        let connack = connected
            .wait_for("CONNACK", |event| match event {
                Event::Incoming(Packet::ConnAck(connack)) => Some(connack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success, "CONNACK code");
        connected.session_present = connack.session_present;
        connected
    }

    /// Waits (at most [`STEP`]) for an event `pick` accepts; publications passed over on the
    /// way are kept. Panics if the connection ends first.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + STEP;
        loop {
            let report = match timeout_at(deadline, self.events.recv()).await {
                Ok(Some(report)) => report,
                Ok(None) => panic!("{what}: the event loop is gone"),
                Err(_) => panic!("{what}: not seen within {STEP:?}"),
            };
            let event = match report {
                Ok(event) => event,
                Err(error) => panic!("{what}: the connection ended: {error}"),
            };
            if let Some(found) = pick(&event) {
                return found;
            }
            if let Event::Incoming(Packet::Publish(publish)) = event {
                self.publishes.push_back(publish);
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK's return code.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        within("subscribe request", self.client.subscribe(filter, qos))
            .await
            .expect("subscribe request");
        let codes = self
            .wait_for("SUBACK", |event| match event {
                Event::Incoming(Packet::SubAck(suback)) => Some(suback.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes.len(), 1, "one return code per filter");
        codes[0]
    }

    /// Publishes and waits until it is done: written for QoS 0, PUBACK for QoS 1, PUBCOMP for
    /// QoS 2.
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        within(
            "publish request",
            self.client.publish(topic, qos, retain, payload.to_vec()),
        )
        .await
        .expect("publish request");
        let pkid = self
            .wait_for("the PUBLISH going out", |event| match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |event| match event {
                    Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |event| match event {
                    Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    /// The next publication from the broker.
    async fn next_publish(&mut self, what: &str) -> Publish {
        if let Some(publish) = self.publishes.pop_front() {
            return publish;
        }
        self.wait_for(what, |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Waits until the broker closes the connection (no DISCONNECT from us).
    async fn closed_by_the_broker(mut self, what: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            match timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return,
                Err(_) => panic!("{what}: still open after {STEP:?}"),
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection.
    async fn disconnect(self) {
        within("disconnect request", self.client.disconnect())
            .await
            .expect("disconnect request");
        self.closed_by_the_broker("the connection after DISCONNECT")
            .await;
    }
}

/// Runs a client's event loop until its connection fails (no reconnecting), reporting every
/// event.
async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Report>) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(Ok(event)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Err(error.to_string()));
                return;
            }
        }
    }
}

fn qos_name(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "qos0",
        QoS::AtLeastOnce => "qos1",
        QoS::ExactlyOnce => "qos2",
    }
}

/// Publishes three messages and an end marker at `qos` from one client to a subscriber at the
/// same QoS, and checks they arrive once each, in order, at that QoS, unflagged.
async fn round_trip(way: &Way, qos: QoS) {
    let topic = format!("{}/round/trip", unique(qos_name(qos)));
    let mut subscriber = Client::connect(way, &unique("sub"), true).await;
    assert_eq!(
        subscriber.subscribe(&topic, qos).await,
        SubscribeReasonCode::Success(qos)
    );
    let mut publisher = Client::connect(way, &unique("pub"), true).await;
    let bodies = ["one", "two", "three", "end"];
    for body in bodies {
        publisher.publish(&topic, qos, false, body.as_bytes()).await;
    }
    // Everything before the end marker is everything that was sent: a duplicate would show.
    for body in bodies {
        let got = subscriber.next_publish(&format!("'{body}'")).await;
        assert_eq!(text(&got.payload), body, "{way:?} {qos:?}: order");
        assert_eq!(got.topic, topic);
        assert_eq!(
            got.qos, qos,
            "{way:?}: delivered at the QoS published and granted"
        );
        assert!(!got.retain, "a live delivery is not flagged retained");
        assert!(!got.dup);
    }
    publisher.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test]
async fn qos0_round_trip_over_tcp() {
    let broker = Broker::start_mqtt();
    round_trip(&Way::tcp(&broker), QoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos1_round_trip_over_tcp() {
    let broker = Broker::start_mqtt();
    round_trip(&Way::tcp(&broker), QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_round_trip_over_tcp() {
    let broker = Broker::start_mqtt();
    round_trip(&Way::tcp(&broker), QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn round_trips_over_websocket_on_both_listeners() {
    let broker = Broker::start_mqtt();
    for addr in [broker.web_mqtt_addr(), broker.http_addr()] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            round_trip(&Way::ws(addr), qos).await;
        }
    }
}

#[tokio::test]
async fn a_websocket_publisher_reaches_a_tcp_subscriber() {
    let broker = Broker::start_mqtt();
    let topic = format!("{}/mixed", unique("ws-to-tcp"));
    let mut subscriber = Client::connect(&Way::tcp(&broker), &unique("sub"), true).await;
    subscriber.subscribe(&topic, QoS::ExactlyOnce).await;
    let mut publisher =
        Client::connect(&Way::ws(broker.web_mqtt_addr()), &unique("pub"), true).await;
    publisher
        .publish(&topic, QoS::ExactlyOnce, false, b"across")
        .await;
    let got = subscriber.next_publish("the publication").await;
    assert_eq!(
        (text(&got.payload), got.qos),
        ("across".into(), QoS::ExactlyOnce)
    );
}

#[tokio::test]
async fn amqp_publish_to_amq_topic_reaches_an_mqtt_subscriber() {
    let broker = Broker::start_mqtt();
    let base = unique("amqp-to-mqtt");
    let mut subscriber = Client::connect(&Way::tcp(&broker), &unique("sub"), true).await;
    subscriber
        .subscribe(&format!("{base}/+/k"), QoS::AtLeastOnce)
        .await;

    let (_connection, channel) = open(&broker).await;
    let key = format!("{base}.n.k");
    common::publish_with(
        &channel,
        "amq.topic",
        &key,
        b"persistent",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    common::publish(&channel, "amq.topic", &key, b"transient").await;

    let first = subscriber.next_publish("the persistent message").await;
    assert_eq!(first.topic, format!("{base}/n/k"));
    assert_eq!(text(&first.payload), "persistent");
    assert_eq!(
        first.qos,
        QoS::AtLeastOnce,
        "persistent AMQP messages go at QoS 1"
    );
    let second = subscriber.next_publish("the transient message").await;
    assert_eq!(text(&second.payload), "transient");
    assert_eq!(
        second.qos,
        QoS::AtMostOnce,
        "transient AMQP messages go at QoS 0"
    );
}

#[tokio::test]
async fn mqtt_publish_reaches_an_amqp_queue_bound_to_amq_topic() {
    let broker = Broker::start_mqtt();
    let base = unique("mqtt-to-amqp");
    let (_connection, channel) = open(&broker).await;
    let queue = unique("from-mqtt");
    within(
        "queue.declare",
        channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    within(
        "queue.bind",
        channel.queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            format!("{base}.#").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");

    let mut publisher = Client::connect(&Way::tcp(&broker), &unique("pub"), true).await;
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .publish(
                &format!("{base}/n/k"),
                qos,
                false,
                format!("m{n}").as_bytes(),
            )
            .await;
    }
    // The QoS 0 message has no acknowledgement: wait until it is in the queue too.
    common::until("three messages in the queue", || {
        let channel = channel.clone();
        let queue = queue.clone();
        async move { common::ready(&channel, &queue).await == 3 }
    })
    .await;
    for (n, qos) in [0i8, 1, 2].into_iter().enumerate() {
        let message = within(
            "basic.get",
            channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .expect("a message");
        let delivery = &message.delivery;
        assert_eq!(text(&delivery.data), format!("m{n}"));
        assert_eq!(delivery.exchange.as_str(), "amq.topic");
        assert_eq!(delivery.routing_key.as_str(), format!("{base}.n.k"));
        let persistent = delivery.properties.delivery_mode() == &Some(2);
        assert_eq!(persistent, qos > 0, "QoS 1 and 2 messages are persistent");
        let header = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-mqtt-publish-qos").cloned());
        let header = match header {
            Some(AMQPValue::ShortShortInt(q)) => i64::from(q),
            Some(AMQPValue::ShortShortUInt(q)) => i64::from(q),
            Some(AMQPValue::ShortInt(q)) => i64::from(q),
            Some(AMQPValue::LongInt(q)) => i64::from(q),
            Some(AMQPValue::LongLongInt(q)) => q,
            other => panic!("x-mqtt-publish-qos header: {other:?}"),
        };
        assert_eq!(
            header,
            i64::from(qos),
            "the published QoS travels in a header"
        );
    }
}

/// A persistent session subscribes at QoS 1 and goes away; QoS 1 messages published while it
/// is offline survive a restart of the broker (made by `restart`), and the session, resumed
/// with `clean_session = false`, gets them once each, in order, then nothing again.
async fn offline_messages_survive_a_restart(label: &str, signal: &str) {
    let data_dir = junction_tests::temp_dir(label);
    let client_id = unique("persistent");
    let topic = format!("{}/offline", unique(label));
    let bodies = ["while", "you", "were", "away"];

    let mut broker = Broker::start_mqtt_in(data_dir.clone(), &[]);
    {
        let mut device = Client::connect(&Way::tcp(&broker), &client_id, false).await;
        assert!(!device.session_present, "a new session");
        assert_eq!(
            device.subscribe(&topic, QoS::AtLeastOnce).await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        device.disconnect().await;
    }
    {
        let mut publisher = Client::connect(&Way::tcp(&broker), &unique("pub"), true).await;
        for body in bodies {
            // PUBACK comes once the message is on disk.
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, body.as_bytes())
                .await;
        }
        publisher.disconnect().await;
    }
    broker.signal(signal);
    let exited = tokio::task::spawn_blocking(move || {
        let exited = broker.wait_exit(Duration::from_secs(15));
        (broker, exited)
    })
    .await
    .expect("wait for exit");
    assert!(exited.1.is_some(), "the broker did not exit on SIG{signal}");
    drop(exited.0);

    let broker = tokio::task::spawn_blocking(move || Broker::start_mqtt_in(data_dir, &[]))
        .await
        .expect("restart");
    let mut device = Client::connect(&Way::tcp(&broker), &client_id, false).await;
    assert!(
        device.session_present,
        "the session (its subscription) survived the restart"
    );
    for body in bodies {
        let got = device
            .next_publish(&format!("offline message '{body}'"))
            .await;
        assert_eq!(text(&got.payload), body, "offline messages in order");
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, QoS::AtLeastOnce);
    }
    // The subscription still works for live messages.
    let mut publisher = Client::connect(&Way::tcp(&broker), &unique("pub"), true).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"live")
        .await;
    let live = device.next_publish("the live message").await;
    assert_eq!(text(&live.payload), "live");
    device.disconnect().await;

    // Everything was acknowledged: the next connection gets only what comes next.
    let mut device = Client::connect(&Way::tcp(&broker), &client_id, false).await;
    assert!(device.session_present);
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"next")
        .await;
    let next = device.next_publish("the next message").await;
    assert_eq!(
        text(&next.payload),
        "next",
        "acknowledged messages are not delivered again"
    );
    device.disconnect().await;
    publisher.disconnect().await;

    // A clean session ends it: nothing is kept for the client id afterwards.
    let device = Client::connect(&Way::tcp(&broker), &client_id, true).await;
    assert!(!device.session_present);
    device.disconnect().await;
    let device = Client::connect(&Way::tcp(&broker), &client_id, false).await;
    assert!(
        !device.session_present,
        "a clean session removed the saved one"
    );
    device.disconnect().await;
}

#[tokio::test]
async fn persistent_session_gets_offline_messages_after_a_clean_restart() {
    offline_messages_survive_a_restart("restart-term", "TERM").await;
}

#[tokio::test]
async fn persistent_session_gets_offline_messages_after_sigkill() {
    offline_messages_survive_a_restart("restart-kill", "KILL").await;
}

/// Longer than a busy connection lingers in its task before it parks (1 s): the connections
/// below are parked when the next thing happens (with parking on).
const QUIET_SPELL: Duration = Duration::from_millis(1500);

/// A subscriber that has been quiet gets a publication, is closed when another connection
/// takes its client id over, and the taker, quiet too, is closed when the broker stops, which
/// it does cleanly and at once.
async fn quiet_connections_wake_up(mut broker: Broker) {
    let way = Way::tcp(&broker);
    let topic = format!("{}/quiet", unique("park"));
    let device_id = unique("device");
    let mut device = Client::connect(&way, &device_id, true).await;
    device.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&way, &unique("pub"), true).await;

    tokio::time::sleep(QUIET_SPELL).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"wake up")
        .await;
    let got = device
        .next_publish("the delivery to the quiet subscriber")
        .await;
    assert_eq!(text(&got.payload), "wake up");

    tokio::time::sleep(QUIET_SPELL).await;
    let successor = Client::connect(&way, &device_id, true).await;
    device
        .closed_by_the_broker("the connection whose session was taken over")
        .await;

    tokio::time::sleep(QUIET_SPELL).await;
    broker.signal("TERM");
    successor
        .closed_by_the_broker("a quiet connection when the broker stops")
        .await;
    publisher
        .closed_by_the_broker("another quiet connection when the broker stops")
        .await;
    let exited = tokio::task::spawn_blocking(move || broker.wait_exit(STEP))
        .await
        .expect("wait for exit");
    assert_eq!(exited, Some(true), "a clean exit on SIGTERM");
}

#[tokio::test]
async fn quiet_connections_wake_for_a_delivery_a_takeover_and_shutdown() {
    quiet_connections_wake_up(Broker::start_mqtt()).await;
}

#[tokio::test]
async fn with_parking_off_quiet_connections_behave_the_same() {
    let dir = junction_tests::temp_dir("no-parking");
    let config = dir.join("junction.toml");
    std::fs::write(&config, "[mqtt]\npark_idle_connections = false\n").expect("write config");
    let config = config.to_string_lossy().into_owned();
    let data = junction_tests::temp_dir("no-parking-data");
    let broker = Broker::start_mqtt_in(data, &["--config", &config]);
    quiet_connections_wake_up(broker).await;
}
