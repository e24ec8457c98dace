//! MQTT 3.1.1 runs: publishers and subscribers on one topic, each its own connection (clean
//! session); every subscriber gets every message.
//!
//! The client is the tool's own ([`crate::mqtt_wire`] over tokio TCP), so that it can push
//! harder than a broker takes: a publisher encodes a whole batch of PUBLISH packets into one
//! buffer and writes it with one call (flat out, batches of about 64 KiB), and with QoS 1 or 2
//! keeps up to `--confirm` packet ids in flight while a reader task counts the PUBACKs (or
//! answers PUBREC with PUBREL and counts PUBCOMPs) as they come. A subscriber reads up to
//! 256 KiB at a time, parses every packet of the read in place, and acknowledges a read's QoS 1
//! and 2 deliveries with one write. Connections ask for no keep-alive, so no PINGREQ is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::{ReadHalf as OwnedReadHalf, WriteHalf as OwnedWriteHalf};
use anyhow::Context;
use bytes::{Buf, BytesMut};
use serde_json::{Map, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::amqp::rate_text;
use crate::bench::{Bench, ConsumerStats, Counters, Pacer, join_all};
use crate::cli::{Endpoint, MqttArgs};
use crate::mqtt_wire::{self, ConnectOptions, Packet};
use crate::payload;
use crate::report::{Summary, report};

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A flat-out publisher fills its buffer up to about this much before writing it.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A flat-out subscriber whose read brought less than this waits [`SMALL_READ_PAUSE`] before
/// reading again: a broker that writes each PUBLISH on its own would otherwise wake it for
/// every message, and on two cores that CPU is taken from the broker. The socket's buffer
/// holds what arrives meanwhile.
const SMALL_READ: usize = 16 * 1024;
/// See [`SMALL_READ`].
const SMALL_READ_PAUSE: Duration = Duration::from_millis(1);

/// The read buffer keeps at least this much room before a read...
const READ_MIN_ROOM: usize = 64 * 1024;
/// ...and grows by this much when it has less.
const READ_GROW: usize = 256 * 1024;

/// Runs an MQTT benchmark; returns the exit code.
pub async fn run(args: MqttArgs) -> anyhow::Result<i32> {
    let mut bench = Bench::new(&args.common)?;
    let common = bench.common.clone();
    let endpoint = common.endpoint("mqtt", 1883)?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("perf/{}", bench.run_id));
    let qos = args.qos;

    let mut subscribers = Vec::with_capacity(common.consumers);
    for index in 0..common.consumers {
        let name = format!("perf-{}-s{index}", bench.run_id);
        let (mut reader, mut write) = connect(&endpoint, &name, true).await?;
        let mut out = Vec::new();
        mqtt_wire::subscribe(&mut out, 1, &topic, qos);
        crate::net::send(&mut write, &out).await?;
        tokio::time::timeout(SETUP_TIMEOUT, reader.expect(mqtt_wire::SUBACK))
            .await
            .context("no SUBACK in time")??
            .ack_code()
            .filter(|code| *code != 0x80)
            .context("subscription refused")?;
        subscribers.push(tokio::spawn(subscribe(
            reader,
            write,
            bench.consumer_stats(),
            bench.stop_signal(),
            common.rate <= 0.0 && qos == 0,
        )));
    }

    let mut connected = Vec::with_capacity(common.producers);
    for index in 0..common.producers {
        let name = format!("perf-{}-p{index}", bench.run_id);
        connected.push(connect(&endpoint, &name, true).await?);
    }
    bench.begin()?;
    let mut publishers = Vec::with_capacity(common.producers);
    for (index, (reader, write)) in connected.into_iter().enumerate() {
        let publisher = Publisher {
            index: index as u16,
            run_tag: bench.run_tag,
            size: common.size,
            topic: topic.clone(),
            qos,
            window: usize::from(args.confirm.max(1)),
            flat_out: common.rate <= 0.0,
            counters: bench.counters.clone(),
            confirm_deadline: bench.confirm_deadline(),
        };
        let pacer = bench.pacer(index);
        publishers.push(tokio::spawn(publisher.run(reader, write, pacer)));
    }
    let published = join_all(publishers).await;
    bench.producers_done();
    if let Err(error) = published {
        bench.stop_consumers();
        let _ = join_all(subscribers).await;
        return Err(error);
    }

    let confirms = qos > 0;
    let copies = common.consumers as u64;
    let counted = if confirms {
        Counters::get(&bench.counters.confirmed)
    } else {
        Counters::get(&bench.counters.sent)
    };
    let expected = counted * copies + common.expect;
    bench.drain(Some(expected)).await;
    let stats = join_all(subscribers).await?;
    let timing = bench.finish()?;

    let mut json_settings = Map::new();
    json_settings.insert("qos".into(), json!(args.qos));
    json_settings.insert("topic".into(), json!(topic));
    json_settings.insert("confirm".into(), json!(confirms.then_some(args.confirm)));
    let scenario = format!(
        "{} publisher(s), {} subscriber(s), topic {topic}, QoS {}, {} B, {}{}, {} s",
        common.producers,
        common.consumers,
        args.qos,
        common.size,
        rate_text(common.rate),
        if confirms {
            format!(", inflight {}", args.confirm)
        } else {
            String::new()
        },
        common.duration
    );
    let summary = Summary {
        protocol: "mqtt",
        scenario,
        settings: json_settings,
        confirms,
        copies,
        must_arrive: confirms,
        expected,
    };
    report(&bench, summary, &stats, &timing)
}

