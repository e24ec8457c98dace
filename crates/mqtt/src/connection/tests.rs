//! The MQTT connection state machine driven in memory: packets in, packets out, and the core
//! observed directly (queue counts), without sockets.

use bytes::Bytes;

use junction_core::persistence::Durability;
use junction_core::persistence::testing::HeldStore;
use junction_core::{
    Authorizer, Broker, BrokerConfig, ExchangeTypeRegistry, InternalUsers, Storage,
};

use super::*;
use crate::codec::{Connect, ConnectReturnCode, Publish, QoS};
use crate::settings::Settings;

fn broker() -> Arc<Broker> {
    broker_with(Storage::default())
}

fn broker_with(storage: Storage) -> Arc<Broker> {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    broker_of(users, storage)
}

/// A broker whose users are `users`, with the vhost `/`.
fn broker_of(users: InternalUsers, storage: Storage) -> Arc<Broker> {
    let auth = Authorizer::new(vec![Arc::new(users)], std::time::Duration::from_secs(5));
    let broker = Broker::with_store(
        BrokerConfig::default(),
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        auth,
        storage,
    );
    broker.add_vhost("/");
    broker
}

fn connection(mqtt: &Arc<Mqtt>) -> Connection {
    Connection::new(mqtt.clone(), None)
}

fn connect_packet(client_id: &str, username: Option<&str>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        clean_session: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: username.map(Into::into),
        password: username.map(|_| Bytes::from_static(b"guest")),
    }))
}

async fn feed(connection: &mut Connection, packets: &[Packet]) -> (Next, Vec<Packet>) {
    let mut input = BytesMut::new();
    for packet in packets {
        codec::encode(packet, &mut input);
    }
    let next = connection.on_bytes(&mut input).await;
    let mut output = BytesMut::from(&connection.take_output()[..]);
    let mut replies = Vec::new();
    while let Ok(Some(packet)) = codec::decode(&mut output, usize::MAX) {
        replies.push(packet);
    }
    (next, replies)
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        payload: Bytes::from_static(b"reading"),
    })
}

#[tokio::test]
async fn a_client_without_credentials_is_refused_unless_anonymous_access_is_on() {
    let closed = Settings {
        allow_anonymous: false,
        ..Settings::default()
    };
    let mqtt = Mqtt::new(broker(), closed, None);
    let (next, replies) = feed(&mut connection(&mqtt), &[connect_packet("dev", None)]).await;
    assert_eq!(
        replies,
        vec![Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized
        }]
    );
    assert_eq!(next, Next::Close { graceful: true });

    let mqtt = Mqtt::new(broker(), Settings::default(), None);
    let (next, replies) = feed(&mut connection(&mqtt), &[connect_packet("dev", None)]).await;
    assert_eq!(
        replies,
        vec![Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted
        }]
    );
    assert_eq!(next, Next::Continue);
}

/// By default a client without credentials logs in as guest, who may only log in from
/// loopback (RabbitMQ's `loopback_users`): from another address it gets CONNACK 5.
#[tokio::test]
async fn an_anonymous_client_is_guest_from_loopback_only() {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    users.set_loopback_only("guest");
    let mqtt = Mqtt::new(
        broker_of(users, Storage::default()),
        Settings::default(),
        None,
    );
    for (peer, code) in [
        ("127.0.0.1:50000", ConnectReturnCode::Accepted),
        ("192.0.2.7:50000", ConnectReturnCode::NotAuthorized),
    ] {
        let peer = peer.parse().expect("address");
        let mut connection = Connection::new(mqtt.clone(), Some(peer));
        let (_, replies) = feed(&mut connection, &[connect_packet("dev", None)]).await;
        assert_eq!(
            replies,
            vec![Packet::ConnAck {
                session_present: false,
                code
            }],
            "from {peer}"
        );
    }
}

#[tokio::test]
async fn a_resent_qos2_publish_is_acknowledged_again_but_routed_once() {
    let broker = broker();
    let vhost = broker.vhost("/").expect("vhost");
    let queue = vhost
        .declare_queue(
            junction_core::QueueSpec {
                name: "readings".into(),
                ..Default::default()
            },
            false,
            false,
            ConnectionId(0),
        )
        .await
        .expect("declare")
        .handle;
    vhost
        .bind_queue(
            "readings",
            "amq.topic",
            "sensors.#",
            Default::default(),
            ConnectionId(0),
        )
        .expect("bind");
    let mqtt = Mqtt::new(broker.clone(), Settings::default(), None);
    let mut client = connection(&mqtt);
    feed(&mut client, &[connect_packet("dev", Some("guest"))]).await;

    let first = publish("sensors/a", QoS::ExactlyOnce, Some(7));
    let (_, replies) = feed(&mut client, &[first.clone(), first]).await;
    assert_eq!(replies, vec![Packet::PubRec(7), Packet::PubRec(7)]);
    let (_, replies) = feed(&mut client, &[Packet::PubRel(7)]).await;
    assert_eq!(replies, vec![Packet::PubComp(7)]);
    assert_eq!(queue.stats().await.expect("stats").ready, 1);

    // After PUBREL the identifier is free: the same id is a new message.
    feed(
        &mut client,
        &[publish("sensors/a", QoS::ExactlyOnce, Some(7))],
    )
    .await;
    assert_eq!(queue.stats().await.expect("stats").ready, 2);
}

