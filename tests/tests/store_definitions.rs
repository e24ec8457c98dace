//! Durable definitions survive a restart (clean and SIGKILL): durable exchanges, queues and
//! bindings come back; transient and exclusive ones do not, as in RabbitMQ. A second broker on
//! the same data directory refuses to start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use junction_tests::Broker;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

async fn declare_topology(broker: &Broker) {
    let (connection, ch) = open(broker).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, options) in [
        ("orders", durable),
        ("orders.audit", durable),
        ("scratch", ExchangeDeclareOptions::default()),
    ] {
        within(
            "exchange.declare",
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.declare");
    }
    within(
        "exchange.bind",
        ch.exchange_bind(
            "orders.audit".into(),
            "orders".into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    for (name, durable, exclusive) in [
        ("orders-eu", true, false),
        ("audit-log", true, false),
        ("temporary", false, false),
        ("mine-only", true, true),
    ] {
        within(
            "queue.declare",
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable,
                    exclusive,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.declare");
    }
    for (queue, exchange, key) in [
        ("orders-eu", "orders", "eu.*"),
        ("audit-log", "orders.audit", "#"),
        ("temporary", "orders", "#"),
        ("orders-eu", "scratch", "#"),
    ] {
        within(
            "queue.bind",
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.bind");
    }
    within("close", connection.close(200, "bye".into()))
        .await
        .expect("close");
}

async fn check_topology(broker: &Broker) {
    let (connection, ch) = open(broker).await;
    assert!(exchange_exists(&connection, "orders").await);
    assert!(exchange_exists(&connection, "orders.audit").await);
    assert!(
        !exchange_exists(&connection, "scratch").await,
        "transient exchange is gone"
    );
    assert!(exists(&connection, "orders-eu").await);
    assert!(exists(&connection, "audit-log").await);
    assert!(
        !exists(&connection, "temporary").await,
        "transient queue is gone"
    );
    assert!(
        !exists(&connection, "mine-only").await,
        "exclusive queue is gone"
    );
    // The bindings came back: queue binding and exchange-to-exchange binding both route.
    publish(&ch, "orders", "eu.paris", b"order 1").await;
    publish(&ch, "orders", "us.nyc", b"order 2").await;
    until("routed after restart", || {
        let ch = ch.clone();
        async move { ready(&ch, "orders-eu").await == 1 && ready(&ch, "audit-log").await == 2 }
    })
    .await;
}

#[tokio::test]
async fn durable_definitions_survive_a_clean_restart() {
    let broker = Broker::start();
    declare_topology(&broker).await;
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop(), "clean stop");
    let broker = Broker::start_in(data_dir, &[]);
    check_topology(&broker).await;
}

#[tokio::test]
async fn durable_definitions_survive_sigkill() {
    let mut broker = Broker::start();
    declare_topology(&broker).await;
    broker.signal("KILL");
    assert!(broker.wait_exit(Duration::from_secs(10)).is_some());
    let data_dir = broker.data_dir.clone();
    drop(broker);
    let broker = Broker::start_in(data_dir, &[]);
    check_topology(&broker).await;
}

#[tokio::test]
async fn deleted_definitions_stay_deleted() {
    let broker = Broker::start();
    declare_topology(&broker).await;
    {
        let (connection, ch) = open(&broker).await;
        within(
            "queue.delete",
            ch.queue_delete("orders-eu".into(), Default::default()),
        )
        .await
        .expect("queue.delete");
        within(
            "exchange.delete",
            ch.exchange_delete("orders.audit".into(), Default::default()),
        )
        .await
        .expect("exchange.delete");
        within("close", connection.close(200, "bye".into()))
            .await
            .expect("close");
    }
    let data_dir = broker.data_dir.clone();
    assert!(broker.stop());
    let broker = Broker::start_in(data_dir, &[]);
    let (connection, ch) = open(&broker).await;
    assert!(!exists(&connection, "orders-eu").await);
    assert!(!exchange_exists(&connection, "orders.audit").await);
    assert!(exists(&connection, "audit-log").await);
    publish(&ch, "orders", "eu.paris", b"nowhere").await;
    assert_eq!(
        ready(&ch, "audit-log").await,
        0,
        "its binding went with the exchange"
    );
}

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let broker = Broker::start();
    let output = Command::new(junction_tests::binary())
        .arg("--data-dir")
        .arg(&broker.data_dir)
        .args(["--amqp", "127.0.0.1:0"])
        .output()
        .expect("run a second broker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use by another junction process"),
        "clear message expected, got: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ready"));
}
