//! The one publish pipeline and the one durability ledger (issue 14, item 6), seen from real
//! clients: AMQP publishes, transactions included, go through the core's pipeline (routing,
//! reject-publish refusals, mandatory returns, the message log), and the answers that wait
//! for the disk (AMQP confirms, STOMP receipts) come from the ledger in publish order.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use junction_tests::{Broker, Listeners, temp_dir};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// A publish refused by a full reject-publish queue is nacked; the confirms around it are
/// acks, and publishing goes on once the queue has room.
#[tokio::test]
async fn a_publish_a_full_queue_refuses_is_nacked_between_acks() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(1));
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
    within(
        "queue.declare",
        ch.queue_declare("bounded".into(), QueueDeclareOptions::default(), arguments),
    )
    .await
    .expect("queue.declare");
    confirm_select(&ch).await;
    let properties = BasicProperties::default;
    assert_eq!(
        publish_confirmed(&ch, "", "bounded", b"first", properties()).await,
        Confirmation::Ack(None)
    );
    assert!(matches!(
        publish_confirmed(&ch, "", "bounded", b"refused", properties()).await,
        Confirmation::Nack(_)
    ));
    assert_eq!(
        text(&get(&ch, "bounded", true).await.delivery.data),
        "first"
    );
    assert_eq!(
        publish_confirmed(&ch, "", "bounded", b"room again", properties()).await,
        Confirmation::Ack(None)
    );
    assert_eq!(ready(&ch, "bounded").await, 1);
}

/// tx.commit publishes its staged messages through the pipeline: an unroutable mandatory one
/// comes back (basic.return before commit-ok), the persistent ones are in the message log
/// when commit-ok arrives and so survive a restart.
#[tokio::test]
async fn a_commit_returns_its_unroutable_mandatory_messages_and_stores_its_persistent_ones() {
    let data_dir = temp_dir("pipeline-tx");
    let broker = Broker::start_in(data_dir.clone(), &[]);
    let (connection, ch) = open(&broker).await;
    declare_durable(&ch, "kept", FieldTable::default())
        .await
        .expect("declare");
    within("tx.select", ch.tx_select())
        .await
        .expect("tx.select");
    for (key, body, mandatory) in [
        ("kept", "one", true),
        ("nobody-bound", "returned", true),
        ("kept", "two", false),
    ] {
        // Not in confirm mode: the publisher confirm resolves at once and says nothing.
        let _unconfirmed = within(
            "basic.publish",
            ch.basic_publish(
                "amq.direct".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body.as_bytes(),
                persistent(),
            ),
        )
        .await
        .expect("basic.publish");
    }
    within(
        "queue.bind",
        ch.queue_bind(
            "kept".into(),
            "amq.direct".into(),
            "kept".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    assert_eq!(ready(&ch, "kept").await, 0, "held until commit");
    within("tx.commit", ch.tx_commit()).await.expect("commit");
    let returned = within("returns", ch.wait_for_confirms())
        .await
        .expect("returned messages");
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0].reply_code, code::NO_ROUTE);
    assert_eq!(returned[0].delivery.data, b"returned");
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
    assert!(broker.stop());

    let broker = Broker::start_in(data_dir, &[]);
    let (_connection, ch) = open(&broker).await;
    assert_eq!(ready(&ch, "kept").await, 2, "both survived the restart");
    for expected in ["one", "two"] {
        assert_eq!(text(&get(&ch, "kept", true).await.delivery.data), expected);
    }
}

/// A raw STOMP 1.2 client that writes frames and reads the ones that answer.
struct Stomp {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Stomp {
    fn connect(addr: SocketAddr) -> Stomp {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(STEP)).expect("timeout");
        let mut client = Stomp {
            stream,
            buffer: Vec::new(),
        };
        client.write("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n");
        let connected = client.frame();
        assert!(connected.starts_with("CONNECTED"), "{connected}");
        client
    }

    /// Writes one frame (headers and body given whole, without the NUL).
    fn write(&mut self, frame: &str) {
        let mut bytes = frame.as_bytes().to_vec();
        bytes.push(0);
        self.stream.write_all(&bytes).expect("write");
    }

    /// The next frame as text; fails the test if none comes within [`STEP`].
    fn frame(&mut self) -> String {
        loop {
            while self.buffer.first() == Some(&b'\n') {
                self.buffer.remove(0);
            }
            if let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buffer.drain(..=end).collect();
                return String::from_utf8_lossy(&frame).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).expect("a STOMP frame in time");
            assert!(read > 0, "the broker closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Receipts wait in the ledger behind the persistent SENDs before them: a COMMIT's receipt
/// comes after the transaction's SENDs are on disk, and a later receipt after an earlier one,
/// so what they acknowledge survives a restart.
#[test]
fn stomp_receipts_come_in_order_once_the_sends_before_them_are_stored() {
    let data_dir = temp_dir("pipeline-stomp");
    let broker = Broker::start_listening(data_dir.clone(), Listeners::Tcp);
    let mut client = Stomp::connect(broker.stomp_addr());
    client.write("BEGIN\ntransaction:t\n\n");
    for n in 0..3 {
        client.write(&format!(
            "SEND\ndestination:/queue/stored\npersistent:true\ntransaction:t\n\nin tx {n}"
        ));
    }
    client.write("SEND\ndestination:/queue/stored\npersistent:true\n\nno receipt");
    client.write("COMMIT\ntransaction:t\nreceipt:commit\n\n");
    client.write("SEND\ndestination:/queue/stored\npersistent:true\nreceipt:last\n\nlast");
    for expected in ["receipt-id:commit\n", "receipt-id:last\n"] {
        let frame = client.frame();
        assert!(
            frame.starts_with("RECEIPT") && frame.contains(expected),
            "expected {expected:?}, got {frame}"
        );
    }
    client.write("DISCONNECT\nreceipt:bye\n\n");
    assert!(client.frame().contains("receipt-id:bye\n"));
    assert!(broker.stop());

    let broker = Broker::start_listening(data_dir, Listeners::Tcp);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (_connection, ch) = open(&broker).await;
        assert_eq!(
            ready(&ch, "stored").await,
            5,
            "every SEND survived the restart"
        );
        let mut bodies = Vec::new();
        for _ in 0..5 {
            bodies.push(text(&get(&ch, "stored", true).await.delivery.data));
        }
        assert_eq!(
            bodies,
            ["no receipt", "in tx 0", "in tx 1", "in tx 2", "last"]
        );
    });
}
