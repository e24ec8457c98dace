//! The STOMP connection state machine driven in memory, without sockets.

use bytes::BytesMut;
use junction_core::{Authorizer, Broker, BrokerConfig, ExchangeTypeRegistry, InternalUsers};

use super::*;

fn connection() -> Connection {
    connection_with(Settings::default())
}

fn connection_with(settings: Settings) -> Connection {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    let auth = Authorizer::new(vec![Arc::new(users)], std::time::Duration::from_secs(5));
    let broker = Broker::new(
        BrokerConfig::default(),
        Arc::new(junction_core::ExchangeTypeRegistry::with_builtins()),
        auth,
    );
    broker.add_vhost("/");
    let _ = ExchangeTypeRegistry::empty;
    Connection::new(broker, Arc::new(settings), None)
}

async fn feed(connection: &mut Connection, input: &[u8]) -> (Next, Vec<Frame>) {
    let next = connection.on_bytes(&mut BytesMut::from(input)).await;
    let mut output = BytesMut::from(&connection.take_output()[..]);
    let decoder = Decoder::new(Default::default());
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut output) {
        frames.push(frame);
    }
    (next, frames)
}

const CONNECT: &[u8] =
    b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";

#[tokio::test]
async fn a_host_that_names_no_vhost_is_refused_unless_the_setting_says_otherwise() {
    const FROM_MY_LAPTOP: &[u8] =
        b"CONNECT\naccept-version:1.2\nhost:my-laptop\nlogin:guest\npasscode:guest\n\n\0";
    let (next, frames) = feed(&mut connection(), FROM_MY_LAPTOP).await;
    assert_eq!(next, Next::Close);
    assert_eq!(frames[0].command, "ERROR");
    assert_eq!(frames[0].get("message"), Some("Bad CONNECT"));
    assert_eq!(
        String::from_utf8_lossy(&frames[0].body),
        "Virtual host 'my-laptop' access denied"
    );
    let mut lenient = connection_with(Settings {
        unknown_host_uses_default_vhost: true,
        ..Settings::default()
    });
    let (next, frames) = feed(&mut lenient, FROM_MY_LAPTOP).await;
    assert_eq!(next, Next::Continue);
    assert_eq!(frames[0].command, "CONNECTED");
}

#[tokio::test]
async fn connect_negotiates_the_highest_version() {
    let mut client = connection();
    let (next, frames) = feed(&mut client, CONNECT).await;
    assert_eq!(next, Next::Continue);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].command, "CONNECTED");
    assert_eq!(frames[0].get("version"), Some("1.2"));
    // The client asked for no heart-beats: none are negotiated, and CONNECTED says so.
    assert_eq!(frames[0].get("heart-beat"), Some("0,0"));
}

#[tokio::test]
async fn refusals_are_error_frames_in_rabbitmq_words() {
    for (input, message, body) in [
        (
            &b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\n\n\0"[..],
            "Bad CONNECT",
            "Access refused for user 'guest'\n",
        ),
        (
            &b"CONNECT\naccept-version:9.9\n\n\0"[..],
            "Version mismatch",
            "Supported versions are 1.0,1.1,1.2\n",
        ),
        (
            &b"SEND\ndestination:/queue/a\n\n\0"[..],
            "Illegal command",
            "You must log in using CONNECT first",
        ),
    ] {
        let (next, frames) = feed(&mut connection(), input).await;
        assert_eq!(next, Next::Close);
        assert_eq!(frames[0].command, "ERROR");
        assert_eq!(frames[0].get("message"), Some(message));
        assert_eq!(String::from_utf8_lossy(&frames[0].body), body);
    }
    for (input, message, body) in [
        (
            &b"SEND\nreceipt:r1\n\nx\0"[..],
            "Missing destination",
            "\"SEND\" must include a 'destination' header\n",
        ),
        (
            &b"SEND\ndestination:/queue/a/b\n\n\0"[..],
            "Invalid destination",
            "'/a/b' is not a valid queue destination\n",
        ),
        (
            &b"SUBSCRIBE\ndestination:/nowhere/a\n\n\0"[..],
            "Unknown destination",
            "'/nowhere/a' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n",
        ),
        (
            &b"BOGUS\n\n\0"[..],
            "Bad command",
            "Could not interpret command \"BOGUS\"\n",
        ),
        (
            &b"SEND\ndestination:/queue/a\nmessage-id:m\n\n\0"[..],
            "Invalid header",
            "'message-id' is not allowed on 'SEND'.\n",
        ),
        (
            &b"BEGIN\n\n\0"[..],
            "Missing transaction",
            "\"BEGIN\" must include a 'transaction' header\n",
        ),
        (
            &b"COMMIT\ntransaction:t9\n\n\0"[..],
            "Bad transaction",
            "Invalid transaction identifier: \"t9\"\n",
        ),
        (
            &b"ACK\n\n\0"[..],
            "Missing header",
            "\"ACK\" must include the \"id\" header\n",
        ),
        (
            &b"UNSUBSCRIBE\n\n\0"[..],
            "Missing destination or id",
            "UNSUBSCRIBE must include a 'destination' or 'id' header",
        ),
        (
            &b"UNSUBSCRIBE\nid:7\n\n\0"[..],
            "No subscription found",
            "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"id='7'\" not found.\n",
        ),
        (
            &b"SUBSCRIBE\ndestination:/topic/t\ndurable:true\n\n\0"[..],
            "Missing Header",
            "Header 'id' is required for durable subscriptions",
        ),
    ] {
        let mut client = connection();
        feed(&mut client, CONNECT).await;
        let (next, frames) = feed(&mut client, input).await;
        assert_eq!(next, Next::Close, "{message}");
        assert_eq!(frames[0].get("message"), Some(message));
        assert_eq!(String::from_utf8_lossy(&frames[0].body), body);
        assert_eq!(frames[0].get("version"), Some("1.0,1.1,1.2"));
    }
}