#[tokio::test]
async fn a_first_publish_during_an_alarm_waits_unread_until_it_clears() {
    let broker = broker();
    let mqtt = Mqtt::new(broker.clone(), Settings::default(), None);
    let mut client = connection(&mqtt);
    feed(&mut client, &[connect_packet("held", Some("guest"))]).await;
    client.set_alarm(Some("low on memory".into()));
    let mut input = BytesMut::new();
    codec::encode(&publish("sensors/a", QoS::AtLeastOnce, Some(3)), &mut input);
    codec::encode(&Packet::PingReq, &mut input);
    let held = input.len();
    assert_eq!(client.on_bytes(&mut input).await, Next::Continue);
    assert_eq!(input.len(), held, "the PUBLISH is left in the buffer");
    assert!(client.is_blocked(), "the connection is a publisher now");
    assert!(!client.has_output(), "no PUBACK while held");
    client.set_alarm(None);
    assert_eq!(client.on_bytes(&mut input).await, Next::Continue);
    assert!(input.is_empty(), "handled once the alarm clears");
    let mut output = BytesMut::from(&client.take_output()[..]);
    let mut replies = Vec::new();
    while let Ok(Some(packet)) = codec::decode(&mut output, usize::MAX) {
        replies.push(packet);
    }
    assert_eq!(replies, vec![Packet::PubAck(3), Packet::PingResp]);
}

#[tokio::test]
async fn protocol_violations_close_the_connection() {
    let mqtt = Mqtt::new(broker(), Settings::default(), None);
    let connected = || async {
        let mut client = connection(&mqtt);
        feed(&mut client, &[connect_packet("dev", Some("guest"))]).await;
        client
    };
    let abrupt = Next::Close { graceful: false };
    for bad in [
        connect_packet("dev", Some("guest")),
        publish("a/+", QoS::AtMostOnce, None),
        publish("a/#", QoS::AtLeastOnce, Some(1)),
        Packet::PingResp,
        Packet::SubAck {
            packet_id: 1,
            codes: vec![0],
        },
    ] {
        let mut client = connected().await;
        let (next, _) = feed(&mut client, std::slice::from_ref(&bad)).await;
        assert_eq!(next, abrupt, "{bad:?}");
    }
    // Anything before CONNECT.
    let (next, _) = feed(&mut connection(&mqtt), &[Packet::PingReq]).await;
    assert_eq!(next, abrupt);
}

fn kept_session_connect(client_id: &str) -> Packet {
    match connect_packet(client_id, Some("guest")) {
        Packet::Connect(mut connect) => {
            connect.clean_session = false;
            Packet::Connect(connect)
        }
        other => other,
    }
}

/// An MQTT adapter on a broker whose store holds completions, with a durable queue bound to
/// `sensors/#`.
async fn stored_readings(store: &Arc<HeldStore>) -> Arc<Mqtt> {
    let broker = broker_with(Storage {
        messages: Some(store.clone()),
        ..Default::default()
    });
    let vhost = broker.vhost("/").expect("vhost");
    vhost
        .declare_queue(
            junction_core::QueueSpec {
                name: "readings".into(),
                durable: true,
                ..Default::default()
            },
            false,
            false,
            ConnectionId(0),
        )
        .await
        .expect("declare");
    vhost
        .bind_queue(
            "readings",
            "amq.topic",
            "sensors.#",
            Default::default(),
            ConnectionId(0),
        )
        .expect("bind");
    Mqtt::new(broker, Settings::default(), None)
}

/// A kept session ends while its QoS 2 publication's write is pending; the store then reports
/// `outcome` (or nothing). Returns what the client hears when it resumes and resends it, and
/// how many writes still wait for the store by then.
async fn resend_after_close_while_writing(outcome: Option<Durability>) -> (Vec<Packet>, usize) {
    let store = Arc::new(HeldStore::new());
    let mqtt = stored_readings(&store).await;
    let mut client = connection(&mqtt);
    feed(&mut client, &[kept_session_connect("dev")]).await;
    let (_, replies) = feed(
        &mut client,
        &[publish("sensors/a", QoS::ExactlyOnce, Some(7))],
    )
    .await;
    assert!(replies.is_empty(), "PUBREC waits for the disk");
    tokio::join!(client.finish(false), async {
        tokio::task::yield_now().await;
        if let Some(outcome) = outcome {
            store.settle(outcome);
        }
    });

    let mut resumed = connection(&mqtt);
    let (_, replies) = feed(&mut resumed, &[kept_session_connect("dev")]).await;
    assert!(matches!(
        replies[..],
        [Packet::ConnAck {
            session_present: true,
            ..
        }]
    ));
    let mut resend = publish("sensors/a", QoS::ExactlyOnce, Some(7));
    if let Packet::Publish(p) = &mut resend {
        p.dup = true;
    }
    let (_, replies) = feed(&mut resumed, &[resend]).await;
    (replies, store.held())
}

#[tokio::test]
async fn a_qos2_publication_whose_write_fails_after_the_connection_ends_is_routed_again_on_resend()
{
    let (replies, writes) = resend_after_close_while_writing(Some(Durability::Failed)).await;
    assert_eq!(replies, vec![], "no PUBREC before the resend is on disk");
    assert_eq!(writes, 1, "the resend is written again");
}

#[tokio::test]
async fn a_qos2_publication_written_after_the_connection_ends_is_a_duplicate_on_resend() {
    let (replies, writes) = resend_after_close_while_writing(Some(Durability::OnDisk)).await;
    assert_eq!(replies, vec![Packet::PubRec(7)]);
    assert_eq!(writes, 0, "routed once");
}

#[tokio::test(start_paused = true)]
async fn a_qos2_publication_still_unwritten_when_the_close_wait_ends_is_routed_again_on_resend() {
    let (replies, writes) = resend_after_close_while_writing(None).await;
    assert_eq!(replies, vec![], "no PUBREC before the resend is on disk");
    assert_eq!(writes, 2, "the resend is written again");
}
