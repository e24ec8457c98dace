//! The MQTT connection state machine: the fuzz input is everything a client sends (CONNECT,
//! packets, garbage), written to `junction_mqtt::serve` over an in-memory pipe on a
//! fresh in-memory broker, in a current-thread runtime on paused time (timers fire as soon as
//! nothing else can run: fast and deterministic). Then the client side closes, the output is
//! drained and the broker is checked:
//!
//! - the connection's task ends, and the broker lists no connection;
//! - every remaining queue (a persistent session's) has no consumer and no unacknowledged
//!   message (what the connection held went back), no owner (a clean session's queue is
//!   deleted with its connection), and its counters agree with its actor's statistics;
//! - the output stays bounded (a few bytes of output per byte of input, plus deliveries).

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use junction_core::auth::{PasswordHash, UserRecord, VhostPermissions};
use junction_core::{Authorizer, Broker, BrokerConfig, ExchangeTypeRegistry, InternalUsers};
use junction_mqtt::{Mqtt, Settings};
use junction_transport::Peer;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longer than any of the connection's timers (CONNECT, keep-alive, close), in paused time.
const WAIT: Duration = Duration::from_secs(3600);

fn broker() -> Arc<Broker> {
    // RabbitMQ's SHA-256 hash, not Argon2: an Argon2 check per run would be most of the
    // run, and it runs on the blocking pool, outside the paused clock.
    let users = InternalUsers::new();
    let mut guest = UserRecord::new(PasswordHash::sha256("guest"), vec!["administrator".into()]);
    guest
        .permissions
        .insert("/".into(), VhostPermissions::all());
    users.put_user("guest", guest);
    let auth = Authorizer::new(vec![Arc::new(users)], Duration::from_secs(5));
    Broker::new(
        BrokerConfig::default(),
        Arc::new(ExchangeTypeRegistry::with_builtins()),
        auth,
    )
}

async fn run(data: &[u8]) {
    let broker = broker();
    let settings = Settings {
        max_packet_size: 256 * 1024,
        park_idle_connections: false,
        ..Settings::default()
    };
    let mqtt = Mqtt::new(broker.clone(), settings, None);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = Peer::plain(([127, 0, 0, 1], 40000).into());
    let connection = tokio::spawn(junction_mqtt::serve(server, peer, mqtt));
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = async move {
        let _ = writer.write_all(data).await;
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    };
    let ((), output) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the connection ends once its client has closed");
    tokio::time::timeout(WAIT, connection)
        .await
        .expect("the connection's task ends")
        .expect("the connection's task does not panic");
    assert!(
        output <= 64 * 1024 + 64 * data.len(),
        "{output} bytes of output for {} of input",
        data.len()
    );
    // Let the queues' actors take in what the closing connection told them.
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert!(
        broker.connections().snapshots().is_empty(),
        "connections left: {:?}",
        broker.connections().snapshots()
    );
    for vhost in broker.vhosts() {
        for queue in vhost.queues() {
            let name = queue.name().to_owned();
            assert_eq!(queue.owner(), None, "queue {name} outlived its owner");
            let Ok(stats) = queue.stats().await else {
                continue;
            };
            assert_eq!(stats.consumers, 0, "queue {name} keeps a consumer");
            assert_eq!(stats.unacked, 0, "queue {name} keeps unacked messages");
            let tally = queue.counters();
            assert_eq!(tally.ready, u64::from(stats.ready), "queue {name}: ready");
            assert_eq!(tally.unacked, 0, "queue {name}: unacked count");
            assert_eq!(tally.consumers, 0, "queue {name}: consumer count");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(run(data));
});
