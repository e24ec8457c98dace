//! The driver that runs an MQTT [`Connection`] over a byte stream (TCP, or a WebSocket the
//! transport turned into one). One task per connection reads and handles packets, consumer
//! events and durability notices, and writes the output as the socket takes it. It enforces
//! the keep-alive (1.5 times the client's interval), the time allowed for CONNECT, takeover by
//! another connection, resource alarms (publishers are not read) and shutdown.
//!
//! Idle devices are most connections, so a quiet one holds little: buffers are freed between
//! packets, channels exist once used, one timer is set to the next deadline instead of
//! ticking, and takeover and shutdown arrive through one small
//! [`Signal`](crate::signal::Signal) rather than watch channels. A connected TCP connection
//! with nothing to do leaves its task altogether: it parks in the [`ParkingLot`] as its bare
//! [`Connection`] and comes back in a new task when bytes arrive, its keep-alive runs out, or
//! anything it waits on (deliveries, disk notices, takeover, shutdown) wakes it.

use std::future::{Future, poll_fn};
use std::io::Read;
use std::net::TcpStream as StdTcpStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use junction_core::ConsumerEvent;
use junction_core::ledger::Seq;
use junction_core::persistence::Durability;
use junction_transport::{Arrival, Conduit, Detach, ParkingLot, Peer, Resume, Spot, Turns};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::connection::{Connection, Next};
use crate::settings::Mqtt;
use crate::signal::Close;

/// A connection resumed this soon after parking is busy: it lingers before parking again.
const BUSY: Duration = Duration::from_millis(100);
/// How long a lingering connection must be quiet before it parks.
const LINGER: Duration = Duration::from_secs(1);
/// The most a resumed connection reads before its socket is back in the runtime.
const RESUME_READ: usize = 512;
/// Consumer events handled before the connection writes and reads again.
const EVENT_BATCH: usize = 512;
/// Output waiting beyond this stops reading and taking deliveries until the socket drains.
const OUTPUT_BACKLOG: usize = 256 * 1024;
/// How long the last output may take to write when the connection closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The timer's deadline when nothing is due (no keep-alive).
const NOTHING_DUE: Duration = Duration::from_secs(3600);

/// Serves one MQTT connection until it closes. [`Mqtt::close_connections_on`] closes it when
/// the broker shuts down.
pub fn serve<S>(stream: S, peer: Peer, mqtt: Arc<Mqtt>) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Detach + Send + Unpin + 'static,
{
    // Made before the future, so the task holds only the pointer, not the arguments.
    let mut connection = Box::new(Connection::new(mqtt, peer.addr));
    connection.set_pre_login(peer);
    drive(Box::new(Driver::new(stream, connection)))
}

/// Runs the connection until it closes or parks.
async fn drive<S>(mut driver: Box<Driver<S>>)
where
    S: AsyncRead + AsyncWrite + Detach + Send + Unpin + 'static,
{
    match driver.run().await {
        Ended::Closed(graceful) => Box::pin(driver.finish(graceful)).await,
        Ended::Parking(lot, spot) => {
            if let Err(mut connection) = (*driver).park(&lot, &spot) {
                Box::pin(connection.finish(false)).await;
            }
        }
    }
}

/// A parked connection comes back over its socket, in a new task.
impl Resume for Connection {
    fn resume(self: Box<Self>, socket: StdTcpStream, runtime: &Handle, parked_for: Duration) {
        // Whoever woke the connection (a queue, another connection's takeover, shutdown)
        // only spawns: the socket work happens in the connection's new task.
        runtime.spawn(resume(self, socket, parked_for));
    }
}

/// A parked connection's new task.
async fn resume(connection: Box<Connection>, socket: StdTcpStream, parked_for: Duration) {
    match resumed_driver(connection, socket, parked_for) {
        Ok(driver) => drive(driver).await,
        Err(mut connection) => Box::pin(connection.finish(false)).await,
    }
}

/// The driver of a resumed connection. What woke it is usually bytes: they are read now,
/// before anything else (the keep-alive timer) is looked at, and before the runtime's reactor
/// would report them. (A function of its own, so the read buffer is not part of the task.)
fn resumed_driver(
    connection: Box<Connection>,
    socket: StdTcpStream,
    parked_for: Duration,
) -> Result<Box<Driver<TcpStream>>, Box<Connection>> {
    let mut scratch = [0u8; RESUME_READ];
    let read = (&socket).read(&mut scratch);
    let stream = match TcpStream::from_std(socket) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(peer = ?connection.peer(), %error, "cannot resume a parked MQTT connection");
            return Err(connection);
        }
    };
    let mut driver = Box::new(Driver::new(stream, connection));
    driver.first = match read {
        Ok(0) => Some(Wake::Gone),
        Ok(n) => {
            driver.conduit.input().extend_from_slice(&scratch[..n]);
            driver.conduit.note_read(n);
            // A full read may have left more: the reactor must report it before the
            // connection parks again.
            driver.settled = n < RESUME_READ;
            Some(Wake::Input)
        }
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(_) => Some(Wake::Gone),
    };
    if parked_for < BUSY {
        // Back at once: a busy connection (a publisher between bursts) stays in its task
        // until it has been quiet a while.
        driver.lingering_since = Some(Instant::now());
    }
    Ok(driver)
}

