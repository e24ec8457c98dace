//! The driver that runs a STOMP [`Connection`] over a byte stream (TCP, or a WebSocket the
//! transport turned into one). One task per connection reads and handles frames, consumer
//! events and durability notices, and writes the output as the socket takes it, once per
//! wake-up. It sends heart-beats when the connection has been quiet, closes connections whose
//! client stopped sending them (twice the negotiated interval), allows 10 s for CONNECT, stops
//! reading publishers during a resource alarm, and closes every connection at shutdown.
//!
//! The shape is the AMQP and MQTT drivers': the task's future points to the boxed [`Driver`],
//! buffers are freed while quiet, channels are made on first use, one timer is set to the next
//! deadline.

use std::future::{Future, poll_fn};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use junction_core::ledger::Seq;
use junction_core::persistence::Durability;
use junction_core::{Broker, ConsumerEvent};
use junction_transport::{
    Arrival, BrokerSignal, BrokerSignals, Conduit, Peer, Turns, broker_signals,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::connection::{Connection, Next};
use crate::settings::Settings;

/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;
/// How long a closing connection waits for the disk to confirm what its receipts cover.
const RECEIPT_WAIT: Duration = Duration::from_secs(5);
/// Output waiting beyond this stops reading and taking deliveries until the socket drains.
const OUTPUT_BACKLOG: usize = 1024 * 1024;
/// How long the last output may take to write when the connection closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The timer's deadline when nothing is due (no heart-beats).
const NOTHING_DUE: Duration = Duration::from_secs(3600);

/// Serves one STOMP connection until it closes. `shutdown` turning true closes it.
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
    /// The message store reports on a persistent SEND: (its place in the receipts' ledger,
    /// outcome).
    Durable((Seq, Durability)),
    /// The timer's deadline passed.
    Timer,
    /// The broker is shutting down or the resource alarm changed.
    Control(BrokerSignal),
    /// The queue that held this publisher by credit flow has caught up.
    FlowResumed,
    /// An operator asked to close the connection, with this reason.
    CloseRequested(String),
}

/// What is left to do after a wake-up's immediate work.
enum Step {
    Wait,
    HandleInput,
    FlushQueueAcks,
    End,
}

