//! What every run shares, whatever the protocol: the counters, the consumers' measurements,
//! the producers' pacing, the phases of a run (begin, publish, drain, stop), the CPU samples
//! and the broker's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::Common;
use crate::memory::{self, Sampler};
use crate::payload;

/// Counters that every task of a run adds to.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to the client library (and written, as far as it tells).
    pub sent: AtomicU64,
    /// Messages the broker confirmed (publisher confirm ack, PUBACK/PUBCOMP, RECEIPT).
    pub confirmed: AtomicU64,
    /// Messages the broker refused (publisher confirm nack).
    pub nacked: AtomicU64,
    /// Messages of this run that consumers received (every copy counts).
    pub received: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Highest latency the histograms hold (larger values are recorded as this): one hour.
const MAX_LATENCY_NANOS: u64 = 3_600_000_000_000;

/// An empty latency histogram (nanoseconds, 3 significant digits, up to an hour).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NANOS, 3).expect("valid histogram bounds")
}

/// What one consumer measured.
#[derive(Debug)]
pub struct ConsumerStats {
    /// End-to-end latency of every message of this run, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Messages of this run received.
    pub received: u64,
    /// Messages received that another run (or something else) sent.
    pub foreign: u64,
    /// When the last message of this run arrived ([`payload::now_nanos`]).
    pub last_nanos: u64,
    /// Messages whose sequence number was not above the last one seen from the same
    /// producer (redeliveries, duplicates, reordering).
    pub out_of_order: u64,
    /// Sequence numbers jumped over: messages of a producer that did not arrive between two
    /// that did (lost, or not yet arrived when the run ended).
    pub skipped: u64,
    /// The next sequence number expected from each producer.
    next_seq: Vec<Option<u32>>,
    run_tag: u16,
    counters: Arc<Counters>,
}

impl ConsumerStats {
    fn new(run_tag: u16, counters: Arc<Counters>) -> ConsumerStats {
        ConsumerStats {
            histogram: new_histogram(),
            received: 0,
            foreign: 0,
            last_nanos: 0,
            out_of_order: 0,
            skipped: 0,
            next_seq: Vec::new(),
            run_tag,
            counters,
        }
    }

    /// Records one received body.
    pub fn record(&mut self, body: &[u8]) {
        let now = payload::now_nanos();
        match payload::read(body) {
            Some(stamp) if stamp.run_tag == self.run_tag => {
                self.histogram
                    .saturating_record(now.saturating_sub(stamp.sent_nanos).max(1));
                self.received += 1;
                self.last_nanos = now;
                self.check_order(stamp.producer, stamp.seq);
                Counters::add(&self.counters.received, 1);
            }
            _ => self.foreign += 1,
        }
    }

    /// Counts a message that came out of order, or the messages skipped before it.
    fn check_order(&mut self, producer: u16, seq: u32) {
        let producer = usize::from(producer);
        if self.next_seq.len() <= producer {
            self.next_seq.resize(producer + 1, None);
        }
        let next = self.next_seq[producer].unwrap_or(0);
        if seq >= next {
            self.skipped += u64::from(seq - next);
            self.next_seq[producer] = Some(seq.wrapping_add(1));
        } else {
            self.out_of_order += 1;
        }
    }
}

/// Paces one producer: how many messages it may publish now, and when it must stop.
#[derive(Debug)]
pub struct Pacer {
    /// Messages per second, or `None` for as fast as possible.
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
    issued: u64,
    batch: usize,
    /// Messages this producer publishes at most (`None`: no limit).
    limit: Option<u64>,
}

impl Pacer {
    /// How many messages to publish now (at most the batch size), waiting until at least one
    /// is due; `None` once the run's publishing time is over.
    pub async fn next(&mut self) -> Option<usize> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return None;
            }
            let left = match self.limit {
                Some(limit) if self.issued >= limit => return None,
                Some(limit) => (limit - self.issued).min(self.batch as u64) as usize,
                None => self.batch,
            };
            let Some(rate) = self.rate else {
                return Some(left);
            };
            let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
            let due = if now < self.start {
                0
            } else {
                (elapsed * rate).floor() as u64 + 1
            };
            if due > self.issued {
                let n = (due - self.issued).min(left as u64);
                return Some(n as usize);
            }
            let next = self.start + Duration::from_secs_f64(self.issued as f64 / rate);
            tokio::time::sleep_until(next.min(self.deadline)).await;
        }
    }

    /// Notes that `n` messages went out.
    pub fn issued(&mut self, n: usize) {
        self.issued += n as u64;
    }

    /// Whether the publishing time is over (or the producer published its `--count`).
    pub fn over(&self) -> bool {
        Instant::now() >= self.deadline || self.limit.is_some_and(|limit| self.issued >= limit)
    }
}

