//! A plain TCP relay, the physical limit that `bench/compare.sh` sets beside Junction (not a
//! tutorial). A broker cannot move messages between two loopback sockets faster than a program
//! that does nothing but copy bytes from one socket to the other, so this is the ceiling for
//! "1 producer, 1 consumer, small transient messages".
//!
//! `tcp_relay serve [--listen ADDR]` (default `127.0.0.1:0`) is the relay, a process of its own
//! like a broker. It prints `listening relay ADDR` and `ready`. Each connection first sends one
//! byte: `C` for a consumer, `P` for a producer. A producer is paired with the longest-waiting
//! consumer (it waits for one if none is there) and every byte it sends is copied, in 64 KiB
//! reads, to that consumer; when the producer closes, the consumer's side is shut down too. One
//! thread per pair, blocking I/O, no framing: the relay never looks at the bytes.
//!
//! `tcp_relay bench [--host H] [--port P] [--size S] [--duration SECS] [--count N] [--rate R]
//! [--batch M] [--broker-pid PID]` drives it the way `junction-perf` drives a broker: one
//! consumer and one producer connection; the producer writes messages of S bytes (default 16)
//! as fast as it can (or R per second) for SECS seconds (default 10), or exactly N messages if
//! `--count` is given, M messages per write call (default: as many as fit in 64 KiB; `--batch
//! 1` costs a system call per message, as an unbatched client would). Each message starts with
//! the time it was written (nanoseconds since the run started, 8 bytes, when S >= 8), so the
//! consumer, which splits the stream back into S-byte messages, can measure latency. It prints
//! a summary and one line starting with `JSON ` holding `sent_rate`, `received_rate` (msg/s),
//! `latency_us` {`p50`, `p95`, `p99`, `p999`, `max`}, `broker_cpu_s` (the relay's CPU time
//! during the run, from /proc when `--broker-pid` is given) and `msgs_per_broker_cpu_s`, plus
//! `sent`, `received`, `size` and `duration_s`, and the same figures under junction-perf's
//! names (`received_per_s`, `latency_p99_us`, `broker_received_per_cpu_s`, ...).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How many bytes the relay and the consumer read at once.
const READ_BUFFER: usize = 64 * 1024;
/// How many bytes the producer writes at once, at most, by default.
const WRITE_BATCH: usize = 64 * 1024;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        bail!(
            "usage: tcp_relay serve [--listen ADDR] | tcp_relay bench [options] (see the source)"
        );
    }
    let mode = args.remove(0);
    match mode.as_str() {
        "serve" => serve(&args),
        "bench" => bench(Bench::parse(&args)?),
        other => bail!("unknown mode {other}: serve or bench"),
    }
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// Consumers waiting for a producer, oldest first.
#[derive(Default)]
struct Waiting {
    consumers: Mutex<VecDeque<TcpStream>>,
    arrived: Condvar,
}

fn serve(args: &[String]) -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--listen" => listen = it.next().context("--listen needs an address")?.clone(),
            other => bail!("unknown option {other}"),
        }
    }
    let listener = TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
    println!("listening relay {}", listener.local_addr()?);
    println!("ready");
    std::io::stdout().flush()?;

    let waiting = Arc::new(Waiting::default());
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                eprintln!("accept: {error}");
                continue;
            }
        };
        let waiting = waiting.clone();
        thread::spawn(move || {
            if let Err(error) = handle(stream, &waiting) {
                eprintln!("connection: {error:#}");
            }
        });
    }
    Ok(())
}

