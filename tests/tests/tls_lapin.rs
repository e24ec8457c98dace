//! lapin over TLS (amqps://): the broker's AMQPS listener with a certificate made for this
//! test by `junction-test-certs` (rcgen), trusted by lapin through its custom CA chain.

mod common;

use common::*;
use junction_tests::{Broker, temp_dir};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::test]
async fn lapin_publishes_and_gets_over_amqps() {
    let certs = temp_dir("certs");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_junction-test-certs"))
        .arg(&certs)
        .status()
        .expect("run junction-test-certs");
    assert!(made.success());
    let config = certs.join("tls.toml");
    std::fs::write(
        &config,
        "[tls]\ncertfile = \"server.pem\"\nkeyfile = \"server.key\"\n",
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();
    let broker = Broker::start_with(&["--config", &config, "--amqps", "127.0.0.1:0"]);
    let port = broker.listener("amqps").port();
    let ca = std::fs::read_to_string(certs.join("ca.pem")).expect("ca");

    let connection = within(
        "connect over TLS",
        Connection::connect_with_config(
            &format!("amqps://guest:guest@localhost:{port}/%2f"),
            ConnectionProperties::default(),
            OwnedTLSConfig {
                identity: None,
                cert_chain: Some(ca),
            },
            lapin::runtime::default_runtime().expect("runtime"),
        ),
    )
    .await
    .expect("amqps connection");
    let channel = channel(&connection).await;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .basic_publish(
            "".into(),
            queue.name().as_str().into(),
            BasicPublishOptions::default(),
            b"over amqps",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let got = eventually_get(&channel, queue.name().as_str()).await;
    assert_eq!(got, b"over amqps");

    // Without the test CA the server's certificate is not trusted.
    let refused = within(
        "connect without the CA",
        Connection::connect(
            &format!("amqps://guest:guest@localhost:{port}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await;
    assert!(refused.is_err());
    let _ = connection.close(200, "bye".into()).await;
    let _ = std::fs::remove_dir_all(&certs);
}

async fn eventually_get(channel: &lapin::Channel, queue: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            return message.delivery.data.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no message in {queue}");
}