/// User+system CPU seconds of process `pid` so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it
    // start with the state (field 3), so utime (14) and stime (15) are the 12th and 13th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// A run: its identity, counters and phases.
pub struct Bench {
    /// The run id (in topic and destination names).
    pub run_id: String,
    /// The run's tag in every message.
    pub run_tag: u16,
    /// The shared counters.
    pub counters: Arc<Counters>,
    /// The shared options.
    pub common: Common,
    stop: watch::Sender<bool>,
    begun: Option<Begun>,
}

/// The state of a run once it has begun.
struct Begun {
    at: Instant,
    at_nanos: u64,
    deadline: Instant,
    broker_cpu: Option<f64>,
    tool_cpu: Option<f64>,
    progress: Option<JoinHandle<()>>,
    producers_done: Option<Instant>,
    memory: Option<Sampler>,
}

/// Times and CPU figures of a finished run.
#[derive(Debug, Clone)]
pub struct Timing {
    /// From the start to the producers' end (including their last confirms), seconds.
    pub publish_secs: f64,
    /// When the run started ([`payload::now_nanos`]).
    pub start_nanos: u64,
    /// Broker CPU seconds over the run, if `--broker-pid` was given.
    pub broker_cpu: Option<f64>,
    /// This tool's CPU seconds over the run.
    pub tool_cpu: Option<f64>,
    /// The broker's resident memory over the run, if `--broker-pid` was given.
    pub memory: Option<memory::Figures>,
}

impl Bench {
    /// A run with the shared options.
    pub fn new(common: &Common) -> anyhow::Result<Bench> {
        common.validate()?;
        let run_id = common.run_id.clone().unwrap_or_else(payload::new_run_id);
        let (stop, _) = watch::channel(false);
        Ok(Bench {
            run_tag: payload::run_tag(&run_id),
            run_id,
            counters: Arc::new(Counters::default()),
            common: common.clone(),
            stop,
            begun: None,
        })
    }

    /// A fresh measurement for one consumer.
    pub fn consumer_stats(&self) -> ConsumerStats {
        ConsumerStats::new(self.run_tag, self.counters.clone())
    }

    /// Turns true when the consumers should stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Starts the clock (after every consumer is ready): samples CPU times and starts the
    /// progress lines.
    pub fn begin(&mut self) -> anyhow::Result<()> {
        let broker_cpu = match self.common.broker_pid {
            Some(pid) => Some(cpu_seconds(&pid.to_string())?),
            None => None,
        };
        let tool_cpu = cpu_seconds("self").ok();
        let memory = self.common.broker_pid.and_then(Sampler::start);
        let at = Instant::now();
        let progress = (!self.common.quiet).then(|| tokio::spawn(progress(self.counters.clone())));
        self.begun = Some(Begun {
            at,
            at_nanos: payload::now_nanos(),
            deadline: at + Duration::from_secs_f64(self.common.duration),
            broker_cpu,
            tool_cpu,
            progress,
            producers_done: None,
            memory,
        });
        Ok(())
    }

    fn begun(&self) -> &Begun {
        self.begun.as_ref().expect("Bench::begin was called")
    }

    /// The pacer of producer `index` (of `--producers`); producers at a fixed rate start
    /// spread over one interval.
    pub fn pacer(&self, index: usize) -> Pacer {
        let begun = self.begun();
        let rate = (self.common.rate > 0.0).then_some(self.common.rate);
        let offset = match rate {
            Some(rate) => index as f64 / (rate * self.common.producers.max(1) as f64),
            None => 0.0,
        };
        Pacer {
            rate,
            start: begun.at + Duration::from_secs_f64(offset),
            deadline: begun.deadline,
            issued: 0,
            batch: self.common.batch,
            limit: (self.common.count > 0).then_some(self.common.count),
        }
    }

    /// When the producers must have stopped (and their final confirms arrived) at the latest.
    pub fn confirm_deadline(&self) -> Instant {
        self.begun().deadline + Duration::from_secs_f64(self.common.drain.max(1.0))
    }

    /// Notes that every producer has finished.
    pub fn producers_done(&mut self) {
        if let Some(begun) = self.begun.as_mut() {
            begun.producers_done.get_or_insert_with(Instant::now);
        }
    }