/// Reads the role byte; a consumer joins the queue, a producer takes the oldest consumer and
/// copies into it until it closes.
fn handle(mut stream: TcpStream, waiting: &Waiting) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut role = [0u8; 1];
    stream
        .read_exact(&mut role)
        .context("reading the role byte")?;
    match role[0] {
        b'C' => {
            waiting
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(stream);
            waiting.arrived.notify_one();
            Ok(())
        }
        b'P' => {
            let mut consumer = {
                let mut consumers = waiting.consumers.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(consumer) = consumers.pop_front() {
                        break consumer;
                    }
                    consumers = waiting
                        .arrived
                        .wait(consumers)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            let mut buffer = vec![0u8; READ_BUFFER];
            loop {
                let n = match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(error) => return Err(error.into()),
                };
                consumer.write_all(&buffer[..n])?;
            }
            consumer.shutdown(Shutdown::Write)?;
            Ok(())
        }
        other => bail!("unknown role byte {other:#04x} (expected C or P)"),
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

/// The `bench` command line.
#[derive(Debug, Clone)]
struct Bench {
    host: String,
    port: u16,
    size: usize,
    duration: f64,
    count: Option<u64>,
    rate: Option<f64>,
    batch: Option<usize>,
    broker_pid: Option<u32>,
}

impl Bench {
    fn parse(args: &[String]) -> anyhow::Result<Bench> {
        let mut bench = Bench {
            host: "127.0.0.1".into(),
            port: 0,
            size: 16,
            duration: 10.0,
            count: None,
            rate: None,
            batch: None,
            broker_pid: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let parse_error = || format!("{flag}: bad value {value}");
            match flag.as_str() {
                "--host" => bench.host = value.clone(),
                "--port" => bench.port = value.parse().with_context(parse_error)?,
                "--size" => bench.size = value.parse().with_context(parse_error)?,
                "--duration" => bench.duration = value.parse().with_context(parse_error)?,
                "--count" => bench.count = Some(value.parse().with_context(parse_error)?),
                "--rate" => {
                    let rate: f64 = value.parse().with_context(parse_error)?;
                    bench.rate = (rate > 0.0).then_some(rate);
                }
                "--batch" => bench.batch = Some(value.parse().with_context(parse_error)?),
                "--broker-pid" => {
                    bench.broker_pid = Some(value.parse().with_context(parse_error)?);
                }
                other => bail!("unknown option {other}"),
            }
        }
        if bench.port == 0 {
            bail!("--port is required (the relay prints it: `listening relay ADDR`)");
        }
        if bench.size == 0 {
            bail!("--size must be at least 1");
        }
        Ok(bench)
    }
}

/// A process's user plus system CPU time in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start with field 3, so utime (14) and stime (15) are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Ok(ticks as f64 / 100.0)
}

/// What the consumer saw.
struct Received {
    count: u64,
    latencies_us: Vec<u32>,
    last: Option<Instant>,
}

