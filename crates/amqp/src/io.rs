//! The driver that runs a [`Connection`] over a byte stream. One task per connection reads,
//! handles frames and consumer events, and writes the output as the socket takes it: output
//! is written once per wake-up, never per frame. Heartbeats are sent when they are due and
//! missed ones close the connection, except while a resource alarm blocks the connection (it
//! is not read then; its heartbeats wait in the socket).
//!
//! An idle connection holds little: the task's future points to the boxed [`Driver`], the
//! buffers are freed while it is quiet, its channels exist once used, and one timer is set to
//! the next deadline instead of ticking.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use junction_core::{Broker, ChannelId, ConsumerEvent};
use junction_transport::{
    Arrival, BrokerSignal, BrokerSignals, Conduit, Peer, Turns, broker_signals,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::connection::{Connection, Next, State};
use crate::error::code;
use crate::settings::Settings;

/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;
/// Output waiting beyond this stops reading and taking deliveries until the socket drains.
const OUTPUT_BACKLOG: usize = 1024 * 1024;
/// How long the last output may take to write when the connection closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client that closed the connection (and got close-ok) has to close the socket,
/// as RabbitMQ's closing timeout; until then what it sends is dropped.
const PEER_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The timer's deadline when nothing is due (no heartbeats).
const NOTHING_DUE: Duration = Duration::from_secs(3600);

/// Serves one AMQP connection until it closes. `shutdown` turning true closes it with
/// connection-forced.
pub fn serve<S>(
    stream: S,
    peer: Peer,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Made before the future, so the task holds only the pointer, not the arguments.
    let mut driver = Box::new(Driver::new(stream, peer, broker, settings, shutdown));
    async move {
        driver.run().await;
        Box::pin(driver.finish()).await;
    }
}

/// What woke the connection.
enum Wake {
    /// Bytes arrived.
    Input,
    /// The peer closed the stream, or reading or writing failed.
    Gone,
    /// A consumer event.
    Event(ConsumerEvent),
    /// A persistent message published with confirms is on disk (or failed to get there).
    Durable(ChannelId, u64, junction_core::persistence::Durability),
    /// The timer's deadline passed.
    Timer,
    /// The broker is shutting down or the resource alarm changed.
    Control(BrokerSignal),
    /// The queue that held this publisher by credit flow has caught up.
    FlowResumed,
    /// An operator asked to close the connection, with this reason.
    CloseRequested(String),
}

/// One connection's state between wake-ups.
struct Driver<S> {
    conduit: Conduit<S>,
    connection: Connection,
    peer: Option<SocketAddr>,
    shutdown: watch::Receiver<bool>,
    alarm: watch::Receiver<Option<String>>,
    control: BrokerSignals,
    shutting_down: bool,
    timer: Pin<Box<Sleep>>,
    started: Instant,
    last_read: Instant,
    last_heartbeat_sent: Instant,
    closing_since: Option<Instant>,
    turns: Turns,
    /// The settings' handshake timeout.
    handshake_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    fn new(
        stream: S,
        peer: Peer,
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut alarm = broker.alarm();
        let handshake_timeout = settings.handshake_timeout;
        let mut connection = Connection::new(broker, settings, peer.addr);
        connection.set_tls(peer.tls.clone());
        connection.set_login_ticket(peer.login_ticket.clone());
        let peer = peer.addr;
        connection.set_alarm(alarm.borrow_and_update().clone());
        let started = Instant::now();
        Self {
            conduit: Conduit::new(stream),
            connection,
            peer,
            control: broker_signals(&shutdown, &alarm),
            shutdown,
            alarm,
            shutting_down: false,
            timer: Box::pin(tokio::time::sleep_until(started + handshake_timeout)),
            handshake_timeout,
            started,
            last_read: started,
            last_heartbeat_sent: started,
            closing_since: None,
            turns: Turns::default(),
        }
    }

    /// Runs until the connection is closed or gone.
    async fn run(&mut self) {
        loop {
            if self.shutting_down && self.closing_since.is_none() {
                Box::pin(self.connection.close(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ))
                .await;
            }
            match self.connection.state() {
                State::Closed => return,
                State::Closing if self.closing_since.is_none() => {
                    let now = Instant::now();
                    self.closing_since = Some(now);
                    self.timer.as_mut().reset(now + self.handshake_timeout);
                }
                _ => {}
            }
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            self.connection.report(self.conduit.traffic());
            match wake {
                Wake::Gone => return,
                Wake::Input => {
                    self.last_read = Instant::now();
                    if self.handle_input().await {
                        return;
                    }
                }
                Wake::Event(event) => {
                    self.connection.on_event(event);
                    for _ in 0..EVENT_BATCH {
                        match self.connection.events().try_recv() {
                            Some(event) => self.connection.on_event(event),
                            None => break,
                        }
                    }
                }
                Wake::Durable(channel, seq, durability) => {
                    self.connection.settle_durable(channel, seq, durability);
                    while let Some((channel, seq, durability)) =
                        self.connection.durable_notices().try_recv()
                    {
                        self.connection.settle_durable(channel, seq, durability);
                    }
                    self.connection.flush_confirms();
                }
                Wake::Timer => {
                    if self.on_timer() {
                        return;
                    }
                }
                Wake::Control(BrokerSignal::Shutdown) => self.shutting_down = true,
                Wake::Control(BrokerSignal::AlarmChanged) => {
                    let was_blocked = self.connection.is_blocked();
                    self.connection
                        .set_alarm(self.alarm.borrow_and_update().clone());
                    self.control = broker_signals(&self.shutdown, &self.alarm);
                    if was_blocked && self.resumed().await {
                        return;
                    }
                }
                Wake::FlowResumed => {
                    if self.resumed().await {
                        return;
                    }
                }
                Wake::CloseRequested(reason) => {
                    if self.closing_since.is_none() {
                        Box::pin(self.connection.close(code::CONNECTION_FORCED, &reason)).await;
                    }
                }
            }
        }
    }

    /// Reading again after an alarm or credit flow held the connection, unless something
    /// still holds it; true when the connection must end.
    async fn resumed(&mut self) -> bool {
        if self.connection.is_blocked() {
            return false;
        }
        // Heartbeats are expected again from now: the time not read was ours.
        self.last_read = Instant::now();
        self.reset_timer();
        // A publish held back while blocked is handled now.
        !self.conduit.input().is_empty() && self.handle_input().await
    }

    /// Handles the whole frames read; true when the connection must end.
    async fn handle_input(&mut self) -> bool {
        let heartbeat = self.connection.heartbeat();
        let next = Box::pin(self.connection.on_bytes(self.conduit.input())).await;
        if next == Next::Close {
            return true;
        }
        if self.connection.heartbeat() != heartbeat {
            self.reset_timer();
        }
        false
    }

    /// Writes what it can, then waits for the first thing to handle.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let connection = &mut self.connection;
        let output = || connection.has_output().then(|| connection.take_output());
        if self.conduit.write_from(cx, output).is_err() {
            return Poll::Ready(Wake::Gone);
        }
        if !self.shutting_down
            && let Poll::Ready(control) = self.control.as_mut().poll(cx)
        {
            return Poll::Ready(Wake::Control(control));
        }
        if let Poll::Ready(reason) = self.connection.poll_close_request(cx) {
            return Poll::Ready(Wake::CloseRequested(reason));
        }
        if let Poll::Ready(Some((channel, seq, durability))) =
            self.connection.durable_notices().poll_recv(cx)
        {
            return Poll::Ready(Wake::Durable(channel, seq, durability));
        }
        if self.connection.poll_flow(cx).is_ready() {
            return Poll::Ready(Wake::FlowResumed);
        }
        if self.connection.output_len() <= OUTPUT_BACKLOG {
            let read = !self.connection.is_blocked();
            let events = self.connection.events();
            match self.turns.poll(cx, &mut self.conduit, read, events) {
                Some(Arrival::Input) => return Poll::Ready(Wake::Input),
                Some(Arrival::Gone) => return Poll::Ready(Wake::Gone),
                Some(Arrival::Event(event)) => return Poll::Ready(Wake::Event(event)),
                None => {}
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        // Going to sleep: a quiet connection keeps no output buffer either.
        if self.conduit.is_quiet() && !self.connection.has_output() {
            self.connection.release_output();
        }
        Poll::Pending
    }

    /// Checks what was due: the handshake, the reply to our connection.close, heartbeats to
    /// send and heartbeats missed. True when the connection must end.
    fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        if let Some(since) = self.closing_since
            && now - since >= self.handshake_timeout
        {
            return true;
        }
        if !matches!(self.connection.state(), State::Open | State::Closing)
            && now - self.started >= self.handshake_timeout
        {
            tracing::info!(peer = ?self.peer, "handshake timed out");
            return true;
        }
        let heartbeat = u64::from(self.connection.heartbeat());
        if heartbeat > 0 {
            let interval = Duration::from_secs(heartbeat);
            if self.connection.is_blocked() {
                // Not reading is our choice, not the client's silence: as RabbitMQ pauses its
                // heartbeat monitor, a blocked publisher is not timed out (ours still go out).
                self.last_read = now;
            }
            if now - self.last_read > interval * 2 {
                tracing::info!(peer = ?self.peer, "missed heartbeats from client, timeout: {heartbeat}s");
                return true;
            }
            if now - self.last_heartbeat_sent >= interval / 2 {
                self.connection.send_heartbeat();
                self.last_heartbeat_sent = now;
            }
        }
        self.reset_timer();
        false
    }

    /// Sets the timer to the earliest deadline: the handshake's or the close's end, the next
    /// heartbeat to send, or when the client's heartbeats count as missed.
    fn reset_timer(&mut self) {
        let mut deadline = Instant::now() + NOTHING_DUE;
        if let Some(since) = self.closing_since {
            deadline = deadline.min(since + self.handshake_timeout);
        }
        if !matches!(self.connection.state(), State::Open | State::Closing) {
            deadline = deadline.min(self.started + self.handshake_timeout);
        }
        let heartbeat = u64::from(self.connection.heartbeat());
        if heartbeat > 0 {
            let interval = Duration::from_secs(heartbeat);
            deadline = deadline
                .min(self.last_heartbeat_sent + interval / 2)
                // Just past the limit, which is checked with "more than".
                .min(self.last_read + interval * 2 + Duration::from_millis(1));
        }
        self.timer.as_mut().reset(deadline);
    }

    /// Writes the last output and lets the connection's queues and consumers go.
    async fn finish(&mut self) {
        let last = self.connection.take_output();
        if self.connection.peer_closes() {
            // Until the client closes, the timeout passes or the broker shuts down.
            let mut shutdown = self.shutdown.clone();
            let closed =
                tokio::time::timeout(PEER_CLOSE_TIMEOUT, self.conduit.close_after_peer(last));
            tokio::select! {
                _ = closed => {}
                _ = shutdown.wait_for(|down| *down) => {}
            }
        } else {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conduit.close(last)).await;
        }
        Box::pin(self.connection.cleanup()).await;
    }
}
