//! The bindings benchmark (issue 13): how long many subscriptions on `amq.topic` take, and
//! the durable bindings that `bench/bindings.sh` then times a restart with.
//!
//! `--phase subscribe` opens `--connections` MQTT connections (clean sessions) and has each
//! send its share of `--count` SUBSCRIBEs, one filter per packet and one packet at a time,
//! each waiting for its SUBACK: every subscription is one binding of the session's queue to
//! `amq.topic`. It prints the total time and the SUBACK round trip of the first and last
//! thousand, so a cost that grows with the number of bindings shows. The MQTT packets are
//! written by hand (a few bytes each), so the client costs next to nothing.
//!
//! `--phase durable` declares `--queues` durable queues with lapin and binds them to
//! `amq.topic` with `--count` keys in total, over one channel per queue. The broker writes
//! each durable binding to its definitions store.
//!
//! It does not start or restart the broker: the script does.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{BindingsArgs, BindingsPhase};

/// Runs the phase `args` names; returns the exit code.
pub async fn run(args: BindingsArgs) -> anyhow::Result<i32> {
    match args.phase {
        BindingsPhase::Subscribe => subscribe(&args).await,
        BindingsPhase::Durable => durable(&args).await,
    }
}

/// What one connection measured: SUBACK round trips in microseconds, in order.
type RoundTrips = Vec<u64>;

async fn subscribe(args: &BindingsArgs) -> anyhow::Result<i32> {
    let addr = format!("{}:{}", args.host, args.port.unwrap_or(1883));
    let per_connection = args.count.div_ceil(args.connections.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..args.connections.max(1) {
        let addr = addr.clone();
        let (user, password) = (args.user.clone(), args.password.clone());
        tasks.push(tokio::spawn(async move {
            subscriber(&addr, &user, &password, connection, per_connection).await
        }));
    }
    let mut all: Vec<RoundTrips> = Vec::new();
    for task in tasks {
        all.push(task.await.context("subscriber task")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: usize = all.iter().map(Vec::len).sum();
    let first = percentiles(all.iter().flat_map(|t| t.iter().take(1000)));
    let last = percentiles(all.iter().flat_map(|t| t.iter().rev().take(1000)));
    println!(
        "{total} subscriptions over {} connections in {elapsed:.2} s ({:.0}/s)",
        args.connections,
        total as f64 / elapsed
    );
    println!(
        "SUBACK round trip, first 1000 per connection: p50 {} us, p99 {} us; last 1000: p50 {} us, p99 {} us",
        first.0, first.1, last.0, last.1
    );
    println!(
        "JSON {}",
        json!({
            "phase": "subscribe",
            "subscriptions": total,
            "connections": args.connections,
            "seconds": elapsed,
            "first_p50_us": first.0, "first_p99_us": first.1,
            "last_p50_us": last.0, "last_p99_us": last.1,
        })
    );
    Ok(0)
}

/// The median and 99th percentile of `values`.
fn percentiles<'a>(values: impl Iterator<Item = &'a u64>) -> (u64, u64) {
    let Ok(mut histogram) = Histogram::<u64>::new(3) else {
        return (0, 0);
    };
    for value in values {
        histogram.saturating_record(*value);
    }
    (
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    )
}

fn mqtt_string(out: &mut Vec<u8>, text: &str) -> anyhow::Result<()> {
    let len = u16::try_from(text.len()).context("MQTT string too long")?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Reads one packet's first byte and body.
async fn read_packet(stream: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let first = stream.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((first, body))
}

/// One connection's subscriptions: `bench/<connection>/<i>/+/#`, each waited for.
async fn subscriber(
    addr: &str,
    user: &str,
    password: &str,
    connection: usize,
    count: usize,
) -> anyhow::Result<RoundTrips> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut body = Vec::new();
    mqtt_string(&mut body, "MQTT")?;
    body.extend_from_slice(&[4, 0xC2, 0, 0]);
    mqtt_string(&mut body, &format!("bindings-bench-{connection}"))?;
    mqtt_string(&mut body, user)?;
    mqtt_string(&mut body, password)?;
    stream.write_all(&mqtt_packet(0x10, &body)).await?;
    let (first, ack) = read_packet(&mut stream).await?;
    if first != 0x20 || ack.get(1) != Some(&0) {
        bail!("CONNACK refused: {first:#x} {ack:?}");
    }
    let mut round_trips = Vec::with_capacity(count);
    for i in 0..count {
        let packet_id = (i % 65535 + 1) as u16;
        let mut body = packet_id.to_be_bytes().to_vec();
        mqtt_string(&mut body, &format!("bench/{connection}/{i}/+/#"))?;
        body.push(0);
        let sent = Instant::now();
        stream.write_all(&mqtt_packet(0x82, &body)).await?;
        let (first, ack) = read_packet(&mut stream).await?;
        if first != 0x90 || ack.get(2) != Some(&0) {
            bail!("SUBSCRIBE {i} refused: {first:#x} {ack:?}");
        }
        round_trips.push(sent.elapsed().as_micros() as u64);
    }
    Ok(round_trips)
}

async fn durable(args: &BindingsArgs) -> anyhow::Result<i32> {
    let url = format!(
        "amqp://{}:{}@{}:{}/%2f",
        args.user,
        args.password,
        args.host,
        args.port.unwrap_or(5672)
    );
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .context("AMQP connect")?;
    let queues = args.queues.max(1);
    let per_queue = args.count.div_ceil(queues);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for queue in 0..queues {
        let channel = connection.create_channel().await?;
        tasks.push(tokio::spawn(async move {
            let name = format!("bindings-bench-{queue}");
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .queue_declare(name.as_str().into(), options, FieldTable::default())
                .await?;
            for i in 0..per_queue {
                let key = format!("room.{queue}.{i}.*");
                channel
                    .queue_bind(
                        name.as_str().into(),
                        "amq.topic".into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("binding task")??;
    }
    let elapsed = started.elapsed();
    let total = per_queue * queues;
    println!(
        "{total} durable bindings on {queues} queues in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "JSON {}",
        json!({"phase": "durable", "bindings": total, "queues": queues, "seconds": elapsed.as_secs_f64()})
    );
    let _ =
        tokio::time::timeout(Duration::from_secs(5), connection.close(200, "done".into())).await;
    Ok(0)
}
