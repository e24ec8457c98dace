//! Resource alarms: above the memory watermark or below the disk free limit, publishing clients
//! that asked are told with connection.blocked.

use std::time::Duration;

use junction_tests::{Broker, temp_dir};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

fn broker_always_over_the_watermark() -> Broker {
    let dir = temp_dir("alarm-config");
    let config = dir.join("junction.toml");
    std::fs::write(
        &config,
        "[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n",
    )
    .expect("write config");
    let path = config.to_string_lossy().into_owned();
    Broker::start_with(&["--config", &path])
}

#[tokio::test]
async fn clients_are_told_they_are_blocked_above_the_memory_watermark() {
    let broker = broker_always_over_the_watermark();
    let publisher = timeout(
        STEP,
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("in time")
    .expect("connect");
    let channel = publisher.create_channel().await.expect("channel");
    // As in RabbitMQ, a connection is told it is blocked the first time it publishes.
    let _ = channel
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"first",
            BasicProperties::default(),
        )
        .await;
    // Poll without blocking the runtime thread: lapin's I/O runs on it.
    let deadline = tokio::time::Instant::now() + STEP;
    while !publisher.status().blocked() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        publisher.status().blocked(),
        "connection.blocked was not received"
    );

    // lapin itself holds frames back while it is blocked, so what happens to a publisher that
    // keeps sending is covered with pika (tests/interop/python/test_alarms.py).
}

#[tokio::test]
async fn clients_are_told_they_are_blocked_when_disk_space_is_low() {
    let dir = temp_dir("disk-alarm-config");
    let config = dir.join("junction.toml");
    // More free space than any disk has: the disk alarm is raised at once.
    std::fs::write(
        &config,
        "[alarms]\ndisk_free_limit = 9000000000000000000\ncheck_interval_ms = 20\n",
    )
    .expect("write config");
    let path = config.to_string_lossy().into_owned();
    let broker = Broker::start_with(&["--config", &path]);
    let publisher = timeout(
        STEP,
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("in time")
    .expect("connect");
    let channel = publisher.create_channel().await.expect("channel");
    let _ = channel
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"first",
            BasicProperties::default(),
        )
        .await;
    let deadline = tokio::time::Instant::now() + STEP;
    while !publisher.status().blocked() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        publisher.status().blocked(),
        "connection.blocked was not received"
    );
}
