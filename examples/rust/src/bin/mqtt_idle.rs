//! A load tool for idle MQTT connections (not a tutorial): opens `--connections N` (default
//! 10000) MQTT 3.1.1 connections with rumqttc to `--host`/`--port` (default 127.0.0.1:1883),
//! each with a keep-alive of `--keep-alive K` seconds (default 10), waits until every one has
//! its CONNACK, then holds them for `--hold S` seconds (default 30) while rumqttc's event loops
//! send PINGREQs, and reports how many are still connected. It exits non-zero if a connection
//! failed or was lost.
//!
//! Other flags: `--concurrency C` connection attempts in flight at once (default 200),
//! `--connect-timeout S` for all of them together (default 120), `--user`/`--password`
//! (default guest/guest), `--prefix P` for the client ids (`P-0`, `P-1`, ...).
//!
//! It prints `all connected: N in T s` once every CONNACK has arrived (`bench/mqtt_idle.sh`
//! samples the broker's memory then), and at the end `held N connections for S s: connected M,
//! lost L, PINGRESPs P`. The soft limit on open files is raised to the hard limit first.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, NetworkOptions, Packet};
use tokio::sync::{Semaphore, mpsc};

/// The command line.
#[derive(Debug, Clone)]
struct Options {
    host: String,
    port: u16,
    connections: usize,
    keep_alive: u64,
    hold: u64,
    concurrency: usize,
    connect_timeout: u64,
    user: String,
    password: String,
    prefix: String,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            host: "127.0.0.1".into(),
            port: 1883,
            connections: 10_000,
            keep_alive: 10,
            hold: 30,
            concurrency: 200,
            connect_timeout: 120,
            user: "guest".into(),
            password: "guest".into(),
            prefix: format!("mqtt-idle-{}", std::process::id()),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number = || -> anyhow::Result<u64> {
                value
                    .parse()
                    .with_context(|| format!("{flag}: '{value}' is not a number"))
            };
            match flag.as_str() {
                "--host" => options.host = value.clone(),
                "--port" => options.port = u16::try_from(number()?)?,
                "--connections" => options.connections = usize::try_from(number()?)?,
                "--keep-alive" => options.keep_alive = number()?,
                "--hold" => options.hold = number()?,
                "--concurrency" => options.concurrency = usize::try_from(number()?)?.max(1),
                "--connect-timeout" => options.connect_timeout = number()?,
                "--user" => options.user = value.clone(),
                "--password" => options.password = value.clone(),
                "--prefix" => options.prefix = value.clone(),
                _ => bail!("unknown flag {flag}"),
            }
        }
        if options.keep_alive == 0 {
            bail!("--keep-alive must be at least 1 second (the point is to send PINGREQs)");
        }
        Ok(options)
    }
}

/// What the connections have seen so far.
#[derive(Default)]
struct Counters {
    /// Connections whose event loop ended with an error after CONNACK.
    lost: AtomicUsize,
    /// PINGRESPs received.
    pings: AtomicU64,
    /// The first few errors, for the report.
    errors: Mutex<Vec<String>>,
}

impl Counters {
    fn note(&self, error: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 5 {
            errors.push(error);
        }
    }
}

/// How a connection attempt ended.
enum Connected {
    Yes,
    No,
}

/// Raises the soft limit on open files to the hard limit; returns (soft, hard).
fn raise_nofile_limit() -> anyhow::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    Ok((soft, hard))
}

/// One connection: connects (holding a permit while it does), reports, then runs its event
/// loop (answering nothing, sending PINGREQs) until it fails.
async fn run_client(
    n: usize,
    options: Arc<Options>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    report: mpsc::UnboundedSender<Connected>,
) {
    let mut mqtt = MqttOptions::new(
        format!("{}-{n}", options.prefix),
        &options.host,
        options.port,
    );
    mqtt.set_keep_alive(Duration::from_secs(options.keep_alive))
        .set_credentials(&options.user, &options.password)
        .set_clean_session(true);
    // The client must live as long as the event loop: dropping it ends the loop.
    let (_client, mut eventloop) = AsyncClient::new(mqtt, 1);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(options.connect_timeout);
    eventloop.set_network_options(network);

    let permit = permits.acquire_owned().await;
    let first = eventloop.poll().await;
    drop(permit);
    match first {
        Ok(Event::Incoming(Packet::ConnAck(connack)))
            if connack.code == ConnectReturnCode::Success =>
        {
            let _ = report.send(Connected::Yes);
        }
        other => {
            counters.note(format!("client {n} did not connect: {other:?}"));
            let _ = report.send(Connected::No);
            return;
        }
    }
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PingResp)) => {
                counters.pings.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(error) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                counters.note(format!("client {n} lost: {error}"));
                return;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Arc::new(Options::parse()?);
    let (soft, hard) = raise_nofile_limit()?;
    println!("open files limit {soft} (hard {hard})");
    if (options.connections as u64) + 64 > soft {
        eprintln!(
            "warning: {} connections need more open files than the limit of {soft}",
            options.connections
        );
    }
    println!(
        "connecting {} clients to {}:{} (keep-alive {} s, {} at a time)",
        options.connections, options.host, options.port, options.keep_alive, options.concurrency
    );

    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let (report, mut reports) = mpsc::unbounded_channel();
    let started = Instant::now();
    for n in 0..options.connections {
        tokio::spawn(run_client(
            n,
            options.clone(),
            permits.clone(),
            counters.clone(),
            report.clone(),
        ));
    }
    drop(report);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(options.connect_timeout);
    let (mut connected, mut failed) = (0usize, 0usize);
    while connected + failed < options.connections {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(Connected::Yes)) => connected += 1,
            Ok(Some(Connected::No)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let took = started.elapsed().as_secs_f64();
    if connected < options.connections {
        println!(
            "connected {connected} of {} in {took:.2} s ({failed} failed, {} still trying)",
            options.connections,
            options.connections - connected - failed
        );
        for error in counters
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            println!("  {error}");
        }
        std::process::exit(1);
    }
    println!(
        "all connected: {connected} in {took:.2} s ({:.0} connections/s)",
        connected as f64 / took
    );

    tokio::time::sleep(Duration::from_secs(options.hold)).await;
    let lost = counters.lost.load(Ordering::Relaxed);
    let pings = counters.pings.load(Ordering::Relaxed);
    println!(
        "held {connected} connections for {} s: connected {}, lost {lost}, PINGRESPs {pings}",
        options.hold,
        connected - lost
    );
    for error in counters
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        println!("  {error}");
    }
    // Exiting closes every socket; the broker sees them go.
    std::process::exit(if lost == 0 { 0 } else { 1 });
}