/// The reading half of a connection and its buffer.
pub struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    /// Bytes the last read brought.
    last_read: usize,
}

/// A packet taken off the connection (its type, and the first bytes of its body).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    kind: u8,
    head: [u8; 4],
}

impl Received {
    /// The return code of a CONNACK, or of a SUBACK's first (only) filter.
    pub fn ack_code(&self) -> Option<u8> {
        match self.kind {
            mqtt_wire::CONNACK => Some(self.head[1]),
            mqtt_wire::SUBACK => Some(self.head[2]),
            _ => None,
        }
    }
}

impl Reader {
    /// Reads more bytes into the buffer; false when the broker closed the connection.
    pub async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_MIN_ROOM {
            self.buf.reserve(READ_GROW);
        }
        self.last_read = self.read.read_buf(&mut self.buf).await?;
        Ok(self.last_read > 0)
    }

    /// Calls `each` on every whole packet in the buffer, then drops them from it.
    pub fn drain(&mut self, mut each: impl FnMut(Packet<'_>)) -> anyhow::Result<()> {
        let mut at = 0;
        while let Some(packet) = mqtt_wire::next_packet(&self.buf[at..])? {
            at += packet.len;
            each(packet);
        }
        self.buf.advance(at);
        Ok(())
    }

    /// Reads until a packet of type `kind` arrives (skipping others); an error if the
    /// connection closes first.
    pub async fn expect(&mut self, kind: u8) -> anyhow::Result<Received> {
        loop {
            let mut found = None;
            let mut at = 0;
            while let Some(packet) = mqtt_wire::next_packet(&self.buf[at..])? {
                at += packet.len;
                if packet.kind == kind {
                    let mut head = [0; 4];
                    for (to, from) in head.iter_mut().zip(packet.body) {
                        *to = *from;
                    }
                    found = Some(Received { kind, head });
                    break;
                }
            }
            self.buf.advance(at);
            if let Some(found) = found {
                return Ok(found);
            }
            anyhow::ensure!(self.fill().await?, "the broker closed the connection");
        }
    }
}

/// Connects with client id `client_id` and waits for an accepting CONNACK (no keep-alive).
pub async fn connect(
    endpoint: &Endpoint,
    client_id: &str,
    clean_session: bool,
) -> anyhow::Result<(Reader, OwnedWriteHalf)> {
    let (read, mut write) = tokio::time::timeout(
        SETUP_TIMEOUT,
        crate::net::open(&endpoint.host, endpoint.port, endpoint.tls.as_ref()),
    )
    .await
    .context("connecting took too long")??;
    let mut out = Vec::new();
    mqtt_wire::connect(
        &mut out,
        &ConnectOptions {
            client_id,
            clean_session,
            keep_alive: 0,
            credentials: Some((&endpoint.user, &endpoint.password)),
        },
    );
    crate::net::send(&mut write, &out).await?;
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(READ_GROW),
        last_read: 0,
    };
    let connack = tokio::time::timeout(SETUP_TIMEOUT, reader.expect(mqtt_wire::CONNACK))
        .await
        .context("no CONNACK in time")??;
    match connack.ack_code() {
        Some(0) => Ok((reader, write)),
        code => anyhow::bail!("connection refused: CONNACK return code {code:?}"),
    }
}

