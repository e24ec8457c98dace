//! A full disk (issue 13, defects 5 and 6), on a real 16 MiB tmpfs mounted as the data
//! directory: no protocol acknowledges a message the broker did not write (AMQP nacks it, MQTT
//! closes without PUBACK, STOMP sends ERROR), everything acknowledged is there after a
//! restart, publishing and declaring work again as soon as space is freed (no restart), and
//! the disk alarm blocks publishers before the disk is full, raised by the writes themselves
//! rather than by the timer, and a message nacked at once whose write then fails does not
//! stall the channel's later confirms.
//!
//! Mounting needs root: elsewhere each test prints why it is skipped and passes.

mod common;
// The MQTT packets; the AMQP client goes unused.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    confirm_select, declare_durable, exists, open, publish_confirmed, reply_code, within,
};
use junction_tests::{Broker, Listeners, temp_dir};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use support::raw_mqtt;
use tokio::time::timeout;

/// Size of the tmpfs each test mounts.
const DISK: &str = "size=16m";
/// Bytes taken by a file the test deletes to give the broker room again.
const FILLER_BYTES: usize = 4 * 1024 * 1024;
/// Body size of each message: the disk fills after a couple of hundred.
const BODY_BYTES: usize = 64 * 1024;
/// More messages than fit on the disk.
const MAX_MESSAGES: u64 = 1000;
/// Durable declarations tried on the full disk (each with 2 KiB of arguments).
const DECLARES_WHILE_FULL: usize = 3000;
/// AMQP's internal-error reply code, for a definitions write that failed.
const INTERNAL_ERROR: u16 = 541;
/// Bounds each raw MQTT or STOMP read, a stop, and each wait for publishing to work again;
/// only a hang reaches it. (AMQP steps are bounded by `common::STEP`.)
const STEP: Duration = Duration::from_secs(20);
/// The configuration of a broker whose disk alarm never fires, so that the disk really fills.
const NO_DISK_ALARM: &str = "[alarms]\ndisk_free_limit = 0\n";

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a small tmpfs, or says why it cannot and returns None (the test is skipped).
    fn mount(label: &str) -> Option<Tmpfs> {
        let dir = temp_dir(&format!("tmpfs-{label}"));
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => return Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "SKIPPED robust_disk::{label}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Err(error) => {
                eprintln!("SKIPPED robust_disk::{label}: cannot run mount: {error}");
            }
        }
        let _ = std::fs::remove_dir(&dir);
        None
    }

    /// Takes `bytes` of the disk with a file the test can delete later.
    fn fill(&self, bytes: usize) -> PathBuf {
        let path = self.dir.join("filler");
        std::fs::write(&path, vec![7u8; bytes]).expect("write the filler file");
        path
    }

    fn free_bytes(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(&self.dir).expect("statvfs");
        stats.blocks_available() * stats.fragment_size()
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

/// Starts the broker on the tmpfs with `config` and its AMQP, MQTT and STOMP listeners.
fn start(disk: &Tmpfs, config: &str) -> Broker {
    Broker::start_configured(disk.dir.clone(), config, Listeners::Tcp)
}

/// Stops the broker with SIGTERM and waits for it to exit, however it exits: a broker on a
/// full disk may well report a failure.
fn stop(mut broker: Broker) {
    broker.signal("TERM");
    broker.wait_exit(STEP).expect("the broker did not stop");
}

/// A body that carries its number.
fn body(n: u64) -> Vec<u8> {
    let mut body = format!("message {n:08} ").into_bytes();
    body.resize(BODY_BYTES, b'a' + (n % 26) as u8);
    body
}

fn number_of(body: &[u8]) -> u64 {
    std::str::from_utf8(&body[8..16])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a numbered body")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The MQTT packet id of message `n` (never 0).
fn packet_id(n: u64) -> u16 {
    (n % 60000 + 1) as u16
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Declares the durable `queue` and binds it to `amq.topic` with `key`, so that MQTT
/// publications on the matching topic land in it.
fn bind_to_amq_topic(broker: &Broker, queue: &str, key: &str) {
    runtime().block_on(async {
        let (_connection, ch) = open(broker).await;
        declare_durable(&ch, queue, FieldTable::default())
            .await
            .expect("declare");
        within(
            "queue.bind",
            ch.queue_bind(
                queue.into(),
                "amq.topic".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bind");
    });
}

/// Publishes message `n` persistently to `queue` and waits for its confirm.
async fn publish_numbered(ch: &Channel, queue: &str, n: u64) -> Confirmation {
    publish_confirmed(ch, "", queue, &body(n), persistent()).await
}

/// Publishes messages 0, 1, ... to `queue` until `nacks` of them were nacked (or all of
/// `MAX_MESSAGES` were sent); returns the numbers confirmed and the numbers nacked.
async fn publish_until_nacked(
    ch: &Channel,
    queue: &str,
    nacks: usize,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut acked = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    for n in 0..MAX_MESSAGES {
        match publish_numbered(ch, queue, n).await {
            Confirmation::Ack(_) => {
                acked.insert(n);
            }
            Confirmation::Nack(_) => {
                nacked.insert(n);
                if nacked.len() >= nacks {
                    break;
                }
            }
            other => panic!("unexpected confirmation {other:?}"),
        }
    }
    (acked, nacked)
}

/// Once the disk has room again: publishes messages numbered past `MAX_MESSAGES` to `queue`
/// until three more are confirmed, adding each number to `acked` or `nacked`; fails with
/// "no confirm {after}" when that takes longer than [`STEP`].
async fn publish_until_confirmed_again(
    ch: &Channel,
    queue: &str,
    acked: &mut BTreeSet<u64>,
    nacked: &mut BTreeSet<u64>,
    after: &str,
) {
    let deadline = Instant::now() + STEP;
    let mut n = MAX_MESSAGES;
    let mut confirmed_again = 0;
    while confirmed_again < 3 {
        assert!(Instant::now() < deadline, "no confirm {after}");
        n += 1;
        match publish_numbered(ch, queue, n).await {
            Confirmation::Ack(_) => {
                acked.insert(n);
                confirmed_again += 1;
            }
            Confirmation::Nack(_) => {
                nacked.insert(n);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected confirmation {other:?}"),
        }
    }
}

/// Publishes messages 0, 1, ... over a raw MQTT or STOMP client from `connect` until the broker
/// has refused `refusals` of them (or all of `MAX_MESSAGES` were sent), connecting again after
/// each refusal; `publish` says whether the broker acknowledged one. Returns the numbers
/// acknowledged and the numbers refused.
fn publish_until_refused<C>(
    mut connect: impl FnMut() -> Option<C>,
    mut publish: impl FnMut(&mut C, u64) -> bool,
    refusals: usize,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut client = connect().expect("connect");
    for n in 0..MAX_MESSAGES {
        if publish(&mut client, n) {
            acked.insert(n);
            continue;
        }
        refused.insert(n);
        if refused.len() >= refusals {
            break;
        }
        client = connect().expect("reconnect");
    }
    (acked, refused)
}

/// Once the disk has room again: publishes messages numbered past `MAX_MESSAGES` over raw
/// clients from `connect` until three more are acknowledged, adding each number to `acked` or
/// `refused`; fails with "no {answer} after space was freed" when that takes longer than
/// [`STEP`].
fn publish_until_acknowledged_again<C>(
    mut connect: impl FnMut() -> Option<C>,
    mut publish: impl FnMut(&mut C, u64) -> bool,
    acked: &mut BTreeSet<u64>,
    refused: &mut BTreeSet<u64>,
    answer: &str,
) {
    let deadline = Instant::now() + STEP;
    let mut n = MAX_MESSAGES;
    let mut acked_again = 0;
    while acked_again < 3 {
        assert!(
            Instant::now() < deadline,
            "no {answer} after space was freed"
        );
        n += 1;
        let Some(mut client) = connect() else {
            continue;
        };
        while acked_again < 3 && publish(&mut client, n) {
            acked.insert(n);
            acked_again += 1;
            n += 1;
        }
        if acked_again < 3 {
            refused.insert(n);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The numbers of every message in `queue`, taken with no-ack.
async fn numbers_in(broker: &Broker, queue: &str) -> BTreeSet<u64> {
    let (_connection, channel) = open(broker).await;
    let mut numbers = BTreeSet::new();
    while let Some(message) = within(
        "basic.get",
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        numbers.insert(number_of(&message.delivery.data));
    }
    numbers
}

/// Restarts the broker on the same disk and checks that every acknowledged message is in
/// `queue`, and no message whose publish was refused or failed.
fn check_after_restart(
    disk: &Tmpfs,
    queue: &str,
    acked: &BTreeSet<u64>,
    refused: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let broker = start(disk, NO_DISK_ALARM);
    let stored = runtime().block_on(numbers_in(&broker, queue));
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but gone after the restart: {lost:?}"
    );
    let unacknowledged: Vec<_> = refused.intersection(&stored).collect();
    assert!(
        unacknowledged.is_empty(),
        "refused by the broker yet stored: {unacknowledged:?}"
    );
    stop(broker);
    stored
}

/// A full disk on AMQP: confirms come for what is written and nacks for what is not, a
/// definitions change either commits or fails with 541 and the state after a restart matches
/// what the client was told, and once space is freed publishing and declaring work again
/// without a restart.
#[test]
fn amqp_publishers_get_nacks_on_a_full_disk_and_confirms_again_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("amqp") else {
        return;
    };
    let filler = disk.fill(FILLER_BYTES);
    let broker = start(&disk, NO_DISK_ALARM);
    let rt = runtime();
    let (acked, nacked, declared_while_full, refused_declare, deleted_while_full) =
        rt.block_on(async {
            let (_connection, ch) = open(&broker).await;
            for queue in ["disk-amqp", "victim"] {
                declare_durable(&ch, queue, FieldTable::default())
                    .await
                    .expect("declare");
            }
            confirm_select(&ch).await;
            let (acked, nacked) = publish_until_nacked(&ch, "disk-amqp", 5).await;
            assert!(
                !nacked.is_empty(),
                "the disk never filled: {} confirms",
                acked.len()
            );
            // Definitions while the disk is full: each change is committed (declare-ok) or
            // refused with 541, never acknowledged and lost. Declarations with large arguments
            // use up the definitions file's free pages until a commit needs the disk.
            let (_c, ch) = open(&broker).await;
            let mut declared_while_full = Vec::new();
            let mut refused_declare = None;
            for i in 0..DECLARES_WHILE_FULL {
                let name = format!("declared-while-full-{i:04}");
                let mut arguments = FieldTable::default();
                arguments.insert(
                    "x-padding".into(),
                    AMQPValue::LongString(vec![b'p'; 2048].into()),
                );
                match declare_durable(&ch, &name, arguments).await {
                    Ok(_) => declared_while_full.push(name),
                    Err(error) => {
                        assert_eq!(
                            reply_code(&error),
                            Some(INTERNAL_ERROR),
                            "a failed definitions write: {error}"
                        );
                        refused_declare = Some(name);
                        break;
                    }
                }
            }
            eprintln!(
                "amqp: {} durable declarations committed on the full disk, then {:?} refused",
                declared_while_full.len(),
                refused_declare
            );
            let (_c, ch) = open(&broker).await;
            let deleted_while_full = within(
                "queue.delete",
                ch.queue_delete("victim".into(), QueueDeleteOptions::default()),
            )
            .await
            .is_ok();
            (
                acked,
                nacked,
                declared_while_full,
                refused_declare,
                deleted_while_full,
            )
        });
    eprintln!(
        "amqp: {} confirmed, {} nacked before the disk was freed; delete while full ok: {deleted_while_full}",
        acked.len(),
        nacked.len()
    );

    std::fs::remove_file(filler).expect("free space");
    let (acked, nacked) = rt.block_on(async {
        let (mut acked, mut nacked) = (acked, nacked);
        let (_connection, ch) = open(&broker).await;
        confirm_select(&ch).await;
        publish_until_confirmed_again(
            &ch,
            "disk-amqp",
            &mut acked,
            &mut nacked,
            "after space was freed",
        )
        .await;
        declare_durable(&ch, "declared-after", FieldTable::default())
            .await
            .expect("declaring works again once space is freed");
        (acked, nacked)
    });
    stop(broker);

    check_after_restart(&disk, "disk-amqp", &acked, &nacked);
    let broker = start(&disk, NO_DISK_ALARM);
    rt.block_on(async {
        let (connection, _channel) = open(&broker).await;
        assert!(exists(&connection, "declared-after").await);
        for name in &declared_while_full {
            assert!(
                exists(&connection, name).await,
                "{name} got declare-ok but is gone after the restart"
            );
        }
        if let Some(name) = &refused_declare {
            assert!(
                !exists(&connection, name).await,
                "{name} was refused but exists after the restart"
            );
        }
        assert_eq!(
            exists(&connection, "victim").await,
            !deleted_while_full,
            "delete-ok is given exactly when the deletion is stored"
        );
    });
    stop(broker);
}
/// A raw MQTT 3.1.1 client: CONNECT, QoS 1 PUBLISH and its PUBACK, nothing more.
struct MqttClient {
    stream: TcpStream,
}

impl MqttClient {
    fn connect(addr: SocketAddr, client_id: &str) -> Option<MqttClient> {
        Self::connect_session(addr, client_id, true)
    }

    /// Connects with a clean or a persistent (`clean` false) session.
    fn connect_session(addr: SocketAddr, client_id: &str, clean: bool) -> Option<MqttClient> {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(STEP)).ok()?;
        stream
            .write_all(&raw_mqtt::connect(client_id, clean))
            .ok()?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).ok()?;
        (connack[..2] == [0x20, 2] && connack[3] == 0).then_some(MqttClient { stream })
    }

    /// Publishes at QoS 2 (flagged DUP when `dup`) and completes the exchange: true when
    /// PUBREC came (then PUBREL and PUBCOMP follow), false when the broker closed the
    /// connection instead of PUBREC.
    fn publish_exactly_once(
        &mut self,
        topic: &str,
        packet_id: u16,
        payload: &[u8],
        dup: bool,
    ) -> bool {
        let first = if dup { 0x3C } else { 0x34 };
        let packet = raw_mqtt::publish_with_id(first, topic, packet_id, payload);
        if self.stream.write_all(&packet).is_err() {
            return false;
        }
        let mut pubrec = [0u8; 4];
        match self.stream.read_exact(&mut pubrec) {
            Ok(()) => assert_eq!(pubrec[..2], [0x50, 2], "a PUBREC"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("neither PUBREC nor a close within {STEP:?}")
            }
            Err(_) => return false,
        }
        let id = packet_id.to_be_bytes();
        self.stream
            .write_all(&[0x62, 2, id[0], id[1]])
            .expect("PUBREL");
        let mut pubcomp = [0u8; 4];
        self.stream.read_exact(&mut pubcomp).expect("PUBCOMP");
        assert_eq!(pubcomp, [0x70, 2, id[0], id[1]]);
        true
    }

    /// Publishes at QoS 1; true when PUBACK came, false when the broker closed the
    /// connection instead.
    fn publish(&mut self, topic: &str, packet_id: u16, payload: &[u8]) -> bool {
        let packet = raw_mqtt::publish_with_id(0x32, topic, packet_id, payload);
        if self.stream.write_all(&packet).is_err() {
            return false;
        }
        let mut puback = [0u8; 4];
        match self.stream.read_exact(&mut puback) {
            Ok(()) => {
                assert_eq!(puback[..2], [0x40, 2], "a PUBACK");
                assert_eq!(u16::from_be_bytes([puback[2], puback[3]]), packet_id);
                true
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("neither PUBACK nor a close within {STEP:?}")
            }
            Err(_) => false,
        }
    }
}

/// A full disk on MQTT: QoS 1 publications that are not written get no PUBACK and the
/// connection closes; what got a PUBACK is there after a restart; publishing works again
/// once space is freed, without a restart.
#[test]
fn mqtt_publishers_get_no_puback_on_a_full_disk_and_puback_again_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("mqtt") else {
        return;
    };
    let filler = disk.fill(FILLER_BYTES);
    let broker = start(&disk, NO_DISK_ALARM);
    bind_to_amq_topic(&broker, "disk-mqtt", "disk.mqtt");
    let connect = || MqttClient::connect(broker.mqtt_addr(), "disk-pub");
    let publish = |client: &mut MqttClient, n| client.publish("disk/mqtt", packet_id(n), &body(n));
    let (mut acked, mut closed) = publish_until_refused(connect, publish, 3);
    assert!(
        !closed.is_empty(),
        "every one of {MAX_MESSAGES} publications was acknowledged: more than the disk holds"
    );
    eprintln!(
        "mqtt: {} PUBACKs, {} publications closed without one",
        acked.len(),
        closed.len()
    );

    std::fs::remove_file(filler).expect("free space");
    publish_until_acknowledged_again(connect, publish, &mut acked, &mut closed, "PUBACK");
    stop(broker);
    check_after_restart(&disk, "disk-mqtt", &acked, &closed);
}

/// A raw STOMP 1.2 client: CONNECT, SEND with a receipt, and the frame that answers.
struct StompClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl StompClient {
    fn connect(addr: SocketAddr) -> Option<StompClient> {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(STEP)).ok()?;
        stream
            .write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
            .ok()?;
        let mut client = StompClient {
            stream,
            buffer: Vec::new(),
        };
        let frame = client.frame()?;
        frame.starts_with("CONNECTED").then_some(client)
    }

    /// The next frame as text, None if the connection closed first.
    fn frame(&mut self) -> Option<String> {
        loop {
            while self.buffer.first() == Some(&b'\n') {
                self.buffer.remove(0);
            }
            if let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&frame).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("no STOMP frame within {STEP:?}")
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends a persistent message asking for a receipt: true when RECEIPT came, false on an
    /// ERROR frame or a close.
    fn send(&mut self, destination: &str, n: u64, payload: &[u8]) -> bool {
        let mut frame = format!(
            "SEND\ndestination:{destination}\npersistent:true\nreceipt:r{n}\ncontent-length:{}\n\n",
            payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(payload);
        frame.push(0);
        if self.stream.write_all(&frame).is_err() {
            return false;
        }
        match self.frame() {
            Some(frame) if frame.starts_with("RECEIPT") => {
                assert!(frame.contains(&format!("receipt-id:r{n}\n")), "{frame}");
                true
            }
            Some(frame) => {
                assert!(frame.starts_with("ERROR"), "unexpected frame {frame}");
                false
            }
            None => false,
        }
    }
}

/// A full disk on STOMP: a persistent SEND that is not written gets an ERROR frame instead of
/// its RECEIPT and the connection closes; what got a RECEIPT is there after a restart;
/// sending works again once space is freed, without a restart.
#[test]
fn stomp_senders_get_an_error_on_a_full_disk_and_receipts_again_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("stomp") else {
        return;
    };
    let filler = disk.fill(FILLER_BYTES);
    let broker = start(&disk, NO_DISK_ALARM);
    let connect = || StompClient::connect(broker.stomp_addr());
    let send = |client: &mut StompClient, n| client.send("/queue/disk-stomp", n, &body(n));
    let (mut acked, mut refused) = publish_until_refused(connect, send, 3);
    assert!(
        !refused.is_empty(),
        "every one of {MAX_MESSAGES} SENDs got a receipt: more than the disk holds"
    );
    eprintln!(
        "stomp: {} receipts, {} SENDs refused",
        acked.len(),
        refused.len()
    );

    std::fs::remove_file(filler).expect("free space");
    publish_until_acknowledged_again(connect, send, &mut acked, &mut refused, "RECEIPT");
    stop(broker);
    check_after_restart(&disk, "disk-stomp", &acked, &refused);
}

/// The disk alarm is raised by the writes that cross the limit, before the disk is full:
/// with the timer out of the way (one check an hour), a confirming publisher streaming
/// persistent messages is blocked (connection.blocked) while the disk still has room, and no
/// message it sent was nacked.
#[test]
fn the_disk_alarm_blocks_publishers_before_the_disk_is_full() {
    let Some(disk) = Tmpfs::mount("alarm") else {
        return;
    };
    let limit: u64 = 6 * 1024 * 1024;
    let broker = start(
        &disk,
        &format!("[alarms]\ndisk_free_limit = {limit}\ncheck_interval_ms = 3600000\n"),
    );
    let (published, confirms) = runtime().block_on(async {
        let (connection, ch) = open(&broker).await;
        declare_durable(&ch, "disk-alarm", FieldTable::default())
            .await
            .expect("declare");
        confirm_select(&ch).await;
        let mut outstanding = std::collections::VecDeque::new();
        let mut confirms = Vec::new();
        let mut published = 0;
        for n in 0..MAX_MESSAGES {
            if connection.status().blocked() {
                break;
            }
            // lapin holds frames back while blocked: a publish that does not go out in time
            // is one the broker no longer reads.
            let Ok(sent) = timeout(
                Duration::from_secs(2),
                ch.basic_publish(
                    "".into(),
                    "disk-alarm".into(),
                    BasicPublishOptions::default(),
                    &body(n),
                    persistent(),
                ),
            )
            .await
            else {
                break;
            };
            outstanding.push_back(sent.expect("publish"));
            published += 1;
            if outstanding.len() >= 16
                && let Some(confirm) = outstanding.pop_front()
            {
                match timeout(Duration::from_secs(2), confirm).await {
                    Ok(confirmation) => confirms.push(confirmation.expect("confirmation")),
                    Err(_) => break,
                }
            }
        }
        let deadline = tokio::time::Instant::now() + STEP;
        while !connection.status().blocked() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            connection.status().blocked(),
            "no connection.blocked after {published} messages of {BODY_BYTES} bytes; {} bytes free",
            disk.free_bytes()
        );
        (published, confirms)
    });
    let free = disk.free_bytes();
    eprintln!(
        "disk alarm: blocked after {published} publishes of {BODY_BYTES} bytes with {free} bytes still free (limit {limit})"
    );
    assert!(
        free > limit / 4,
        "publishers were blocked only with {free} bytes left of a {limit} byte limit"
    );
    assert!(
        confirms.iter().all(|c| matches!(c, Confirmation::Ack(_))),
        "a message was nacked: the disk filled before the alarm"
    );
    stop(broker);
}

/// A full disk recovers when its queues are emptied: purging the queue that filled it gives
/// the log's space back, and publishing works again without a restart.
#[test]
fn a_full_disk_takes_publishes_again_once_its_queue_is_purged() {
    let Some(disk) = Tmpfs::mount("purge") else {
        return;
    };
    let broker = start(&disk, NO_DISK_ALARM);
    let acked_after = runtime().block_on(async {
        let (_connection, ch) = open(&broker).await;
        declare_durable(&ch, "disk-purge", FieldTable::default())
            .await
            .expect("declare");
        confirm_select(&ch).await;
        let (_, nacked) = publish_until_nacked(&ch, "disk-purge", 1).await;
        assert!(!nacked.is_empty(), "the disk never filled");
        let free_when_full = disk.free_bytes();
        let purged = within(
            "queue.purge",
            ch.queue_purge("disk-purge".into(), Default::default()),
        )
        .await
        .expect("purge");
        assert!(purged > 0);
        let mut acked_after = BTreeSet::new();
        publish_until_confirmed_again(
            &ch,
            "disk-purge",
            &mut acked_after,
            &mut BTreeSet::new(),
            "after the purge",
        )
        .await;
        eprintln!(
            "purge: {purged} messages purged; {free_when_full} bytes free when full, {} after",
            disk.free_bytes()
        );
        acked_after
    });
    stop(broker);
    let stored = check_after_restart(&disk, "disk-purge", &acked_after, &BTreeSet::new());
    assert_eq!(stored, acked_after, "purged messages stay gone");
}

/// MQTT QoS 2 on a full disk: a publication the broker could not store gets no PUBREC, and
/// when the client resends it on its persistent session it is routed again, not taken for a
/// duplicate of something stored (which would acknowledge a lost message).
#[test]
fn mqtt_exactly_once_resends_are_stored_after_a_full_disk_not_taken_for_duplicates() {
    let Some(disk) = Tmpfs::mount("qos2") else {
        return;
    };
    let filler = disk.fill(FILLER_BYTES);
    let broker = start(&disk, NO_DISK_ALARM);
    bind_to_amq_topic(&broker, "disk-qos2", "disk.qos2");
    let connect = || MqttClient::connect_session(broker.mqtt_addr(), "disk-qos2", false);
    let publish = |client: &mut MqttClient, n| client.publish("disk/qos2", packet_id(n), &body(n));
    let (mut acked, refused) = publish_until_refused(connect, publish, 1);
    assert!(!refused.is_empty(), "the disk never filled");
    const RESENT: u64 = 90_000;
    const ID: u16 = 61_000;
    let mut client = connect().expect("reconnect");
    assert!(
        !client.publish_exactly_once("disk/qos2", ID, &body(RESENT), false),
        "PUBREC for a publication the full disk could not take"
    );
    let mut client = connect().expect("reconnect");
    assert!(
        !client.publish_exactly_once("disk/qos2", ID, &body(RESENT), true),
        "PUBREC for a resend that was never stored"
    );

    std::fs::remove_file(filler).expect("free space");
    let deadline = Instant::now() + STEP;
    loop {
        assert!(Instant::now() < deadline, "no PUBREC after space was freed");
        if let Some(mut client) = connect()
            && client.publish_exactly_once("disk/qos2", ID, &body(RESENT), true)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    acked.insert(RESENT);
    stop(broker);
    let stored = check_after_restart(&disk, "disk-qos2", &acked, &BTreeSet::new());
    assert!(stored.contains(&RESENT));
}

/// A persistent message nacked at once (a full `reject-publish` queue refused it) whose write
/// then fails is not nacked a second time, and the channel's confirms go on once the disk has
/// room again: a passed nack never holds the channel's acks back.
#[test]
fn confirms_go_on_after_a_refused_message_fails_to_write() {
    /// Messages published while the disk fills: twice what fits.
    const REFUSED_MESSAGES: u64 = 400;
    let Some(disk) = Tmpfs::mount("refused") else {
        return;
    };
    let filler = disk.fill(FILLER_BYTES);
    let broker = start(&disk, NO_DISK_ALARM);
    runtime().block_on(async {
        let (_connection, ch) = open(&broker).await;
        declare_durable(&ch, "kept", FieldTable::default())
            .await
            .expect("declare");
        let mut full = FieldTable::default();
        full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
        full.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        within(
            "queue.declare",
            ch.queue_declare(
                "full".into(),
                lapin::options::QueueDeclareOptions::default(),
                full,
            ),
        )
        .await
        .expect("declare");
        for queue in ["kept", "full"] {
            within(
                "queue.bind",
                ch.queue_bind(
                    queue.into(),
                    "amq.fanout".into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .expect("bind");
        }
        confirm_select(&ch).await;
        // Each is stored for "kept" and refused by "full" (nacked at once); the disk fills on
        // the way, and the writes of some of them fail.
        for n in 0..REFUSED_MESSAGES {
            let confirmation =
                publish_confirmed(&ch, "amq.fanout", "", &body(n), persistent()).await;
            assert!(
                matches!(confirmation, Confirmation::Nack(_)),
                "a full queue refused message {n}"
            );
        }
        std::fs::remove_file(&filler).expect("free the disk");
        // Once the store writes again, a message for "kept" alone is confirmed.
        let deadline = Instant::now() + STEP;
        let mut n = REFUSED_MESSAGES;
        loop {
            match publish_numbered(&ch, "kept", n).await {
                Confirmation::Ack(_) => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "no ack once the disk had room: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            n += 1;
        }
    });
    stop(broker);
}