    /// Waits until consumers received `expected` messages, or nothing arrived for `--idle`
    /// seconds, or `--drain` seconds passed; then tells the consumers to stop.
    pub async fn drain(&self, expected: Option<u64>) {
        let cap = Instant::now() + Duration::from_secs_f64(self.common.drain);
        let idle = Duration::from_secs_f64(self.common.idle);
        let mut last = Counters::get(&self.counters.received);
        let mut last_change = Instant::now();
        loop {
            let received = Counters::get(&self.counters.received);
            let now = Instant::now();
            if expected.is_some_and(|expected| received >= expected) || now >= cap {
                break;
            }
            if received != last {
                last = received;
                last_change = now;
            } else if now.duration_since(last_change) >= idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop_consumers();
    }

    /// Tells the consumers to stop now.
    pub fn stop_consumers(&self) {
        self.stop.send_replace(true);
    }

    /// Ends the run (after the consumers stopped): samples CPU times again.
    pub fn finish(&mut self) -> anyhow::Result<Timing> {
        let begun = self.begun.as_mut().expect("Bench::begin was called");
        if let Some(progress) = begun.progress.take() {
            progress.abort();
        }
        let broker_cpu = match (self.common.broker_pid, begun.broker_cpu) {
            (Some(pid), Some(start)) => Some(cpu_seconds(&pid.to_string())? - start),
            _ => None,
        };
        let tool_cpu = match (begun.tool_cpu, cpu_seconds("self").ok()) {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        };
        let done = begun.producers_done.unwrap_or_else(Instant::now);
        Ok(Timing {
            publish_secs: done.duration_since(begun.at).as_secs_f64(),
            start_nanos: begun.at_nanos,
            broker_cpu,
            tool_cpu,
            memory: begun.memory.take().map(Sampler::stop),
        })
    }
}

/// Prints sent and received messages per second, every second.
async fn progress(counters: Arc<Counters>) {
    let start = Instant::now();
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut sent, mut received, mut confirmed) = (0, 0, 0);
    loop {
        let now = ticks.tick().await;
        let elapsed = now.duration_since(start).as_secs_f64();
        let s = Counters::get(&counters.sent);
        let r = Counters::get(&counters.received);
        let c = Counters::get(&counters.confirmed);
        let confirms = if c > 0 {
            format!(", confirmed {} msg/s", c - confirmed)
        } else {
            String::new()
        };
        println!(
            "time {elapsed:5.1} s, sent {} msg/s{confirms}, received {} msg/s",
            s - sent,
            r - received
        );
        (sent, received, confirmed) = (s, r, c);
    }
}

/// Waits for every task; returns their values, or the first error (after waiting for all).
pub async fn join_all<T>(handles: Vec<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    let mut values = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(value)) => values.push(value),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(anyhow::anyhow!("a task failed: {join}"));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_this_process_reads() {
        let cpu = cpu_seconds("self").unwrap();
        assert!(cpu >= 0.0);
    }

    #[tokio::test]
    async fn a_pacer_keeps_its_rate() {
        let start = Instant::now();
        let mut pacer = Pacer {
            rate: Some(1000.0),
            start,
            deadline: start + Duration::from_millis(200),
            issued: 0,
            batch: 10,
            limit: None,
        };
        let mut total = 0;
        while let Some(n) = pacer.next().await {
            assert!(n <= 10);
            pacer.issued(n);
            total += n;
        }
        assert!((150..=210).contains(&total), "{total} messages in 200 ms");
    }

    #[test]
    fn consumer_stats_ignore_other_runs() {
        let counters = Arc::new(Counters::default());
        let mut stats = ConsumerStats::new(5, counters.clone());
        let mut body = payload::blank(16);
        payload::stamp(&mut body, 5, 0, 1);
        stats.record(&body);
        payload::stamp(&mut body, 6, 0, 2);
        stats.record(&body);
        stats.record(b"short");
        assert_eq!((stats.received, stats.foreign), (1, 2));
        assert_eq!(Counters::get(&counters.received), 1);
        assert_eq!(stats.histogram.len(), 1);
    }

    #[test]
    fn consumer_stats_count_order_per_producer() {
        let mut stats = ConsumerStats::new(5, Arc::new(Counters::default()));
        let mut body = payload::blank(16);
        // Producer 0: 0 1 2 4 (3 skipped) 3 (out of order); producer 1: 0 1 1 (repeated).
        for (producer, seq) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (0, 2),
            (1, 1),
            (0, 4),
            (0, 3),
            (1, 1),
        ] {
            payload::stamp(&mut body, 5, producer, seq);
            stats.record(&body);
        }
        assert_eq!(
            (stats.received, stats.skipped, stats.out_of_order),
            (8, 1, 2)
        );
    }

    #[tokio::test]
    async fn a_pacer_stops_at_its_count() {
        let start = Instant::now();
        let mut pacer = Pacer {
            rate: None,
            start,
            deadline: start + Duration::from_secs(60),
            issued: 0,
            batch: 100,
            limit: Some(250),
        };
        let mut total = 0;
        while let Some(n) = pacer.next().await {
            pacer.issued(n);
            total += n;
        }
        assert_eq!(total, 250);
        assert!(pacer.over());
    }
}