/// Receives until told to stop, acknowledging QoS 1 and 2 deliveries; `coalesce` pauses
/// after small reads (see [`SMALL_READ`]), for flat-out QoS 0 runs, where latency is not
/// quoted and the broker does not wait for our acknowledgements.
async fn subscribe(
    mut reader: Reader,
    mut write: OwnedWriteHalf,
    mut stats: ConsumerStats,
    mut stop: watch::Receiver<bool>,
    coalesce: bool,
) -> anyhow::Result<ConsumerStats> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    let mut acks = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            more = reader.fill() => {
                anyhow::ensure!(
                    more.context("subscriber connection failed")?,
                    "the broker closed a subscriber's connection"
                );
                reader.drain(|packet| match packet.kind {
                    mqtt_wire::PUBLISH => {
                        if let Some((qos, id, payload)) = packet.publish() {
                            stats.record(payload);
                            match qos {
                                1 => mqtt_wire::ack(&mut acks, mqtt_wire::PUBACK, id),
                                2 => mqtt_wire::ack(&mut acks, mqtt_wire::PUBREC, id),
                                _ => {}
                            }
                        }
                    }
                    mqtt_wire::PUBREL => {
                        if let Some(id) = packet.ack_id() {
                            mqtt_wire::ack(&mut acks, mqtt_wire::PUBCOMP, id);
                        }
                    }
                    _ => {}
                })?;
                if !acks.is_empty() {
                    crate::net::send(&mut write, &acks).await?;
                    acks.clear();
                }
                if coalesce && reader.last_read < SMALL_READ {
                    tokio::time::sleep(SMALL_READ_PAUSE).await;
                }
            }
        }
    }
    mqtt_wire::disconnect(&mut acks);
    let _ = crate::net::send(&mut write, &acks).await;
    Ok(stats)
}

/// One publishing connection.
struct Publisher {
    index: u16,
    run_tag: u16,
    size: usize,
    topic: String,
    qos: u8,
    /// Publishes in flight at most (QoS 1 and 2).
    window: usize,
    flat_out: bool,
    counters: Arc<Counters>,
    confirm_deadline: tokio::time::Instant,
}