/// How [`Driver::run`] ended.
enum Ended {
    /// The connection closes; true when gracefully (DISCONNECT, or a broker shutdown: neither
    /// publishes the will).
    Closed(bool),
    /// The connection is quiet and has a spot reserved in the lot.
    Parking(ParkingLot, Arc<Spot>),
}

/// What woke the connection.
enum Wake {
    /// Bytes arrived.
    Input,
    /// The peer closed the stream, or reading or writing failed.
    Gone,
    /// A consumer event.
    Event(ConsumerEvent),
    /// The message store reports on a QoS 1/2 publication: (its place in the ledger, outcome).
    Durable((Seq, Durability)),
    /// The timer's deadline passed.
    Timer,
    /// The connection must close: the broker is shutting down or the session was taken over.
    Close(Close),
    /// The resource alarm that blocks this publisher changed.
    AlarmChanged,
    /// The queue that held this publisher by credit flow has caught up.
    FlowResumed,
    /// Nothing to do and nothing held: the connection may park.
    Quiet,
}

/// What is left to do after a wake-up's immediate work.
enum Step {
    /// Nothing: wait for the next wake-up.
    Wait,
    /// Handle the packets read.
    HandleInput,
    /// Tell the session's queue which deliveries are settled.
    FlushQueueAcks,
    /// Close; true when gracefully (no will).
    End(bool),
}

type AlarmWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One connection's state between wake-ups.
struct Driver<S> {
    conduit: Conduit<S>,
    connection: Box<Connection>,
    alarm: watch::Receiver<Option<String>>,
    /// Waits for the alarm to change while it blocks this connection (only then).
    alarm_wait: Option<AlarmWait>,
    timer: Pin<Box<Sleep>>,
    /// Where the connection parks when quiet (TCP only).
    lot: Option<ParkingLot>,
    /// False while bytes may wait on the socket that the runtime's reactor has not reported
    /// yet (a resumed connection whose first read filled its buffer): it does not park
    /// until they are read.
    settled: bool,
    /// What a resumed connection handles before anything else.
    first: Option<Wake>,
    /// For a busy connection: when it last had something to do (it parks once that is
    /// [`LINGER`] ago). None: it parks as soon as it is quiet.
    lingering_since: Option<Instant>,
    turns: Turns,
}

impl<S: AsyncRead + AsyncWrite + Detach + Unpin> Driver<S> {
    /// A driver for a new connection, or one back from the parking lot.
    fn new(stream: S, mut connection: Box<Connection>) -> Self {
        let mqtt = connection.mqtt();
        let mut alarm = mqtt.broker.alarm();
        connection.set_alarm(alarm.borrow_and_update().clone());
        let lot = if stream.can_detach() {
            mqtt.parking_lot().cloned()
        } else {
            None
        };
        let (received, sent) = connection.signal.traffic();
        let traffic = junction_transport::Traffic {
            received,
            sent,
            ..Default::default()
        };
        let mut driver = Self {
            conduit: Conduit::resuming(stream, traffic),
            connection,
            alarm,
            alarm_wait: None,
            timer: Box::pin(tokio::time::sleep_until(
                Instant::now() + mqtt.settings.connect_timeout,
            )),
            lot,
            settled: true,
            first: None,
            lingering_since: None,
            turns: Turns::default(),
        };
        if driver.connection.is_connected() {
            // Back from the lot: the alarm may have been raised while it was parked.
            driver.reset_keep_alive_timer();
            driver.await_alarm_if_blocked();
        }
        driver
    }

