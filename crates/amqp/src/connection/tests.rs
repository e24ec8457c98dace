//! The connection state machine driven in memory, without sockets.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::types::FieldTable as WireTable;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{confirm as confirm_methods, tx as tx_methods};
use junction_core::persistence::testing::HeldStore;
use junction_core::queue::ConnectionId;
use junction_core::{
    Authorizer, BrokerConfig, ExchangeTypeRegistry, FieldTable, FieldValue, InternalUsers,
    QueueSpec, Storage,
};

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
    open_connection_with(Storage::default()).await
}

/// An open connection on a broker keeping messages in `storage`.
async fn open_connection_with(storage: Storage) -> Connection {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    let auth = Authorizer::new(vec![Arc::new(users)], std::time::Duration::from_secs(5));
    let broker = Broker::with_store(
        BrokerConfig::default(),
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        auth,
        storage,
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

fn storage(store: Arc<HeldStore>) -> Storage {
    Storage {
        messages: Some(store),
        ..Default::default()
    }
}

/// Declares a queue in the default vhost and binds it to amq.fanout.
async fn fanout_queue(connection: &Connection, name: &str, durable: bool, arguments: FieldTable) {
    let vhost = connection.session.broker.vhost("/").expect("vhost");
    let spec = QueueSpec {
        name: name.into(),
        durable,
        arguments,
        ..Default::default()
    };
    vhost
        .declare_queue(spec, false, false, ConnectionId(0))
        .await
        .expect("declare");
    vhost
        .bind_queue(name, "amq.fanout", "", FieldTable::new(), ConnectionId(0))
        .expect("bind");
}

/// A basic.publish on channel 1 with its content; persistent when `persistent`.
fn publish_frames(exchange: &str, routing_key: &str, persistent: bool) -> BytesMut {
    let mut input = method(
        1,
        AMQPClass::Basic(basic_methods::AMQPMethod::Publish(basic_methods::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let properties = AMQPProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    input.extend_from_slice(&encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 4,
            properties,
        },
    )));
    input.extend_from_slice(&encode(&AMQPFrame::Body(1, b"body".to_vec())));
    input
}

async fn open_channel(connection: &mut Connection) {
    let mut input = method(
        1,
        AMQPClass::Channel(channel_methods::AMQPMethod::Open(channel_methods::Open {})),
    );
    connection.on_bytes(&mut input).await;
    connection.take_output();
}

/// Hands the connection the durability notices its messages' completions sent.
fn pass_durable_notices(connection: &mut Connection) {
    while let Some((channel, seq, durability)) = connection.durable_notices().try_recv() {
        connection.on_durable(channel, seq, durability);
    }
}

#[tokio::test]
async fn a_nacked_message_whose_write_fails_is_not_nacked_again_and_confirms_go_on() {
    let store = Arc::new(HeldStore::settling_on_sync(Durability::Failed));
    let mut connection = open_connection_with(storage(store.clone())).await;
    fanout_queue(&connection, "kept", true, FieldTable::new()).await;
    let mut full = FieldTable::new();
    full.insert("x-max-length", FieldValue::I64(0));
    full.insert("x-overflow", FieldValue::string("reject-publish"));
    fanout_queue(&connection, "full", false, full).await;
    open_channel(&mut connection).await;
    let mut input = method(
        1,
        AMQPClass::Confirm(confirm_methods::AMQPMethod::Select(
            confirm_methods::Select { nowait: true },
        )),
    );
    // 1: stored for "kept", refused by "full": nacked at once.
    input.extend_from_slice(&publish_frames("amq.fanout", "", true));
    connection.on_bytes(&mut input).await;
    let frames = decode_all(&connection.take_output());
    assert!(matches!(
        &frames[..],
        [AMQPFrame::Method(1, AMQPClass::Basic(basic_methods::AMQPMethod::Nack(n)))]
            if n.delivery_tag == 1
    ));
    // Its write fails: it was nacked already.
    store.settle(Durability::Failed);
    pass_durable_notices(&mut connection);
    assert!(
        decode_all(&connection.take_output()).is_empty(),
        "no second nack"
    );
    // 2: a transient message to a queue of its own is acked.
    fanout_queue(&connection, "other", false, FieldTable::new()).await;
    let mut input = publish_frames("", "other", false);
    connection.on_bytes(&mut input).await;
    let frames = decode_all(&connection.take_output());
    assert!(
        matches!(
            &frames[..],
            [AMQPFrame::Method(1, AMQPClass::Basic(basic_methods::AMQPMethod::Ack(a)))]
                if a.delivery_tag == 2
        ),
        "{frames:?}"
    );
}

/// Output of a transaction that publishes one persistent message to a durable queue and
/// commits, against a store whose syncs settle with `durability`.
async fn commit_one_persistent_publish(durability: Durability) -> Vec<AMQPFrame> {
    let store = Arc::new(HeldStore::settling_on_sync(durability));
    let mut connection = open_connection_with(storage(store.clone())).await;
    fanout_queue(&connection, "kept", true, FieldTable::new()).await;
    open_channel(&mut connection).await;
    let mut input = method(
        1,
        AMQPClass::Tx(tx_methods::AMQPMethod::Select(tx_methods::Select {})),
    );
    input.extend_from_slice(&publish_frames("", "kept", true));
    input.extend_from_slice(&method(
        1,
        AMQPClass::Tx(tx_methods::AMQPMethod::Commit(tx_methods::Commit {})),
    ));
    connection.on_bytes(&mut input).await;
    decode_all(&connection.take_output())
}

#[tokio::test]
async fn a_commit_whose_persistent_messages_failed_to_write_is_not_committed() {
    let frames = commit_one_persistent_publish(Durability::Failed).await;
    assert!(
        !frames.iter().any(|frame| matches!(
            frame,
            AMQPFrame::Method(1, AMQPClass::Tx(tx_methods::AMQPMethod::CommitOk(_)))
        )),
        "{frames:?}"
    );
    assert!(
        matches!(
            frames.last(),
            Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Close(c))))
                if c.reply_code == code::INTERNAL_ERROR
        ),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_commit_whose_persistent_messages_are_on_disk_is_committed() {
    let frames = commit_one_persistent_publish(Durability::OnDisk).await;
    assert!(
        matches!(
            frames.last(),
            Some(AMQPFrame::Method(
                1,
                AMQPClass::Tx(tx_methods::AMQPMethod::CommitOk(_))
            ))
        ),
        "{frames:?}"
    );
}