/// One connection's state between wake-ups.
struct Driver<S> {
    conduit: Conduit<S>,
    connection: Connection,
    shutdown: watch::Receiver<bool>,
    alarm: watch::Receiver<Option<String>>,
    control: BrokerSignals,
    timer: Pin<Box<Sleep>>,
    started: Instant,
    last_read: Instant,
    last_write: Instant,
    turns: Turns,
    /// The settings' CONNECT timeout.
    connect_timeout: Duration,
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
        let connect_timeout = settings.connect_timeout;
        let mut connection = Connection::new(broker, settings, peer.addr);
        connection.set_tls(peer.tls.clone());
        connection.set_login_ticket(peer.login_ticket.clone());
        connection.set_alarm(alarm.borrow_and_update().clone());
        let started = Instant::now();
        Self {
            conduit: Conduit::new(stream),
            connection,
            control: broker_signals(&shutdown, &alarm),
            shutdown,
            alarm,
            timer: Box::pin(tokio::time::sleep_until(started + connect_timeout)),
            connect_timeout,
            started,
            last_read: started,
            last_write: started,
            turns: Turns::default(),
        }
    }

    /// Runs until the connection ends.
    async fn run(&mut self) {
        loop {
            // Handled in a block of its own: nothing of the wake-up stays in the task's
            // state across the awaits below.
            let step = {
                let wake = poll_fn(|cx| self.poll_wake(cx)).await;
                self.connection.report(self.conduit.traffic());
                self.on_wake(wake)
            };
            match step {
                Step::Wait => {}
                Step::End => return,
                Step::FlushQueueAcks => self.flush_queue_acks().await,
                Step::HandleInput => {
                    let was_connected = self.connection.is_connected();
                    let next = Box::pin(self.connection.on_bytes(self.conduit.input())).await;
                    self.flush_queue_acks().await;
                    if next == Next::Close {
                        self.wait_for_receipts().await;
                        return;
                    }
                    if !was_connected && self.connection.is_connected() {
                        self.reset_timer();
                    }
                }
            }
        }
    }

    /// Does what a wake-up needs that does not wait, and says what is left to do.
    fn on_wake(&mut self, wake: Wake) -> Step {
        match wake {
            Wake::Gone => Step::End,
            Wake::Input => {
                self.last_read = Instant::now();
                Step::HandleInput
            }
            Wake::Event(event) => {
                self.connection.on_event(event);
                for _ in 0..EVENT_BATCH {
                    match self.connection.events.try_recv() {
                        Some(event) => self.connection.on_event(event),
                        None => break,
                    }
                }
                Step::FlushQueueAcks
            }
            Wake::Durable((seq, durability)) => {
                self.connection.settle(seq, durability);
                while let Some((seq, durability)) = self.connection.durable.try_recv() {
                    self.connection.settle(seq, durability);
                }
                match self.connection.release_receipts() {
                    Next::Close => Step::End,
                    Next::Continue => Step::Wait,
                }
            }
            Wake::Timer => {
                if self.on_timer() {
                    Step::End
                } else {
                    Step::Wait
                }
            }
            Wake::Control(BrokerSignal::Shutdown) => Step::End,
            Wake::CloseRequested(reason) => {
                self.connection.close_by_operator(reason);
                Step::End
            }
            Wake::FlowResumed => self.unblocked(),
            Wake::Control(BrokerSignal::AlarmChanged) => {
                let was_blocked = self.connection.is_blocked();
                self.connection
                    .set_alarm(self.alarm.borrow_and_update().clone());
                self.control = broker_signals(&self.shutdown, &self.alarm);
                if !was_blocked || self.connection.is_blocked() {
                    return Step::Wait;
                }
                self.unblocked()
            }
        }
    }

    /// Reading again after an alarm or credit flow held the connection.
    fn unblocked(&mut self) -> Step {
        if self.connection.is_blocked() {
            return Step::Wait;
        }
        // Heart-beats are expected again from now: the time not read was ours.
        self.last_read = Instant::now();
        self.reset_timer();
        // A SEND held back while blocked is handled now.
        if self.conduit.input().is_empty() {
            Step::Wait
        } else {
            Step::HandleInput
        }
    }

    /// Writes what it can, then waits for the first thing to handle.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let connection = &mut self.connection;
        let mut wrote = false;
        let output = || {
            let chunk = connection.has_output().then(|| connection.take_output());
            wrote |= chunk.is_some();
            chunk
        };
        if self.conduit.write_from(cx, output).is_err() {
            return Poll::Ready(Wake::Gone);
        }
        if wrote {
            self.last_write = Instant::now();
        }
        if let Poll::Ready(control) = self.control.as_mut().poll(cx) {
            return Poll::Ready(Wake::Control(control));
        }
        if let Poll::Ready(reason) = self.connection.poll_close_request(cx) {
            return Poll::Ready(Wake::CloseRequested(reason));
        }
        if let Poll::Ready(Some(ticket)) = self.connection.durable.poll_recv(cx) {
            return Poll::Ready(Wake::Durable(ticket));
        }
        if self.connection.poll_flow(cx).is_ready() {
            return Poll::Ready(Wake::FlowResumed);
        }
        if self.connection.output_len() <= OUTPUT_BACKLOG {
            let read = !self.connection.is_blocked();
            let events = &mut self.connection.events;
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

    async fn flush_queue_acks(&mut self) {
        Box::pin(self.connection.flush_queue_acks()).await;
    }

    /// A DISCONNECT's receipt may wait behind persistent SENDs still going to disk: wait
    /// (bounded) so every receipt owed is sent.
    async fn wait_for_receipts(&mut self) {
        let deadline = Instant::now() + RECEIPT_WAIT;
        while self.connection.has_pending_receipts() {
            let notice = poll_fn(|cx| self.connection.durable.poll_recv(cx));
            match tokio::time::timeout_at(deadline, notice).await {
                Ok(Some((seq, durability))) => {
                    if self.connection.on_durable(seq, durability) == Next::Close {
                        break;
                    }
                }
                _ => break,
            }
        }
    }

    /// Checks what was due: CONNECT in time, heart-beats missed, heart-beats to send. True
    /// when the connection must end.
    fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        if !self.connection.is_connected() {
            if now - self.started >= self.connect_timeout {
                tracing::info!(peer = ?self.connection.peer(), "no CONNECT in time");
                return true;
            }
            self.reset_timer();
            return false;
        }
        if self.connection.is_blocked() {
            // Not reading is our choice, not the client's silence.
            self.last_read = now;
        }
        let (send_every, expect_every) = self.connection.heartbeat;
        if expect_every > 0 && now - self.last_read > Duration::from_millis(expect_every * 2) {
            tracing::info!(peer = ?self.connection.peer(), expect_every, "STOMP heart-beats missed; closing");
            return true;
        }
        if send_every > 0 && now - self.last_write >= Duration::from_millis(send_every) {
            self.connection.send_heartbeat();
            // Written on the next poll; the next one is due an interval from now.
            self.last_write = now;
        }
        self.reset_timer();
        false
    }

    /// Sets the timer to the earliest deadline: CONNECT's, the next heart-beat to send, or
    /// when the client's heart-beats count as missed.
    fn reset_timer(&mut self) {
        let deadline = if !self.connection.is_connected() {
            self.started + self.connect_timeout
        } else {
            let (send_every, expect_every) = self.connection.heartbeat;
            let mut deadline = Instant::now() + NOTHING_DUE;
            if send_every > 0 {
                deadline = deadline.min(self.last_write + Duration::from_millis(send_every));
            }
            if expect_every > 0 {
                // Just past the limit, which is checked with "more than".
                deadline = deadline.min(
                    self.last_read
                        + Duration::from_millis(expect_every * 2)
                        + Duration::from_millis(1),
                );
            }
            deadline
        };
        self.timer.as_mut().reset(deadline);
    }

    /// Writes the last output and ends the connection's subscriptions.
    async fn finish(&mut self) {
        let last = self.connection.take_output();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conduit.close(last)).await;
        Box::pin(self.connection.finish()).await;
    }
}