    /// Runs until the connection ends or parks.
    async fn run(&mut self) -> Ended {
        loop {
            // The wake-up is handled in a block of its own: nothing of it (a consumer event is
            // 64 bytes) stays in the task's state across the awaits below.
            let step = {
                let polled = match self.first.take() {
                    Some(wake) => wake,
                    None => {
                        let wake = poll_fn(|cx| self.poll_wake(cx, true)).await;
                        self.settled = true;
                        wake
                    }
                };
                let wake = match polled {
                    Wake::Quiet => match self.prepare_to_park() {
                        Ok(parking) => return parking,
                        Err(wake) => wake,
                    },
                    wake => wake,
                };
                self.on_wake(wake)
            };
            let ended = match step {
                Step::Wait => None,
                Step::End(graceful) => Some(graceful),
                Step::FlushQueueAcks => {
                    self.flush_queue_acks().await;
                    None
                }
                Step::HandleInput => {
                    let was_connected = self.connection.is_connected();
                    let ended = self.handle_input().await;
                    if !was_connected && self.connection.is_connected() {
                        self.reset_keep_alive_timer();
                    }
                    ended
                }
            };
            if let Some(graceful) = ended {
                return Ended::Closed(graceful);
            }
            self.connection.report(self.conduit.traffic(), false);
            self.await_alarm_if_blocked();
        }
    }

    /// Does what a wake-up needs that does not wait, and says what is left to do.
    fn on_wake(&mut self, wake: Wake) -> Step {
        if let Some(since) = &mut self.lingering_since
            && matches!(wake, Wake::Input | Wake::Event(_) | Wake::Durable(_))
        {
            *since = Instant::now();
        }
        match wake {
            Wake::Gone => Step::End(false),
            Wake::Quiet => Step::Wait,
            Wake::Input => {
                self.connection.last_packet = Instant::now();
                self.refresh_alarm();
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
                if self.connection.release_acks() {
                    Step::End(false)
                } else {
                    Step::Wait
                }
            }
            Wake::Timer => match self.on_timer() {
                Some(graceful) => Step::End(graceful),
                None => Step::Wait,
            },
            Wake::Close(Close::Shutdown) => {
                // MQTT 3.1.1 has no server-side DISCONNECT: the socket is closed. A shutdown
                // is not the client's failure, so its will is not published.
                Step::End(true)
            }
            Wake::Close(Close::Kicked) => {
                tracing::info!(peer = ?self.connection.peer(), "session taken over by a new connection");
                Step::End(false)
            }
            Wake::Close(Close::Forced) => {
                tracing::info!(peer = ?self.connection.peer(), "connection closed by an operator");
                Step::End(false)
            }
            Wake::AlarmChanged => {
                self.alarm_wait = None;
                let was_blocked = self.connection.is_blocked();
                self.refresh_alarm();
                self.resumed(was_blocked)
            }
            Wake::FlowResumed => self.resumed(true),
        }
    }

    /// What follows a change of what blocks the connection (an alarm, credit flow).
    fn resumed(&mut self, was_blocked: bool) -> Step {
        if was_blocked && !self.connection.is_blocked() {
            // The keep-alive counts again from now: the time not read was ours.
            self.connection.last_packet = Instant::now();
        }
        // Input held back while blocked is handled now.
        if self.connection.is_blocked() || self.conduit.input().is_empty() {
            Step::Wait
        } else {
            Step::HandleInput
        }
    }

    /// While the alarm blocks this connection, waits for it to change (the future exists only
    /// then).
    fn await_alarm_if_blocked(&mut self) {
        if self.connection.blocked_by_alarm() && self.alarm_wait.is_none() {
            let mut alarm = self.alarm.clone();
            self.alarm_wait = Some(Box::pin(async move {
                if alarm.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }));
        }
    }

    /// Reserves a spot in the lot and polls everything the connection waits on once more,
    /// with the spot's waker: if nothing is ready, whatever happens next resumes the parked
    /// connection; if something is, the spot is given back and that is handled here.
    fn prepare_to_park(&mut self) -> Result<Ended, Wake> {
        let Some(lot) = self.lot.clone() else {
            return Err(Wake::Quiet);
        };
        let deadline = self.keep_alive_deadline().map(Instant::into_std);
        let spot = lot.reserve(deadline);
        let waker = spot.waker();
        match self.poll_wake(&mut Context::from_waker(&waker), false) {
            Poll::Pending => Ok(Ended::Parking(lot, spot)),
            Poll::Ready(wake) => {
                lot.cancel(&spot);
                Err(wake)
            }
        }
    }

    /// Leaves the task: the socket and the bare connection go to the lot. The connection is
    /// handed back if its socket cannot leave the runtime (it is then gone).
    fn park(self, lot: &ParkingLot, spot: &Arc<Spot>) -> Result<(), Box<Connection>> {
        let Driver {
            conduit,
            connection,
            ..
        } = self;
        connection.report(conduit.traffic(), true);
        match conduit.into_stream().detach() {
            Ok(socket) => {
                lot.park(spot, socket, connection);
                Ok(())
            }
            Err(error) => {
                lot.cancel(spot);
                tracing::info!(peer = ?connection.peer(), %error, "MQTT connection lost while parking");
                Err(connection)
            }
        }
    }

