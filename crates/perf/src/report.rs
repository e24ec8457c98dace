//! The end of a run: a human summary and one `JSON ` line with every figure.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::bench::{Bench, ConsumerStats, Counters, Timing, new_histogram};

/// What a protocol's run tells the report besides the counters.
#[derive(Debug)]
pub struct Summary {
    /// `amqp`, `mqtt` or `stomp`.
    pub protocol: &'static str,
    /// One line describing the scenario, for people.
    pub scenario: String,
    /// The scenario's settings, for the JSON line.
    pub settings: Map<String, Value>,
    /// Whether the broker confirms publishes in this run (confirms, QoS 1/2, receipts).
    pub confirms: bool,
    /// Copies of each message that consumers should receive (fanout: the number of queues).
    pub copies: u64,
    /// Whether every expected message must arrive (the run fails otherwise).
    pub must_arrive: bool,
    /// Deliveries expected: confirmed (or sent) messages times copies.
    pub expected: u64,
}

/// The exit code of a run whose expected messages did not all arrive.
pub const SHORTFALL_EXIT: i32 = 2;

/// Latency percentiles in microseconds.
struct Latency {
    count: u64,
    min: f64,
    mean: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        let count = histogram.len();
        if count == 0 {
            return Latency {
                count,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Latency {
            count,
            min: us(histogram.min()),
            mean: histogram.mean() / 1000.0,
            p50: us(histogram.value_at_quantile(0.50)),
            p95: us(histogram.value_at_quantile(0.95)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        }
    }
}

fn round(value: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    json!((value * scale).round() / scale)
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Prints the summary and the JSON line; returns the exit code (0, or
/// [`SHORTFALL_EXIT`] when messages that had to arrive did not).
pub fn report(
    bench: &Bench,
    summary: Summary,
    consumers: &[ConsumerStats],
    timing: &Timing,
) -> anyhow::Result<i32> {
    let counters = &bench.counters;
    let sent = Counters::get(&counters.sent);
    let confirmed = Counters::get(&counters.confirmed);
    let nacked = Counters::get(&counters.nacked);
    let received: u64 = consumers.iter().map(|c| c.received).sum();
    let foreign: u64 = consumers.iter().map(|c| c.foreign).sum();
    let mut histogram = new_histogram();
    for consumer in consumers {
        histogram.add(&consumer.histogram)?;
    }
    let latency = Latency::of(&histogram);
    let last = consumers.iter().map(|c| c.last_nanos).max().unwrap_or(0);
    let receive_secs = if received > 0 {
        last.saturating_sub(timing.start_nanos) as f64 / 1e9
    } else {
        0.0
    };
    let sent_per_s = rate(sent, timing.publish_secs);
    // What the broker took from the publishers: confirmed where it confirms, else written.
    let accepted_per_s = if summary.confirms {
        rate(confirmed, timing.publish_secs)
    } else {
        sent_per_s
    };
    let undelivered = summary.expected.saturating_sub(received);
    let out_of_order: u64 = consumers.iter().map(|c| c.out_of_order).sum();
    let skipped: u64 = consumers.iter().map(|c| c.skipped).sum();
    let received_per_s = rate(received, receive_secs);
    let complete = received >= summary.expected;
    let failed = summary.must_arrive && !complete;
    let common = &bench.common;

    println!("junction-perf {}: {}", summary.protocol, summary.scenario);
    let confirms = if summary.confirms {
        format!(", confirmed {confirmed}, nacked {nacked}")
    } else {
        String::new()
    };
    println!(
        "sent      {sent} msgs in {:.2} s = {sent_per_s:.0} msg/s{confirms}",
        timing.publish_secs
    );
    let per_message = if summary.copies > 1 {
        format!(
            " deliveries ({:.0} msg/s x {} copies)",
            received_per_s / summary.copies as f64,
            summary.copies
        )
    } else {
        " msg/s".to_owned()
    };
    println!("received  {received} msgs in {receive_secs:.2} s = {received_per_s:.0}{per_message}");
    let verdict = match (complete, summary.must_arrive) {
        (true, _) => "all arrived".to_owned(),
        (false, true) => format!(
            "SHORTFALL: {} did not arrive within the drain time",
            summary.expected - received
        ),
        (false, false) => format!(
            "{} did not arrive (allowed: nothing guarantees delivery here)",
            summary.expected - received
        ),
    };
    let foreign_note = if foreign > 0 {
        format!(", {foreign} foreign messages ignored")
    } else {
        String::new()
    };
    println!(
        "expected  {} ({} {} x {} copies): {verdict}{foreign_note}",
        summary.expected,
        if summary.confirms {
            "confirmed"
        } else {
            "sent"
        },
        if summary.confirms { confirmed } else { sent },
        summary.copies
    );
    let latency_note = if common.rate > 0.0 {
        ""
    } else {
        " (unlimited rate: includes queueing; quote fixed-rate runs)"
    };
    println!(
        "latency   p50 {:.0} µs, p95 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs{latency_note}",
        latency.p50, latency.p95, latency.p99, latency.p999, latency.max
    );
    let broker_figures = timing.broker_cpu.map(|cpu| {
        let per_cpu_s = |count: u64| if cpu > 0.0 { count as f64 / cpu } else { 0.0 };
        let us_per_msg = if sent > 0 {
            cpu * 1e6 / sent as f64
        } else {
            0.0
        };
        (cpu, per_cpu_s(sent), per_cpu_s(received), us_per_msg)
    });
    if let Some((cpu, sent_per_cpu, received_per_cpu, us_per_msg)) = broker_figures {
        println!(
            "broker    CPU {cpu:.2} s: {sent_per_cpu:.0} msgs sent / CPU-s, {received_per_cpu:.0} deliveries / CPU-s, {us_per_msg:.2} µs CPU per message"
        );
    }
    if let Some(memory) = timing.memory {
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "memory    broker resident {:.1} MiB at the start, {:.1} MiB at the peak of the run, {:.1} MiB at the end; VmHWM {:.1} MiB",
            mib(memory.start_kib),
            mib(memory.peak_kib),
            mib(memory.end_kib),
            mib(memory.hwm_kib)
        );
    }
    if out_of_order > 0 || skipped > 0 {
        println!(
            "order     {out_of_order} out of order (or repeated), {skipped} sequence numbers skipped"
        );
    }
    if let Some(cpu) = timing.tool_cpu {
        println!("tool      CPU {cpu:.2} s");
    }

    let mut figures = Map::new();
    figures.insert("protocol".into(), json!(summary.protocol));
    figures.insert("run_id".into(), json!(bench.run_id));
    figures.insert("producers".into(), json!(common.producers));
    figures.insert("consumers".into(), json!(common.consumers));
    figures.insert("size".into(), json!(common.size));
    figures.insert("rate".into(), json!(common.rate));
    figures.insert("duration_s".into(), json!(common.duration));
    figures.insert("batch".into(), json!(common.batch));
    figures.extend(summary.settings);
    figures.insert("sent".into(), json!(sent));
    figures.insert("confirms".into(), json!(summary.confirms));
    figures.insert("confirmed".into(), json!(confirmed));
    figures.insert("nacked".into(), json!(nacked));
    figures.insert("copies".into(), json!(summary.copies));
    figures.insert("expected".into(), json!(summary.expected));
    figures.insert("received".into(), json!(received));
    figures.insert("foreign".into(), json!(foreign));
    figures.insert("must_arrive".into(), json!(summary.must_arrive));
    figures.insert("complete".into(), json!(complete));
    figures.insert("ok".into(), json!(!failed));
    figures.insert("publish_s".into(), round(timing.publish_secs, 3));
    figures.insert("receive_s".into(), round(receive_secs, 3));
    figures.insert("sent_per_s".into(), round(sent_per_s, 1));
    figures.insert("accepted_per_s".into(), round(accepted_per_s, 1));
    figures.insert("undelivered".into(), json!(undelivered));
    figures.insert(
        "lost".into(),
        if summary.must_arrive {
            json!(undelivered)
        } else {
            Value::Null
        },
    );
    figures.insert("out_of_order".into(), json!(out_of_order));
    figures.insert("skipped".into(), json!(skipped));
    figures.insert("received_per_s".into(), round(received_per_s, 1));
    figures.insert("latency_count".into(), json!(latency.count));
    figures.insert("latency_min_us".into(), round(latency.min, 1));
    figures.insert("latency_mean_us".into(), round(latency.mean, 1));
    figures.insert("latency_p50_us".into(), round(latency.p50, 1));
    figures.insert("latency_p95_us".into(), round(latency.p95, 1));
    figures.insert("latency_p99_us".into(), round(latency.p99, 1));
    figures.insert("latency_p999_us".into(), round(latency.p999, 1));
    figures.insert("latency_max_us".into(), round(latency.max, 1));
    figures.insert("broker_pid".into(), json!(common.broker_pid));
    let (broker_cpu, sent_per_cpu, received_per_cpu, us_per_msg) = match broker_figures {
        Some((a, b, c, d)) => (round(a, 3), round(b, 1), round(c, 1), round(d, 3)),
        None => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    figures.insert("broker_cpu_s".into(), broker_cpu);
    figures.insert("broker_sent_per_cpu_s".into(), sent_per_cpu);
    figures.insert("broker_received_per_cpu_s".into(), received_per_cpu);
    figures.insert("broker_cpu_us_per_msg".into(), us_per_msg);
    let memory = |field: fn(&crate::memory::Figures) -> u64| {
        timing
            .memory
            .as_ref()
            .map_or(Value::Null, |m| json!(field(m)))
    };
    figures.insert("broker_rss_start_kib".into(), memory(|m| m.start_kib));
    figures.insert("broker_rss_peak_kib".into(), memory(|m| m.peak_kib));
    figures.insert("broker_rss_end_kib".into(), memory(|m| m.end_kib));
    figures.insert("broker_hwm_kib".into(), memory(|m| m.hwm_kib));
    figures.insert(
        "tool_cpu_s".into(),
        timing.tool_cpu.map_or(Value::Null, |cpu| round(cpu, 3)),
    );
    println!("JSON {}", Value::Object(figures));
    Ok(if failed { SHORTFALL_EXIT } else { 0 })
}
