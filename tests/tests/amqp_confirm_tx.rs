//! The confirm and tx classes with lapin: publisher confirms (acks for routed and unroutable
//! messages, no mixing with tx), and transactions (commit, rollback of publishes and of
//! acknowledgements, and tx methods on a channel that never selected tx).

mod common;

use common::*;
use junction_tests::Broker;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::{BasicProperties, Channel, Confirmation};

async fn confirm_select(ch: &Channel) -> lapin::Result<()> {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
}

async fn tx_select(ch: &Channel) -> lapin::Result<()> {
    within("tx.select", ch.tx_select()).await
}

async fn commit(ch: &Channel) -> lapin::Result<()> {
    within("tx.commit", ch.tx_commit()).await
}

async fn rollback(ch: &Channel) -> lapin::Result<()> {
    within("tx.rollback", ch.tx_rollback()).await
}

async fn confirmed_publish(ch: &Channel, routing_key: &str, body: &[u8]) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    within("publisher confirm", confirm)
        .await
        .expect("confirmation")
}

#[tokio::test]
async fn confirmed_publishes_are_acked() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "confirmed").await;
    confirm_select(&ch).await.expect("confirm.select");
    assert!(ch.status().confirm());
    for i in 0..10 {
        let confirmation = confirmed_publish(&ch, "confirmed", format!("{i}").as_bytes()).await;
        assert_eq!(confirmation, Confirmation::Ack(None), "message {i}");
    }
    // Once confirmed, the messages are in the queue (seen from another connection).
    let other = connect(&broker).await;
    let probe = channel(&other).await;
    assert_eq!(ready(&probe, "confirmed").await, 10);
    drop(connection);
}

#[tokio::test]
async fn wait_for_confirms_covers_a_batch() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "batch").await;
    confirm_select(&ch).await.expect("confirm.select");
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(
            within(
                "basic.publish",
                ch.basic_publish(
                    "".into(),
                    "batch".into(),
                    BasicPublishOptions::default(),
                    format!("{i}").as_bytes(),
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("publish"),
        );
    }
    let returned = within("wait_for_confirms", ch.wait_for_confirms())
        .await
        .expect("wait_for_confirms");
    assert!(returned.is_empty(), "nothing returned");
    for confirm in pending {
        let confirmation = within("confirm", confirm).await.expect("confirmation");
        assert!(confirmation.is_ack(), "{confirmation:?}");
    }
    assert_eq!(ready(&ch, "batch").await, 50);
}

#[tokio::test]
async fn unroutable_messages_are_still_acked() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    confirm_select(&ch).await.expect("confirm.select");
    let confirmation = confirmed_publish(&ch, "no-such-queue", b"into the void").await;
    assert_eq!(confirmation, Confirmation::Ack(None));
}

#[tokio::test]
async fn confirm_select_twice_is_fine() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    confirm_select(&ch).await.expect("first");
    confirm_select(&ch).await.expect("second");
    declare(&ch, "twice").await;
    assert!(confirmed_publish(&ch, "twice", b"x").await.is_ack());
}

#[tokio::test]
async fn confirm_select_on_a_transactional_channel_fails() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    tx_select(&ch).await.expect("tx.select");
    assert_code(
        confirm_select(&ch).await,
        code::PRECONDITION_FAILED,
        "confirm.select after tx.select",
    );
    assert!(connection.status().connected(), "406 is a channel error");
}

#[tokio::test]
async fn tx_select_on_a_confirm_channel_fails() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    confirm_select(&ch).await.expect("confirm.select");
    assert_code(
        tx_select(&ch).await,
        code::PRECONDITION_FAILED,
        "tx.select after confirm.select",
    );
    assert!(connection.status().connected());
}

