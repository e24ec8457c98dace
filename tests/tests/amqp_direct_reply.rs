//! Direct reply-to: a requester consumes from `amq.rabbitmq.reply-to` without acks, and a reply
//! published to the rewritten `reply_to` address reaches it.

mod common;

use std::time::Duration;

use common::{ErrorWatch, code};
use futures_lite::StreamExt;
use junction_tests::Broker;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_reply_to_the_rewritten_address_reaches_the_requester() {
    let broker = Broker::start();
    let server = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("server connects");
    let client = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("client connects");
    let server_channel = server.create_channel().await.expect("channel");
    server_channel
        .queue_declare(
            "rpc-direct".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");

    let client_channel = client.create_channel().await.expect("channel");
    let mut replies = client_channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume from the pseudo-queue");
    client_channel
        .basic_publish(
            "".into(),
            "rpc-direct".into(),
            BasicPublishOptions::default(),
            b"2+2",
            BasicProperties::default()
                .with_reply_to(ShortString::from("amq.rabbitmq.reply-to"))
                .with_correlation_id(ShortString::from("c-1")),
        )
        .await
        .expect("publish request");

    let request = loop {
        let got = server_channel
            .basic_get("rpc-direct".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        if let Some(message) = got {
            break message;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let reply_to = request
        .delivery
        .properties
        .reply_to()
        .clone()
        .expect("reply_to is set");
    assert!(reply_to.as_str().starts_with("amq.rabbitmq.reply-to."));
    server_channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            b"4",
            BasicProperties::default().with_correlation_id(ShortString::from("c-1")),
        )
        .await
        .expect("publish reply");

    let reply = timeout(STEP, replies.next())
        .await
        .expect("reply in time")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(reply.data, b"4");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
}

#[tokio::test]
async fn publishing_with_the_pseudo_reply_to_needs_a_reply_consumer() {
    let broker = Broker::start();
    let connection = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    // basic.publish has no reply: the broker's channel.close comes whenever it comes, so the
    // test waits for it instead of racing another method against it.
    let mut errors = ErrorWatch::new(&connection);
    let _ = channel
        .basic_publish(
            "".into(),
            "anything".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to(ShortString::from("amq.rabbitmq.reply-to")),
        )
        .await;
    errors
        .expect(
            code::PRECONDITION_FAILED,
            "a publish with the pseudo reply-to and no reply consumer",
        )
        .await;
    assert!(connection.status().connected(), "406 is a channel error");
}
