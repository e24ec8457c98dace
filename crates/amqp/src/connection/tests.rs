//! The connection state machine driven in memory, without sockets.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::types::FieldTable as WireTable;
use junction_core::{AuthChain, BrokerConfig, ExchangeTypeRegistry, InternalUsers};

use super::*;

fn encode(frame: &AMQPFrame) -> BytesMut {
    let buffer = gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode")
        .into_inner()
        .0;
    BytesMut::from(&buffer[..])
}

fn decode_all(mut bytes: &[u8]) -> Vec<AMQPFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (rest, frame) = parse_frame(bytes).expect("valid server frame");
        frames.push(frame);
        bytes = rest;
    }
    frames
}

fn method(channel: u16, class: AMQPClass) -> BytesMut {
    encode(&AMQPFrame::Method(channel, class))
}

/// An open connection for guest, whose client announced connection.blocked support.
async fn open_connection() -> Connection {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    let mut auth = AuthChain::new();
    auth.push(Arc::new(users));
    let broker = Broker::new(
        BrokerConfig::default(),
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        auth,
    );
    let mut connection = Connection::new(broker, Arc::new(Settings::default()), None);
    let mut input = BytesMut::from(&PROTOCOL_HEADER[..]);
    let mut capabilities = WireTable::default();
    capabilities.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    let mut client_properties = WireTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    input.extend_from_slice(&method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::StartOk(conn::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    ));
    input.extend_from_slice(&method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::TuneOk(conn::TuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        })),
    ));
    input.extend_from_slice(&method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Open(conn::Open {
            virtual_host: "/".into(),
        })),
    ));
    assert_eq!(connection.on_bytes(&mut input).await, Next::Continue);
    assert_eq!(connection.state(), State::Open);
    connection.take_output();
    connection
}

#[tokio::test]
async fn a_resource_alarm_blocks_and_unblocks_a_client_that_asked() {
    let mut connection = open_connection().await;
    connection.set_alarm(Some("low on memory".into()));
    assert!(
        connection.take_output().is_empty(),
        "only publishers are told they are blocked"
    );
    assert!(
        !connection.is_blocked(),
        "not a publisher yet: keep reading"
    );
    connection.session.has_published = true;
    connection.notify_blocked();
    let frames = decode_all(&connection.take_output());
    assert!(matches!(
        &frames[..],
        [AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Blocked(b)))]
            if b.reason.as_str() == "low on memory"
    ));
    assert!(
        connection.is_blocked(),
        "a publisher is not read during an alarm"
    );
    connection.set_alarm(None);
    let frames = decode_all(&connection.take_output());
    assert!(matches!(
        &frames[..],
        [AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Unblocked(_))
        )]
    ));
    assert!(!connection.is_blocked());
}

#[tokio::test]
async fn a_first_publish_during_an_alarm_waits_unread_until_it_clears() {
    let mut connection = open_connection().await;
    let mut input = method(
        1,
        AMQPClass::Channel(channel_methods::AMQPMethod::Open(channel_methods::Open {})),
    );
    connection.on_bytes(&mut input).await;
    connection.take_output();
    connection.set_alarm(Some("low on memory".into()));
    let mut input = method(
        1,
        AMQPClass::Basic(basic_methods::AMQPMethod::Publish(basic_methods::Publish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let held = input.len();
    assert_eq!(connection.on_bytes(&mut input).await, Next::Continue);
    assert_eq!(input.len(), held, "the publish is left in the buffer");
    assert!(connection.is_blocked(), "the connection is a publisher now");
    let frames = decode_all(&connection.take_output());
    assert!(matches!(
        &frames[..],
        [AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Blocked(_))
        )]
    ));
    connection.set_alarm(None);
    connection.take_output();
    assert_eq!(connection.on_bytes(&mut input).await, Next::Continue);
    assert!(input.is_empty(), "handled once the alarm clears");
}

#[tokio::test]
async fn a_method_before_channel_open_is_a_channel_error() {
    let mut connection = open_connection().await;
    let mut input = method(
        3,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Purge(
            amq_protocol::protocol::queue::Purge {
                queue: "q".into(),
                nowait: false,
            },
        )),
    );
    connection.on_bytes(&mut input).await;
    let frames = decode_all(&connection.take_output());
    assert!(matches!(
        &frames[..],
        [AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Close(c)))]
            if c.reply_code == code::CHANNEL_ERROR && c.class_id == 50
    ));
    assert_eq!(connection.state(), State::Closing);
}