#[tokio::test]
async fn committed_publishes_are_delivered_only_on_commit() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "tx-publish").await;
    let observer = channel(&connection).await;
    tx_select(&ch).await.expect("tx.select");
    publish(&ch, "", "tx-publish", b"one").await;
    publish(&ch, "", "tx-publish", b"two").await;
    assert_eq!(ready(&ch, "tx-publish").await, 0, "held until commit");
    commit(&ch).await.expect("tx.commit");
    assert_eq!(ready(&observer, "tx-publish").await, 2);
    assert_eq!(
        text(&get(&observer, "tx-publish", true).await.delivery.data),
        "one"
    );

    // The channel stays transactional: the next publish waits for the next commit.
    publish(&ch, "", "tx-publish", b"three").await;
    assert_eq!(ready(&ch, "tx-publish").await, 1);
    commit(&ch).await.expect("second commit");
    assert_eq!(ready(&observer, "tx-publish").await, 2);
}

#[tokio::test]
async fn rolled_back_publishes_are_never_delivered() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "tx-rollback").await;
    let mut consumer = consume(&channel(&connection).await, "tx-rollback").await;
    tx_select(&ch).await.expect("tx.select");
    publish(&ch, "", "tx-rollback", b"discarded").await;
    rollback(&ch).await.expect("tx.rollback");
    commit(&ch).await.expect("an empty commit");
    assert_eq!(ready(&ch, "tx-rollback").await, 0);
    nothing_more(&mut consumer, "rolled back").await;
    publish(&ch, "", "tx-rollback", b"kept").await;
    commit(&ch).await.expect("tx.commit");
    assert_eq!(text(&next(&mut consumer).await.data), "kept");
}

#[tokio::test]
async fn acks_in_a_rolled_back_transaction_leave_the_message_unacknowledged() {
    let broker = Broker::start();
    let (connection, ch) = open(&broker).await;
    declare(&ch, "tx-ack").await;
    publish(&ch, "", "tx-ack", b"m").await;
    tx_select(&ch).await.expect("tx.select");
    let got = get(&ch, "tx-ack", false).await;
    within(
        "basic.ack",
        ch.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    rollback(&ch).await.expect("tx.rollback");
    // Still unacknowledged: closing the channel puts it back.
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(
        ready(&ch, "tx-ack").await,
        1,
        "the rolled-back ack did not count"
    );
    let again = get(&ch, "tx-ack", false).await;
    assert!(again.delivery.redelivered);

    // The same ack, committed, settles it.
    tx_select(&ch).await.expect("tx.select");
    within(
        "basic.ack",
        ch.basic_ack(again.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    commit(&ch).await.expect("tx.commit");
    within("channel.close", ch.close(200, "OK".into()))
        .await
        .expect("close");
    let ch = channel(&connection).await;
    assert_eq!(ready(&ch, "tx-ack").await, 0, "acked for good");
}

#[tokio::test]
async fn a_rejection_with_requeue_takes_effect_on_commit() {
    let broker = Broker::start();
    let (_connection, ch) = open(&broker).await;
    declare(&ch, "tx-reject").await;
    publish(&ch, "", "tx-reject", b"m").await;
    tx_select(&ch).await.expect("tx.select");
    let got = get(&ch, "tx-reject", false).await;
    within(
        "basic.reject",
        ch.basic_reject(
            got.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        ),
    )
    .await
    .expect("reject");
    assert_eq!(
        ready(&ch, "tx-reject").await,
        0,
        "not requeued before commit"
    );
    commit(&ch).await.expect("tx.commit");
    assert_eq!(ready(&ch, "tx-reject").await, 1, "requeued by the commit");
}

#[tokio::test]
async fn commit_and_rollback_without_tx_select_fail() {
    let broker = Broker::start();
    let connection = connect(&broker).await;
    let ch = channel(&connection).await;
    assert_code(commit(&ch).await, code::PRECONDITION_FAILED, "tx.commit");
    let ch = channel(&connection).await;
    assert_code(
        rollback(&ch).await,
        code::PRECONDITION_FAILED,
        "tx.rollback",
    );
    assert!(connection.status().connected(), "406 is a channel error");
}
