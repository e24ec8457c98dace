//! Delayed messages at scale: publishes `--messages` persistent messages with publisher
//! confirms to an `x-delayed-message` exchange, each with an `x-delay` that makes it due at
//! its own moment in a window of `--spread` seconds starting `--hold` seconds after the run
//! starts, so that every message is pending at once before the first comes due. Then a
//! consumer takes them as they are released and measures each one's lateness (arrival minus
//! due time, both wall-clock milliseconds; the due time rides in the body).
//!
//! It reports the broker's resident memory once everything is pending (and its `VmHWM`), the
//! publish rate, and the lateness distribution. A message released before it is due counts
//! as early; a message missing at the end counts as lost (exit code 2).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use crate::cli::DelayedArgs;
use crate::memory::{Sampler, status_kib};

const EXCHANGE: &str = "perf-delayed";
const QUEUE: &str = "perf-delayed-q";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Runs the scenario; returns the exit code.
pub async fn run(args: DelayedArgs) -> anyhow::Result<i32> {
    let url = format!(
        "amqp://{}:{}@{}:{}/%2f",
        args.user, args.password, args.host, args.port
    );
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let sampler = match args.broker_pid {
        Some(pid) => Some(Sampler::start(pid).context("cannot read the broker's memory")?),
        None => None,
    };
    let setup = connection.create_channel().await?;
    let _ = setup
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await;
    let _ = setup
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(LongString::from("direct")),
    );
    setup
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .context("declare the x-delayed-message exchange")?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await?;
    setup
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "d".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let messages = args.messages;
    let consumer = tokio::spawn(consume(
        connection.create_channel().await?,
        messages,
        Duration::from_secs_f64(args.hold + args.spread + 60.0),
    ));

    // Publish: message i is due at first_due + i * spacing.
    let started = Instant::now();
    let first_due = now_ms() + (args.hold * 1000.0) as i64;
    let spacing = args.spread * 1000.0 / messages.max(1) as f64;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut pending = std::collections::VecDeque::new();
    let (mut acked, mut nacked, mut too_late) = (0u64, 0u64, 0u64);
    let mut body = vec![0u8; args.size.max(8)];
    for i in 0..messages {
        let due = first_due + (i as f64 * spacing) as i64;
        let delay = due - now_ms();
        if delay <= 0 {
            too_late += 1;
        }
        body[..8].copy_from_slice(&due.to_be_bytes());
        let mut headers = FieldTable::default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay.max(1)));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
                "d".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?;
        pending.push_back(confirm);
        while pending.len() >= args.confirm_window {
            if let Some(oldest) = pending.pop_front() {
                match oldest.await? {
                    Confirmation::Nack(_) => nacked += 1,
                    _ => acked += 1,
                }
            }
        }
    }
    for confirm in pending {
        match confirm.await? {
            Confirmation::Nack(_) => nacked += 1,
            _ => acked += 1,
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let pending_kib = args.broker_pid.and_then(|pid| status_kib(pid, "VmRSS"));
    let until_first_due = first_due - now_ms();
    let report = consumer.await.context("consumer task")??;
    let figures = sampler.map(Sampler::stop);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let lost = messages as u64 - report.received;
    println!(
        "junction-perf delayed: {messages} persistent messages of {} B, due over {} s starting {} s after the start",
        args.size.max(8),
        args.spread,
        args.hold
    );
    println!(
        "publish   {:.0} msg/s with confirms ({acked} acked, {nacked} nacked) in {publish_secs:.1} s; first due {} ms after the last confirm{}",
        messages as f64 / publish_secs,
        until_first_due,
        if too_late > 0 {
            format!("; {too_late} were already due when published: raise --hold")
        } else {
            String::new()
        }
    );
    if let (Some(pending_kib), Some(figures)) = (pending_kib, figures) {
        println!(
            "memory    broker resident {:.1} MiB before, {:.1} MiB with all pending, peak {:.1} MiB; VmHWM {:.1} MiB",
            mib(figures.start_kib),
            mib(pending_kib),
            mib(figures.peak_kib),
            mib(figures.hwm_kib)
        );
    }
    let h = &report.lateness;
    println!(
        "lateness  p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms; {} early, {lost} lost",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        report.early
    );
    println!(
        "JSON {}",
        json!({
            "scenario": "delayed",
            "messages": messages,
            "size": args.size.max(8),
            "hold_s": args.hold,
            "spread_s": args.spread,
            "publish_rate": messages as f64 / publish_secs,
            "acked": acked,
            "nacked": nacked,
            "already_due_when_published": too_late,
            "broker_rss_pending_kib": pending_kib,
            "broker_rss_start_kib": figures.map(|f| f.start_kib),
            "broker_rss_peak_kib": figures.map(|f| f.peak_kib),
            "broker_hwm_kib": figures.map(|f| f.hwm_kib),
            "lateness_p50_ms": h.value_at_quantile(0.5),
            "lateness_p99_ms": h.value_at_quantile(0.99),
            "lateness_p999_ms": h.value_at_quantile(0.999),
            "lateness_max_ms": h.max(),
            "early": report.early,
            "lost": lost,
        })
    );
    let cleanup = connection.create_channel().await?;
    let _ = cleanup
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await;
    let _ = cleanup
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await;
    Ok(if lost > 0 || nacked > 0 { 2 } else { 0 })
}

/// What the consumer saw.
struct Received {
    received: u64,
    early: u64,
    lateness: Histogram<u64>,
}

/// Takes up to `expected` messages (no-ack), until `limit` passes.
async fn consume(
    channel: lapin::Channel,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<Received> {
    let mut consumer = channel
        .basic_consume(
            QUEUE.into(),
            "perf-delayed".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut report = Received {
        received: 0,
        early: 0,
        lateness: Histogram::new_with_bounds(1, 3_600_000, 3).context("histogram bounds")?,
    };
    let deadline = tokio::time::Instant::now() + limit;
    while report.received < expected as u64 {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let delivery = delivery?;
        let arrived = now_ms();
        let due = delivery
            .data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(arrived, i64::from_be_bytes);
        if arrived < due {
            report.early += 1;
        }
        report
            .lateness
            .saturating_record((arrived - due).max(0) as u64);
        report.received += 1;
    }
    Ok(report)
}
