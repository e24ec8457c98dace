//! The driver that runs a STOMP [`Connection`] over a byte stream (TCP, or a WebSocket the
//! transport turned into one): one task reads and handles frames, consumer events and
//! durability notices, and hands encoded output to a writer task once per wake-up. It sends
//! heart-beats when the connection has been quiet, closes connections whose client stopped
//! sending them (twice the negotiated interval), allows 10 s for CONNECT, stops reading
//! publishers during a resource alarm, and closes every connection at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use junction_core::Broker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::connection::{Connection, Next};
use crate::settings::Settings;

/// How long a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first read buffer; it doubles when reads fill it.
const READ_CHUNK_MIN: usize = 1024;
/// The largest read buffer growth step.
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;
/// How long a closing connection waits for the disk to confirm what its receipts cover.
const RECEIPT_WAIT: Duration = Duration::from_secs(5);
/// How often timers are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Serves one STOMP connection until it closes. `shutdown` turning true closes it.
pub async fn serve<S>(
    stream: S,
    peer: Option<SocketAddr>,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (durable_tx, mut durable) = mpsc::unbounded_channel();
    let mut alarm = broker.alarm();
    let mut connection = Connection::new(broker, settings, peer, events_tx, durable_tx);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer_task = tokio::spawn(junction_transport::write_batches(writer, out_rx));

    let mut buffer = BytesMut::new();
    let mut read_chunk = READ_CHUNK_MIN;
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    connection.set_alarm(alarm.borrow_and_update().clone());
    let mut alarm_live = true;
    let mut shutting_down = *shutdown.borrow();

    loop {
        if connection.has_output() {
            last_write = Instant::now();
            if out_tx.send(connection.take_output()).is_err() {
                break;
            }
        }
        if shutting_down {
            break;
        }
        if buffer.capacity() - buffer.len() < read_chunk / 2 {
            buffer.reserve(read_chunk);
        }
        let spare = buffer.capacity() - buffer.len();
        let blocked = connection.is_blocked();
        tokio::select! {
            read = reader.read_buf(&mut buffer), if !blocked => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if n == spare {
                            read_chunk = (read_chunk * 2).min(READ_CHUNK_MAX);
                        }
                        last_read = Instant::now();
                        let next = connection.on_bytes(&mut buffer).await;
                        connection.flush_queue_acks().await;
                        if next == Next::Close {
                            if connection.has_output() {
                                let _ = out_tx.send(connection.take_output());
                            }
                            // A DISCONNECT's receipt may wait behind persistent SENDs still
                            // going to disk: wait (bounded) so every receipt owed is sent.
                            let deadline = Instant::now() + RECEIPT_WAIT;
                            while connection.has_pending_receipts() {
                                match tokio::time::timeout_at(deadline, durable.recv()).await {
                                    Ok(Some(ticket)) => connection.on_durable(ticket),
                                    _ => break,
                                }
                            }
                            if connection.has_output() {
                                let _ = out_tx.send(connection.take_output());
                            }
                            break;
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
                        break;
                    }
                    continue;
                }
                if blocked {
                    last_read = now;
                }
                let (send_every, expect_every) = connection.heartbeat;
                if expect_every > 0 && now - last_read > Duration::from_millis(expect_every * 2) {
                    tracing::info!(?peer, expect_every, "STOMP heart-beats missed; closing");
                    break;
                }
                if send_every > 0 && now - last_write >= Duration::from_millis(send_every) {
                    connection.send_heartbeat();
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
    }
    drop(out_tx);
    let _ = writer_task.await;
    connection.finish().await;
}