#[tokio::test]
async fn a_second_subscription_with_the_same_id_is_named_by_rabbitmqs_consumer_tag() {
    let mut client = connection();
    feed(&mut client, CONNECT).await;
    let subscribe = b"SUBSCRIBE\ndestination:/queue/dup\nid:1\n\n\0";
    let (next, _) = feed(&mut client, subscribe).await;
    assert_eq!(next, Next::Continue);
    let (next, frames) = feed(&mut client, subscribe).await;
    assert_eq!(next, Next::Close);
    assert_eq!(
        frames[0].get("message"),
        Some("Duplicated subscription identifier")
    );
    assert_eq!(
        String::from_utf8_lossy(&frames[0].body),
        "A subscription identified by 'T_1' already exists."
    );
}

#[tokio::test]
async fn a_receipt_follows_a_send_and_a_disconnect() {
    let mut client = connection();
    feed(&mut client, CONNECT).await;
    let (_, frames) = feed(
        &mut client,
        b"SEND\ndestination:/queue/stomp-unit\nreceipt:r1\n\nhello\0DISCONNECT\nreceipt:r2\n\n\0",
    )
    .await;
    let receipts: Vec<_> = frames.iter().filter_map(|f| f.get("receipt-id")).collect();
    assert_eq!(receipts, vec!["r1", "r2"]);
}

#[tokio::test]
async fn a_first_send_during_an_alarm_waits_unread_until_it_clears() {
    let mut client = connection();
    feed(&mut client, CONNECT).await;
    client.set_alarm(Some("low on memory".into()));
    let send = b"\nSEND\ndestination:/queue/stomp-held\nreceipt:r1\n\nhello\0";
    let mut input = BytesMut::from(&send[..]);
    assert_eq!(client.on_bytes(&mut input).await, Next::Continue);
    assert_eq!(&input[..], &send[..], "the SEND is left in the buffer");
    assert!(client.is_blocked(), "the connection is a publisher now");
    assert!(!client.has_output(), "no receipt while held");
    client.set_alarm(None);
    assert_eq!(client.on_bytes(&mut input).await, Next::Continue);
    assert!(input.is_empty(), "handled once the alarm clears");
    assert!(client.has_output(), "its receipt follows");
}

#[test]
fn only_a_send_command_line_counts_as_a_send() {
    assert!(next_command_is_send(b"SEND\n"));
    assert!(next_command_is_send(b"\r\n\nSEND\r\ndestination:/queue/a"));
    assert!(next_command_is_send(b"SEND"));
    assert!(!next_command_is_send(b"SENDX\n"));
    assert!(!next_command_is_send(b"SUBSCRIBE\n"));
    assert!(!next_command_is_send(b"\n\n"));
    assert!(!next_command_is_send(b"SE"));
}

#[tokio::test]
async fn a_stranger_frame_is_small_and_the_configured_limits_apply_after_connect() {
    // Before login: a CONNECT announcing a 16 MiB body is refused from its header alone.
    let (next, frames) = feed(
        &mut connection(),
        b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\ncontent-length:16777216\n\n",
    )
    .await;
    assert_eq!(next, Next::Close);
    assert_eq!(frames[0].command, "ERROR");
    assert_eq!(frames[0].get("message"), Some("Frame too large"));

    // After login the configured body limit (16 MiB by default) applies: 8 KiB is fine.
    let mut client = connection();
    feed(&mut client, CONNECT).await;
    let mut send = b"SEND\ndestination:/queue/stomp-unit-big\nreceipt:r1\n\n".to_vec();
    send.extend_from_slice(&[b'x'; 8 * 1024]);
    send.push(0);
    let (next, frames) = feed(&mut client, &send).await;
    assert_eq!(next, Next::Continue);
    assert_eq!(frames[0].get("receipt-id"), Some("r1"));
}