    /// Writes what it can, then waits for the first thing to handle. With `may_park`, a
    /// connection with nothing to do and nothing held says [`Wake::Quiet`] instead of waiting.
    fn poll_wake(&mut self, cx: &mut Context<'_>, may_park: bool) -> Poll<Wake> {
        let connection = &mut self.connection;
        let output = || connection.has_output().then(|| connection.take_output());
        if self.conduit.write_from(cx, output).is_err() {
            return Poll::Ready(Wake::Gone);
        }
        if let Poll::Ready(close) = self.connection.signal.poll_close(cx) {
            return Poll::Ready(Wake::Close(close));
        }
        if let Some(wait) = &mut self.alarm_wait
            && wait.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::AlarmChanged);
        }
        if let Poll::Ready(Some(ticket)) = self.connection.durable.poll_recv(cx) {
            return Poll::Ready(Wake::Durable(ticket));
        }
        if self.connection.poll_flow(cx).is_ready() {
            return Poll::Ready(Wake::FlowResumed);
        }
        let backlogged = self.connection.output_len() > OUTPUT_BACKLOG;
        if !backlogged {
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
            if may_park
                && self.settled
                && self.lot.as_ref().is_some_and(ParkingLot::is_working)
                && self.alarm_wait.is_none()
                && self.connection.is_idle()
            {
                let Some(since) = self.lingering_since else {
                    return Poll::Ready(Wake::Quiet);
                };
                let until = since + LINGER;
                if Instant::now() >= until {
                    self.lingering_since = None;
                    return Poll::Ready(Wake::Quiet);
                }
                if self.timer.deadline() > until {
                    self.timer.as_mut().reset(until);
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                }
            }
        }
        Poll::Pending
    }

    /// Handles the whole packets read; `Some(graceful)` when the connection must close.
    async fn handle_input(&mut self) -> Option<bool> {
        if self.connection.is_blocked() {
            // A publisher during a resource alarm: what it sent waits in the buffer.
            return None;
        }
        // Boxed: handling a packet can go deep into the core, and the connection's task
        // should not carry that much state while it waits.
        let next = Box::pin(self.connection.on_bytes(self.conduit.input())).await;
        self.flush_queue_acks().await;
        match next {
            Next::Continue => None,
            Next::Close { graceful } => Some(graceful),
        }
    }

    async fn flush_queue_acks(&mut self) {
        if self.connection.has_queue_acks() {
            Box::pin(self.connection.flush_queue_acks()).await;
        }
    }

    /// Checks the deadline that passed: CONNECT in time, then the keep-alive.
    fn on_timer(&mut self) -> Option<bool> {
        let now = Instant::now();
        if !self.connection.is_connected() {
            // The timer was set when the connection started; only CONNECT resets it.
            tracing::info!(peer = ?self.connection.peer(), "no CONNECT in time");
            return Some(true);
        }
        if self.connection.is_blocked() {
            // Not reading is our choice, not the client's silence.
            self.connection.last_packet = now;
        }
        let keep_alive = self.connection.keep_alive();
        if keep_alive > 0 && now - self.connection.last_packet >= keep_alive_limit(keep_alive) {
            tracing::info!(peer = ?self.connection.peer(), keep_alive, "MQTT keep-alive expired");
            return Some(false);
        }
        self.reset_keep_alive_timer();
        None
    }

    /// Sets the timer to when the keep-alive expires if nothing arrives before.
    fn reset_keep_alive_timer(&mut self) {
        let deadline = self
            .keep_alive_deadline()
            .unwrap_or_else(|| Instant::now() + NOTHING_DUE);
        self.timer.as_mut().reset(deadline);
    }

    /// When the keep-alive expires if nothing arrives before (None: no keep-alive).
    fn keep_alive_deadline(&self) -> Option<Instant> {
        match self.connection.keep_alive() {
            0 => None,
            keep_alive => Some(self.connection.last_packet + keep_alive_limit(keep_alive)),
        }
    }

    fn refresh_alarm(&mut self) {
        if self.alarm.has_changed().unwrap_or(false) {
            self.connection
                .set_alarm(self.alarm.borrow_and_update().clone());
        }
    }

    /// Writes the last output and ends the session (the will, the queue, the registry).
    async fn finish(&mut self, graceful: bool) {
        let last = self.connection.take_output();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conduit.close(last)).await;
        Box::pin(self.connection.finish(graceful)).await;
    }
}

/// 1.5 times the keep-alive, as MQTT 3.1.1 allows the client.
fn keep_alive_limit(keep_alive: u16) -> Duration {
    Duration::from_millis(u64::from(keep_alive) * 1500)
}