impl Publisher {
    /// Publishes as the pacer allows, one write per batch, while a reader task counts what
    /// the broker acknowledges; then waits for the last acknowledgements and disconnects.
    async fn run(
        self,
        reader: Reader,
        write: OwnedWriteHalf,
        mut pacer: Pacer,
    ) -> anyhow::Result<()> {
        let write = Arc::new(Mutex::new(write));
        let window = Arc::new(Semaphore::new(if self.qos > 0 { self.window } else { 0 }));
        let acked = Arc::new(AtomicU64::new(0));
        let listener = tokio::spawn(listen(
            reader,
            write.clone(),
            window.clone(),
            acked.clone(),
            self.counters.clone(),
        ));
        let mut template = payload::blank(self.size);
        let mut frames: Vec<u8> =
            Vec::with_capacity(WRITE_BATCH_BYTES + self.size + self.topic.len() + 16);
        let mut next_id: u16 = 0;
        let mut seq: u32 = 0;
        let mut published: u64 = 0;
        let mut ended = false;
        while !ended {
            frames.clear();
            let mut batch = 0;
            // Flat out, fill about WRITE_BATCH_BYTES; at a fixed rate, write what is due.
            while !ended && (batch == 0 || (self.flat_out && frames.len() < WRITE_BATCH_BYTES)) {
                let Some(mut n) = pacer.next().await else {
                    ended = true;
                    break;
                };
                if self.qos > 0 {
                    n = self.take_window(&window, n, batch > 0).await?;
                    if n == 0 {
                        break;
                    }
                }
                // The send time of every message of one write is the same.
                payload::stamp(&mut template, self.run_tag, self.index, seq);
                for _ in 0..n {
                    let packet_id = if self.qos > 0 {
                        next_id = next_id.checked_add(1).unwrap_or(1);
                        next_id
                    } else {
                        0
                    };
                    let start = mqtt_wire::publish(
                        &mut frames,
                        &self.topic,
                        self.qos,
                        packet_id,
                        self.size,
                    );
                    let body = &mut frames[start..start + self.size];
                    body.copy_from_slice(&template);
                    body[12..16].copy_from_slice(&seq.to_le_bytes());
                    seq = seq.wrapping_add(1);
                }
                pacer.issued(n);
                batch += n;
            }
            if batch == 0 {
                continue;
            }
            if let Err(error) = crate::net::send(&mut *write.lock().await, &frames).await {
                return Err(match listener.await {
                    Ok(Err(broker)) => broker.context("publisher connection failed"),
                    _ => error.into(),
                });
            }
            published += batch as u64;
            Counters::add(&self.counters.sent, batch as u64);
        }
        if self.qos > 0 {
            while acked.load(Ordering::Relaxed) < published {
                if listener.is_finished() || tokio::time::Instant::now() >= self.confirm_deadline {
                    eprintln!(
                        "publisher {}: {} of {published} acknowledged at the end",
                        self.index,
                        acked.load(Ordering::Relaxed)
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        {
            let mut write = write.lock().await;
            let mut bye = Vec::new();
            mqtt_wire::disconnect(&mut bye);
            let _ = crate::net::send(&mut write, &bye).await;
            let _ = write.shutdown().await;
        }
        match tokio::time::timeout(Duration::from_millis(500), listener).await {
            Ok(Ok(Err(error))) => Err(error.context("publisher connection failed")),
            _ => Ok(()),
        }
    }

    /// Takes up to `n` places in the window: waits for the first ones unless `have_some` (the
    /// batch already holds publishes, which must be written first); returns how many.
    async fn take_window(
        &self,
        window: &Semaphore,
        n: usize,
        have_some: bool,
    ) -> anyhow::Result<usize> {
        let mut granted = 0;
        if !have_some {
            // Wait for a quarter of the window (or the whole batch) to be free rather than
            // for one place, so that a publisher the window holds back writes batches, not
            // one PUBLISH per PUBACK.
            let first = n.min(self.window.div_ceil(4)).max(1);
            tokio::time::timeout_at(self.confirm_deadline, window.acquire_many(first as u32))
                .await
                .context("no PUBACK in time")?
                .context("closed")?
                .forget();
            granted = first;
        }
        let more = window.available_permits().min(n - granted);
        if more > 0
            && let Ok(permits) = window.try_acquire_many(more as u32)
        {
            permits.forget();
            granted += more;
        }
        Ok(granted)
    }
}

/// A publisher's reader: counts PUBACKs (QoS 1) or answers PUBREC with PUBREL and counts
/// PUBCOMPs (QoS 2), opening the window as they come, until the broker closes.
async fn listen(
    mut reader: Reader,
    write: Arc<Mutex<OwnedWriteHalf>>,
    window: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut releases = Vec::new();
    while reader.fill().await? {
        let mut done = 0u64;
        reader.drain(|packet| match packet.kind {
            mqtt_wire::PUBACK | mqtt_wire::PUBCOMP => done += 1,
            mqtt_wire::PUBREC => {
                if let Some(id) = packet.ack_id() {
                    mqtt_wire::ack(&mut releases, mqtt_wire::PUBREL, id);
                }
            }
            _ => {}
        })?;
        if !releases.is_empty() {
            crate::net::send(&mut *write.lock().await, &releases).await?;
            releases.clear();
        }
        if done > 0 {
            acked.fetch_add(done, Ordering::Relaxed);
            Counters::add(&counters.confirmed, done);
            window.add_permits(done as usize);
        }
    }
    Ok(())
}
