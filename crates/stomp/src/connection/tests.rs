//! The STOMP connection state machine driven in memory, without sockets.

use bytes::BytesMut;
use junction_core::{AuthChain, Broker, BrokerConfig, ExchangeTypeRegistry, InternalUsers};

use super::*;

fn connection() -> Connection {
    connection_with(Settings::default())
}

fn connection_with(settings: Settings) -> Connection {
    let users = InternalUsers::new();
    users.add_user("guest", "guest", &[], &["/"]);
    let mut auth = AuthChain::new();
    auth.push(Arc::new(users));
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
    assert_eq!(frames[0].get("heart-beat"), Some("10000,10000"));
}

#[tokio::test]
async fn refusals_are_error_frames_with_a_message_header() {
    for (input, message) in [
        (
            &b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:wrong\n\n\0"[..],
            "Bad CONNECT",
        ),
        (
            &b"CONNECT\naccept-version:9.9\n\n\0"[..],
            "Supported protocol versions are 1.0,1.1,1.2",
        ),
        (&b"SEND\ndestination:/queue/a\n\n\0"[..], "Not connected"),
    ] {
        let (next, frames) = feed(&mut connection(), input).await;
        assert_eq!(next, Next::Close);
        assert_eq!(frames[0].command, "ERROR");
        assert_eq!(frames[0].get("message"), Some(message));
        assert!(!frames[0].body.is_empty(), "a readable body explains it");
    }
    let mut client = connection();
    feed(&mut client, CONNECT).await;
    for (input, message) in [
        (&b"SEND\nreceipt:r1\n\nx\0"[..], "Missing header"),
        (
            &b"SEND\ndestination:/nowhere/a\n\n\0"[..],
            "Invalid destination",
        ),
        (&b"BOGUS\n\n\0"[..], "Unknown command"),
    ] {
        let mut client = connection();
        feed(&mut client, CONNECT).await;
        let (next, frames) = feed(&mut client, input).await;
        assert_eq!(next, Next::Close, "{message}");
        assert_eq!(frames[0].get("message"), Some(message));
    }
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
