//! The driver that runs a [`Connection`] over a byte stream: one task reads, handles frames and
//! consumer events, and hands encoded output to a writer task in batches. Output is written
//! once per wake-up, never per frame. Heartbeats are sent when the connection has been quiet and
//! missed ones close it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use junction_core::Broker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::connection::{Connection, Next, State};
use crate::error::code;
use crate::settings::Settings;

/// How long a client has to finish the handshake, and to answer a server's connection.close.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;

/// Serves one AMQP connection until it closes. `shutdown` turning true closes it with
/// connection-forced.
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

    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut closing_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heartbeat_sent = Instant::now();
    let mut shutting_down = *shutdown.borrow();
    connection.set_alarm(alarm.borrow_and_update().clone());
    let mut alarm_live = true;

    loop {
        if shutting_down && closing_since.is_none() {
            connection
                .close(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                )
                .await;
        }
        if connection.has_output() && out_tx.send(connection.take_output()).is_err() {
            break;
        }
        match connection.state() {
            State::Closed => break,
            State::Closing if closing_since.is_none() => closing_since = Some(Instant::now()),
            _ => {}
        }
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(READ_CHUNK);
        }
        let blocked = connection.is_blocked();
        tokio::select! {
            read = reader.read_buf(&mut buffer), if !blocked => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        last_read = Instant::now();
                        if connection.on_bytes(&mut buffer).await == Next::Close {
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
            }
            Some((channel, seq)) = durable.recv() => {
                connection.on_durable(channel, seq);
                while let Ok((channel, seq)) = durable.try_recv() {
                    connection.on_durable(channel, seq);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(since) = closing_since && now - since > HANDSHAKE_TIMEOUT {
                    break;
                }
                if !matches!(connection.state(), State::Open | State::Closing)
                    && now - started > HANDSHAKE_TIMEOUT
                {
                    tracing::info!(?peer, "handshake timed out");
                    break;
                }
                let heartbeat = u64::from(connection.heartbeat());
                if heartbeat > 0 {
                    let interval = Duration::from_secs(heartbeat);
                    if now - last_read > interval * 2 {
                        tracing::info!(?peer, "missed heartbeats from client, timeout: {heartbeat}s");
                        break;
                    }
                    if now - last_heartbeat_sent >= interval / 2 {
                        connection.send_heartbeat();
                        last_heartbeat_sent = now;
                    }
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
    connection.cleanup().await;
    let _ = writer_task.await;
}
