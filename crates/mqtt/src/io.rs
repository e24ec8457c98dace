//! The driver that runs an MQTT [`Connection`] over a byte stream (TCP, or a WebSocket the
//! transport turned into one): one task reads and handles packets, consumer events and
//! durability notices, and hands encoded output to a writer task once per wake-up. It enforces
//! the keep-alive (1.5 times the client's interval), the time allowed for CONNECT, takeover by
//! another connection, resource alarms (publishers are not read) and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::connection::{Connection, Next};
use crate::settings::Mqtt;

/// How long a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first read buffer: idle devices are most connections, so they start small.
const READ_CHUNK_MIN: usize = 512;
/// The largest read buffer growth step, reached by doubling when reads fill the buffer.
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;

/// Serves one MQTT connection until it closes. `shutdown` turning true closes it.
pub async fn serve<S>(
    stream: S,
    peer: Option<SocketAddr>,
    mqtt: Arc<Mqtt>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (durable_tx, mut durable) = mpsc::unbounded_channel();
    let mut alarm = mqtt.broker.alarm();
    let mut connection = Connection::new(mqtt, peer, events_tx, durable_tx);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer_task = tokio::spawn(junction_transport::write_batches(writer, out_rx));

    let mut buffer = BytesMut::new();
    let mut read_chunk = READ_CHUNK_MIN;
    let started = Instant::now();
    let mut last_packet = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut takeover: Option<watch::Receiver<bool>> = None;
    connection.set_alarm(alarm.borrow_and_update().clone());
    let mut alarm_live = true;
    let mut shutting_down = *shutdown.borrow();

    let graceful = loop {
        if connection.has_output() && out_tx.send(connection.take_output()).is_err() {
            break false;
        }
        if shutting_down {
            // MQTT 3.1.1 has no server-side DISCONNECT: the socket is closed. A shutdown is
            // not the client's failure, so its will is not published.
            break true;
        }
        if takeover.is_none() {
            takeover = connection.takeover_signal();
        }
        if buffer.capacity() - buffer.len() < read_chunk / 2 {
            buffer.reserve(read_chunk);
        }
        let spare = buffer.capacity() - buffer.len();
        let blocked = connection.is_blocked();
        tokio::select! {
            read = reader.read_buf(&mut buffer), if !blocked => {
                match read {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => {
                        if n == spare {
                            read_chunk = (read_chunk * 2).min(READ_CHUNK_MAX);
                        }
                        last_packet = Instant::now();
                        let next = connection.on_bytes(&mut buffer).await;
                        connection.flush_queue_acks().await;
                        if let Next::Close { graceful } = next {
                            if connection.has_output() {
                                let _ = out_tx.send(connection.take_output());
                            }
                            break graceful;
                        }
                    }
                }
            }
            Some(event) = events.recv() => {
                connection.on_event(event);
                for _ in 0..EVENT_BATCH {
                    match events.try_recv() {
                        Ok(event) => connection.on_event(event),
                        Err(_) => break,
                    }
                }
                connection.flush_queue_acks().await;
            }
            Some(ticket) = durable.recv() => {
                let mut latest = ticket;
                while let Ok(ticket) = durable.try_recv() {
                    latest = latest.max(ticket);
                }
                connection.on_durable(latest);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if !connection.is_connected() {
                    if now - started > CONNECT_TIMEOUT {
                        tracing::info!(?peer, "no CONNECT in time");
                        break true;
                    }
                    continue;
                }
                if connection.is_blocked() {
                    // Not reading is our choice, not the client's silence.
                    last_packet = now;
                }
                let keep_alive = connection.keep_alive();
                if keep_alive > 0 && now - last_packet > Duration::from_millis(u64::from(keep_alive) * 1500) {
                    tracing::info!(?peer, keep_alive, "MQTT keep-alive expired");
                    break false;
                }
            }
            kicked = wait_true(&mut takeover) => {
                if kicked {
                    tracing::info!(?peer, "session taken over by a new connection");
                    break false;
                }
            }
            changed = alarm.changed(), if alarm_live => {
                if changed.is_ok() {
                    connection.set_alarm(alarm.borrow_and_update().clone());
                } else {
                    alarm_live = false;
                    connection.set_alarm(None);
                }
            }
            changed = shutdown.changed(), if !shutting_down => {
                shutting_down = changed.is_err() || *shutdown.borrow();
            }
        }
    };
    drop(out_tx);
    let _ = writer_task.await;
    connection.finish(graceful).await;
}

/// Resolves with true when the signal turns true; never when there is none (or it is gone).
async fn wait_true(signal: &mut Option<watch::Receiver<bool>>) -> bool {
    match signal {
        Some(receiver) => {
            let kicked = receiver.wait_for(|kicked| *kicked).await.is_ok();
            if !kicked {
                std::future::pending::<()>().await;
            }
            true
        }
        None => std::future::pending().await,
    }
}
