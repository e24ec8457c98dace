//! Many idle MQTT connections stay up: 2000 rumqttc clients with a keep-alive of 2 s connect,
//! then stay idle for 5 s (more than twice the broker's 1.5 x keep-alive limit) sending only
//! PINGREQs. None may be refused or dropped, and every one must have had PINGRESPs. The
//! assertions are on counts, not timings. `bench/mqtt_idle.sh` is the 10,000-connection
//! version with memory figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use junction_tests::Broker;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, NetworkOptions, Packet};
use tokio::sync::{Semaphore, mpsc};

const CONNECTIONS: usize = 2000;
const KEEP_ALIVE: Duration = Duration::from_secs(2);
const HOLD: Duration = Duration::from_secs(5);
/// Connection attempts in flight at once.
const CONCURRENCY: usize = 100;
/// For all the connections together.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// What the clients saw.
#[derive(Default)]
struct Counters {
    lost: AtomicUsize,
    pings: AtomicU64,
    /// Clients that got at least one PINGRESP.
    pinged: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn note(&self, error: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 5 {
            errors.push(error);
        }
    }
}

/// Raises this process's soft limit on open files to the hard limit (the broker it starts
/// inherits it): both ends need a descriptor per connection.
fn raise_nofile_limit() -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

async fn idle_client(
    n: usize,
    addr: std::net::SocketAddr,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    connected: mpsc::UnboundedSender<bool>,
) {
    let mut options = MqttOptions::new(format!("idle-{n}"), addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_credentials("guest", "guest")
        .set_clean_session(true);
    // Dropping the client would end the event loop: it lives as long as the task.
    let (_client, mut eventloop) = AsyncClient::new(options, 1);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_DEADLINE.as_secs());
    eventloop.set_network_options(network);

    let permit = permits.acquire_owned().await;
    let first = eventloop.poll().await;
    drop(permit);
    match first {
        Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
            let _ = connected.send(true);
        }
        other => {
            counters.note(format!("client {n}: {other:?}"));
            let _ = connected.send(false);
            return;
        }
    }
    let mut pinged = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PingResp)) => {
                counters.pings.fetch_add(1, Ordering::Relaxed);
                if !pinged {
                    pinged = true;
                    counters.pinged.fetch_add(1, Ordering::Relaxed);
                }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_survive_their_keep_alive() {
    let limit = raise_nofile_limit();
    assert!(
        limit >= CONNECTIONS as u64 + 200,
        "the open-files limit ({limit}) is too low for {CONNECTIONS} connections"
    );
    let broker = tokio::task::spawn_blocking(Broker::start_mqtt)
        .await
        .expect("start");
    let addr = broker.mqtt_addr();

    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let (tx, mut results) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        tasks.spawn(idle_client(
            n,
            addr,
            permits.clone(),
            counters.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    let (mut connected, mut refused) = (0, 0);
    while connected + refused < CONNECTIONS {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(true)) => connected += 1,
            Ok(Some(false)) => refused += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let errors = || counters.errors.lock().unwrap().clone();
    assert_eq!(
        (connected, refused),
        (CONNECTIONS, 0),
        "every client gets a CONNACK within {CONNECT_DEADLINE:?}; errors: {:?}",
        errors()
    );

    // Idle: only PINGREQs for the broker to see. Without them each connection would be
    // closed after 1.5 x 2 s.
    tokio::time::sleep(HOLD).await;
    let lost = counters.lost.load(Ordering::Relaxed);
    let pinged = counters.pinged.load(Ordering::Relaxed);
    let pings = counters.pings.load(Ordering::Relaxed);
    tasks.abort_all();
    assert_eq!(lost, 0, "connections lost while idle: {:?}", errors());
    assert_eq!(
        pinged, CONNECTIONS,
        "every connection had PINGRESPs ({pings} in all)"
    );
    drop(broker);
}
