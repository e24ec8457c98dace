//! Acknowledgements after a failed write, against the real broker on a real 16 MiB tmpfs
//! mounted as the data directory (review finding 1d): a persistent message nacked at once
//! (a full `reject-publish` queue refused it) whose write then fails is not nacked a second
//! time, and the channel's confirms go on once the disk has room again.
//!
//! Mounting needs root: elsewhere the test prints why it is skipped and passes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use junction_tests::{binary, temp_dir};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::timeout;

/// Size of the tmpfs the test mounts.
const DISK: &str = "size=16m";
/// Bytes taken by a file the test deletes to give the broker room again.
const FILLER_BYTES: usize = 4 * 1024 * 1024;
/// Body size of each message.
const BODY_BYTES: usize = 64 * 1024;
/// Messages published while the disk fills: twice what fits.
const MESSAGES: usize = 400;
/// Bounds every single wait; only a hang reaches it.
const STEP: Duration = Duration::from_secs(20);

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a small tmpfs, or says why it cannot and returns None (the test is skipped).
    fn mount(label: &str) -> Option<Tmpfs> {
        let dir = temp_dir(&format!("tmpfs-acks-{label}"));
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => return Some(Tmpfs { dir }),
            Ok(output) => eprintln!(
                "SKIPPED robust_acks_review::{label}: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => {
                eprintln!("SKIPPED robust_acks_review::{label}: cannot run mount: {error}");
            }
        }
        let _ = std::fs::remove_dir(&dir);
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The broker under test, AMQP only.
struct Junction {
    child: Child,
    amqp: SocketAddr,
}

impl Junction {
    fn start(data_dir: &Path) -> Junction {
        let config_dir = temp_dir("acks-config");
        let config_path = config_dir.join("junction.toml");
        std::fs::write(&config_path, "[alarms]\ndisk_free_limit = 0\n").expect("write config");
        let mut child = Command::new(binary())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(&config_path)
            .args(["--amqp", "127.0.0.1:0", "--mqtt", "off", "--stomp", "off"])
            .args(["--http", "off", "--web-stomp", "off", "--web-mqtt", "off"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut amqp = None;
        loop {
            let line = rx.recv_timeout(STEP).expect("the broker prints 'ready'");
            if line == "ready" {
                break;
            }
            if let Some(addr) = line.strip_prefix("listening amqp ") {
                amqp = Some(addr.parse().expect("address"));
            }
        }
        let _ = std::fs::remove_dir_all(&config_dir);
        Junction {
            child,
            amqp: amqp.expect("an AMQP listener"),
        }
    }
}

impl Drop for Junction {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no answer within {STEP:?}"),
    }
}

async fn declare(channel: &Channel, queue: &str, durable: bool, arguments: FieldTable) {
    within(
        "queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await
    .expect("queue.declare");
    within(
        "queue.bind",
        channel.queue_bind(
            queue.into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

async fn publish(channel: &Channel, exchange: &str, routing_key: &str) -> Confirmation {
    let confirm = within(
        "basic.publish",
        channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &vec![b'm'; BODY_BYTES],
            BasicProperties::default().with_delivery_mode(2),
        ),
    )
    .await
    .expect("publish");
    within("the confirm of a persistent publish", confirm)
        .await
        .expect("a confirm")
}

#[test]
fn confirms_go_on_after_a_refused_message_fails_to_write() {
    let Some(disk) = Tmpfs::mount("refused") else {
        return;
    };
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![7u8; FILLER_BYTES]).expect("write the filler file");
    let broker = Junction::start(&disk.dir);
    let url = format!("amqp://guest:guest@{}/%2f", broker.amqp);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let connection = within(
            "connect",
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        .expect("connect");
        let ch = within("channel.open", connection.create_channel())
            .await
            .expect("channel");
        declare(&ch, "kept", true, FieldTable::default()).await;
        let mut full = FieldTable::default();
        full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
        full.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        declare(&ch, "full", false, full).await;
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .expect("confirm.select");
        // Each is stored for "kept" and refused by "full" (nacked at once); the disk fills
        // on the way, and the writes of some of them fail.
        for _ in 0..MESSAGES {
            assert!(
                matches!(publish(&ch, "amq.fanout", "").await, Confirmation::Nack(_)),
                "a full queue refused it"
            );
        }
        std::fs::remove_file(&filler).expect("free the disk");
        // Once the store writes again, a message for "kept" alone is confirmed: nothing
        // from the failed writes holds the channel's acks back.
        let deadline = Instant::now() + STEP;
        loop {
            match publish(&ch, "", "kept").await {
                Confirmation::Ack(_) => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "no ack once the disk had room: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}