fn bench(options: Bench) -> anyhow::Result<()> {
    let address = format!("{}:{}", options.host, options.port);
    let mut consumer =
        TcpStream::connect(&address).with_context(|| format!("connecting {address}"))?;
    consumer.set_nodelay(true)?;
    consumer.write_all(b"C")?;
    let mut producer = TcpStream::connect(&address)?;
    producer.set_nodelay(true)?;
    producer.write_all(b"P")?;

    let cpu_before = options.broker_pid.map(cpu_seconds).transpose()?;
    let origin = Instant::now();
    let size = options.size;

    let consumer_thread = thread::spawn(move || -> anyhow::Result<Received> {
        let mut buffer = vec![0u8; READ_BUFFER];
        // Bytes of the message that a read cut in two, carried over to the next read.
        let mut partial: Vec<u8> = Vec::with_capacity(size);
        let mut received = Received {
            count: 0,
            latencies_us: Vec::new(),
            last: None,
        };
        loop {
            let n = match consumer.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            let now = origin.elapsed().as_nanos() as u64;
            let mut data = &buffer[..n];
            while !data.is_empty() {
                let take = (size - partial.len()).min(data.len());
                partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if partial.len() == size {
                    if size >= 8 {
                        let sent = u64::from_le_bytes(partial[..8].try_into().unwrap_or_default());
                        received
                            .latencies_us
                            .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                    }
                    received.count += 1;
                    partial.clear();
                }
            }
            received.last = Some(Instant::now());
        }
        Ok(received)
    });

    // The producer, on this thread.
    let deadline = origin + Duration::from_secs_f64(options.duration);
    let per_batch = options.batch.unwrap_or(WRITE_BATCH / size).max(1) as u64;
    let mut batch = Vec::with_capacity(per_batch as usize * size);
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        let limit = options.count.unwrap_or(u64::MAX);
        if sent >= limit || (options.count.is_none() && now >= deadline) {
            break;
        }
        let mut n = per_batch.min(limit - sent);
        if let Some(rate) = options.rate {
            // Messages due by now, at `rate` per second since the start.
            let due = (origin.elapsed().as_secs_f64() * rate) as u64;
            n = n.min(due.saturating_sub(sent));
            if n == 0 {
                let next = origin + Duration::from_secs_f64((sent + 1) as f64 / rate);
                thread::sleep(next.saturating_duration_since(Instant::now()));
                continue;
            }
        }
        batch.clear();
        let stamp = origin.elapsed().as_nanos() as u64;
        for _ in 0..n {
            let start = batch.len();
            if size >= 8 {
                batch.extend_from_slice(&stamp.to_le_bytes());
            }
            batch.resize(start + size, 0xab);
        }
        producer.write_all(&batch)?;
        sent += n;
    }
    let send_time = origin.elapsed().as_secs_f64();
    producer.shutdown(Shutdown::Write)?;

    let received = consumer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let receive_time = received
        .last
        .map_or(send_time, |last| last.duration_since(origin).as_secs_f64());
    let cpu = match (options.broker_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    let sent_rate = sent as f64 / send_time;
    let received_rate = received.count as f64 / receive_time;

    let mut latencies = received.latencies_us;
    latencies.sort_unstable();
    let quantile = |q: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    let (p50, p95, p99, p999) = (
        quantile(0.5),
        quantile(0.95),
        quantile(0.99),
        quantile(0.999),
    );
    let max = latencies.last().copied().unwrap_or(0);

    println!(
        "relay: sent {sent} x {size} B in {send_time:.2} s ({sent_rate:.0} msg/s), received {} \
         ({received_rate:.0} msg/s); latency p50 {p50} us, p99 {p99} us, max {max} us",
        received.count
    );
    let (cpu_json, per_cpu_json) = match cpu {
        Some(cpu) => (
            format!("{cpu:.3}"),
            if cpu > 0.0 {
                format!("{:.0}", received.count as f64 / cpu)
            } else {
                "null".into()
            },
        ),
        None => ("null".into(), "null".into()),
    };
    // The names the brief for this tool asked for (sent_rate, latency_us, ...) and the flat
    // ones that junction-perf prints (sent_per_s, latency_p99_us, ...), so that either reader
    // finds its figures.
    let received_count = received.count;
    let complete = received_count == sent;
    println!(
        "JSON {{\"tool\":\"tcp_relay\",\"protocol\":\"tcp\",\"size\":{size},\
         \"duration_s\":{send_time:.3},\"sent\":{sent},\"received\":{received_count},\
         \"complete\":{complete},\"ok\":{complete},\
         \"sent_rate\":{sent_rate:.1},\"received_rate\":{received_rate:.1},\
         \"sent_per_s\":{sent_rate:.1},\"received_per_s\":{received_rate:.1},\
         \"latency_us\":{{\"p50\":{p50},\"p95\":{p95},\"p99\":{p99},\"p999\":{p999},\
         \"max\":{max}}},\"latency_p50_us\":{p50},\"latency_p95_us\":{p95},\
         \"latency_p99_us\":{p99},\"latency_p999_us\":{p999},\"latency_max_us\":{max},\
         \"broker_cpu_s\":{cpu_json},\"msgs_per_broker_cpu_s\":{per_cpu_json},\
         \"broker_received_per_cpu_s\":{per_cpu_json}}}"
    );
    if received.count != sent {
        bail!(
            "the consumer received {} of {sent} messages",
            received.count
        );
    }
    Ok(())
}
