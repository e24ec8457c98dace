//! Parking idle connections out of the runtime.
//!
//! Most connections of an IoT broker are idle: a device sends a PINGREQ every minute and
//! nothing else. While a connection runs as a task, the runtime keeps a task (its header and
//! future), a reactor registration and a timer entry for it, more than the connection's own
//! state. A [`ParkingLot`] keeps an idle connection as just that state: its socket moves out of
//! the runtime's reactor into the lot's own epoll instance (kernel memory only), which one
//! thread waits on; its keep-alive deadline is checked by one sweep a second for the whole
//! lot, and its task ends.
//!
//! A parked connection comes back ([`Resume::resume`], in a new task) when its socket turns
//! readable, its deadline passes, or anything it waits on wakes it: the connection registers
//! the [`Spot`]'s waker with its channels and signals before parking (see
//! [`ParkingLot::reserve`]), so a delivery, a takeover or the broker's shutdown resumes it
//! like bytes from the peer do.

use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tokio::runtime::Handle;

/// How often parked connections' deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Readiness events taken from the lot's epoll instance at once.
const EVENT_BATCH: usize = 1024;

/// A connection's stream, as far as parking goes: a TCP stream can leave the runtime's
/// reactor; other streams (the pipe a WebSocket is bridged through) cannot park.
pub trait Detach: Sized {
    /// Whether [`Detach::detach`] can succeed at all.
    fn can_detach(&self) -> bool;

    /// The socket, out of the runtime's reactor. An error means the stream is gone.
    fn detach(self) -> io::Result<StdTcpStream>;
}

impl Detach for tokio::net::TcpStream {
    fn can_detach(&self) -> bool {
        true
    }

    fn detach(self) -> io::Result<StdTcpStream> {
        self.into_std()
    }
}

impl Detach for tokio::io::DuplexStream {
    fn can_detach(&self) -> bool {
        false
    }

    fn detach(self) -> io::Result<StdTcpStream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an in-process pipe cannot park",
        ))
    }
}

/// A parked connection's state, which knows how to run again.
pub trait Resume: Send + 'static {
    /// Runs the connection again, in a new task on `runtime`, over its socket (a standard,
    /// non-blocking socket). `parked_for` is how long it waited (zero if it never did): a
    /// connection that comes back at once is busy and had better not park again soon.
    fn resume(self: Box<Self>, socket: StdTcpStream, runtime: &Handle, parked_for: Duration);
}

/// Where idle connections wait without a task. Cheap to clone.
#[derive(Clone)]
pub struct ParkingLot {
    shared: Arc<Shared>,
}

struct Shared {
    /// Deadlines count whole seconds from here.
    epoch: Instant,
    /// Told apart from earlier spots with the same key, in the epoll token's upper half, so
    /// a stale event for a key that was left and taken again is ignored.
    next_generation: AtomicU32,
    /// Set if the lot's thread stopped: nothing parks any more.
    failed: AtomicBool,
    registry: mio::Registry,
    runtime: Handle,
    spots: Mutex<Slab<Arc<Spot>>>,
}

/// One connection's place in the lot, from [`ParkingLot::reserve`] until it leaves. It is
/// also the waker that makes the connection leave.
pub struct Spot {
    lot: Weak<Shared>,
    key: u32,
    generation: u32,
    /// The deadline in whole seconds from the lot's epoch, rounded up; 0 for none. (Spots
    /// are many: they are kept small.)
    deadline: u32,
    state: Mutex<SpotState>,
}

enum SpotState {
    /// Reserved; the connection is still in its task. `woken` records a wake-up that came
    /// before it parked.
    Arriving { woken: bool },
    /// The connection waits here.
    Parked {
        socket: StdTcpStream,
        connection: Box<dyn Resume>,
        /// When it parked, in milliseconds from the lot's epoch (wrapping).
        since: u32,
    },
    /// Gone: resumed or cancelled. Late wake-ups are ignored.
    Left,
}

impl ParkingLot {
    /// A lot with its own epoll instance, and the thread that waits on it. Must be called
    /// from within a Tokio runtime: parked connections resume on it.
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let runtime = Handle::try_current().map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            next_generation: AtomicU32::new(0),
            failed: AtomicBool::new(false),
            registry,
            runtime,
            spots: Mutex::new(Slab::new()),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("parking-lot".into())
            .spawn(move || watch(poll, weak))?;
        Ok(Self { shared })
    }

    /// Reserves a spot for a connection about to park, which must be resumed by `deadline`
    /// at the latest. The connection then polls everything it waits on with the spot's
    /// [`Waker`] and, if nothing is ready, hands itself over with [`ParkingLot::park`];
    /// otherwise it gives the spot back with [`ParkingLot::cancel`].
    pub fn reserve(&self, deadline: Option<Instant>) -> Arc<Spot> {
        let deadline = deadline.map_or(0, |deadline| self.shared.tick_after(deadline));
        let mut spots = self.shared.lock_spots();
        let entry = spots.vacant_entry();
        let spot = Arc::new(Spot {
            lot: Arc::downgrade(&self.shared),
            // More than 4 billion spots cannot be: each is a socket.
            key: u32::try_from(entry.key()).unwrap_or(u32::MAX),
            generation: self.shared.next_generation.fetch_add(1, Ordering::Relaxed),
            deadline,
            state: Mutex::new(SpotState::Arriving { woken: false }),
        });
        entry.insert(spot.clone());
        spot
    }

    /// Gives a reserved spot back: the connection stays in its task.
    pub fn cancel(&self, spot: &Spot) {
        *spot.lock_state() = SpotState::Left;
        self.shared.remove(spot.key);
    }

    /// Parks `connection` with its socket in `spot`. If the spot was woken since it was
    /// reserved, or the socket cannot be watched, the connection resumes at once instead.
    pub fn park(&self, spot: &Arc<Spot>, socket: StdTcpStream, connection: Box<dyn Resume>) {
        if !self.is_working() {
            self.cancel(spot);
            connection.resume(socket, &self.shared.runtime, Duration::ZERO);
            return;
        }
        let fd = socket.as_raw_fd();
        let registered =
            self.shared
                .registry
                .register(&mut SourceFd(&fd), spot.token(), Interest::READABLE);
        if let Err(error) = registered {
            tracing::warn!(%error, "cannot park a connection: it keeps its task");
            self.cancel(spot);
            connection.resume(socket, &self.shared.runtime, Duration::ZERO);
            return;
        }
        let mut state = spot.lock_state();
        match *state {
            SpotState::Arriving { woken: false } => {
                let since = self.shared.millis_at(Instant::now());
                *state = SpotState::Parked {
                    socket,
                    connection,
                    since,
                };
            }
            _ => {
                *state = SpotState::Left;
                drop(state);
                let _ = self.shared.registry.deregister(&mut SourceFd(&fd));
                self.shared.remove(spot.key);
                connection.resume(socket, &self.shared.runtime, Duration::ZERO);
            }
        }
    }

    /// Whether connections may park (false once the lot's thread has stopped on an error).
    pub fn is_working(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
    }

    /// How many connections are parked or about to park.
    pub fn len(&self) -> usize {
        self.shared.lock_spots().len()
    }

    /// Whether no connection is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field("spots", &self.len())
            .finish()
    }
}

impl Shared {
    fn lock_spots(&self) -> MutexGuard<'_, Slab<Arc<Spot>>> {
        self.spots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, key: u32) -> Option<Arc<Spot>> {
        self.lock_spots().try_remove(key as usize)
    }

    /// The first whole second from the epoch at or after `deadline` (at least 1).
    fn tick_after(&self, deadline: Instant) -> u32 {
        let since = deadline.saturating_duration_since(self.epoch);
        let seconds = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)
    }

    /// The milliseconds from the epoch to `now`, wrapping (for short intervals).
    fn millis_at(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// The whole seconds from the epoch to `now`.
    fn tick_at(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// The spot an epoll event's token names, unless it has been left since.
    fn spot(&self, token: Token) -> Option<Arc<Spot>> {
        let key = token.0 & 0xffff_ffff;
        let generation = (token.0 >> 32) as u32;
        self.lock_spots()
            .get(key)
            .filter(|spot| spot.generation == generation)
            .cloned()
    }

    /// The lot's thread has stopped: nothing parks any more, and every parked connection
    /// resumes (to its task, for good).
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        let all: Vec<Arc<Spot>> = self.lock_spots().iter().map(|(_, s)| s.clone()).collect();
        for spot in all {
            spot.leave();
        }
    }

    /// Wakes every parked connection whose deadline has passed.
    fn sweep(&self, now: Instant) {
        let now = self.tick_at(now);
        let due: Vec<Arc<Spot>> = self
            .lock_spots()
            .iter()
            .filter(|(_, spot)| spot.deadline != 0 && spot.deadline <= now)
            .map(|(_, spot)| spot.clone())
            .collect();
        for spot in due {
            spot.leave();
        }
    }
}

impl Spot {
    /// The epoll token: the key, and the generation in the upper half.
    fn token(&self) -> Token {
        Token((self.generation as usize) << 32 | self.key as usize)
    }

    fn lock_state(&self) -> MutexGuard<'_, SpotState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The waker that makes the connection leave the spot.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Resumes the parked connection (or notes the wake-up if it is still arriving).
    fn leave(&self) {
        let (socket, connection, since) = {
            let mut state = self.lock_state();
            match std::mem::replace(&mut *state, SpotState::Left) {
                SpotState::Arriving { .. } => {
                    *state = SpotState::Arriving { woken: true };
                    return;
                }
                SpotState::Left => return,
                SpotState::Parked {
                    socket,
                    connection,
                    since,
                } => (socket, connection, since),
            }
        };
        let Some(shared) = self.lot.upgrade() else {
            return;
        };
        let _ = shared
            .registry
            .deregister(&mut SourceFd(&socket.as_raw_fd()));
        shared.remove(self.key);
        let now = shared.millis_at(Instant::now());
        let parked_for = Duration::from_millis(u64::from(now.wrapping_sub(since)));
        connection.resume(socket, &shared.runtime, parked_for);
    }
}

impl Wake for Spot {
    fn wake(self: Arc<Self>) {
        self.leave();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.leave();
    }
}

/// The lot's thread: resumes connections whose sockets turned readable, and sweeps deadlines
/// once a second. It ends when the lot is gone.
fn watch(mut poll: Poll, shared: Weak<Shared>) {
    let mut events = Events::with_capacity(EVENT_BATCH);
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        let timeout = next_sweep.saturating_duration_since(Instant::now());
        let polled = poll.poll(&mut events, Some(timeout));
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = polled
            && error.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(%error, "the parking lot cannot wait for its sockets: idle connections keep their tasks from now on");
            shared.fail();
            return;
        }
        for event in events.iter() {
            if let Some(spot) = shared.spot(event.token()) {
                spot.leave();
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            shared.sweep(now);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::sync::mpsc;

    /// A parked "connection" that reports how it came back.
    struct Probe {
        name: &'static str,
        resumed: mpsc::UnboundedSender<(&'static str, StdTcpStream)>,
    }

    impl Probe {
        fn boxed(
            name: &'static str,
            resumed: &mpsc::UnboundedSender<(&'static str, StdTcpStream)>,
        ) -> Box<Probe> {
            Box::new(Probe {
                name,
                resumed: resumed.clone(),
            })
        }
    }

    impl Resume for Probe {
        fn resume(self: Box<Self>, socket: StdTcpStream, runtime: &Handle, _: Duration) {
            let resumed = self.resumed.clone();
            let name = self.name;
            runtime.spawn(async move {
                let _ = resumed.send((name, socket));
            });
        }
    }

    fn socket_pair() -> (StdTcpStream, StdTcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn a_parked_connection_resumes_on_input_on_a_wake_and_at_its_deadline() {
        let lot = ParkingLot::new().unwrap();
        let (tx, mut resumed) = mpsc::unbounded_channel();

        // Input from the peer.
        let (server, mut client) = socket_pair();
        let spot = lot.reserve(None);
        lot.park(&spot, server, Probe::boxed("input", &tx));
        assert_eq!(lot.len(), 1);
        client.write_all(b"ping").unwrap();
        let (name, _) = resumed.recv().await.unwrap();
        assert_eq!(name, "input");
        assert!(lot.is_empty());

        // A waker registered before parking (a delivery, a takeover).
        let (server, _client) = socket_pair();
        let spot = lot.reserve(None);
        let waker = spot.waker();
        lot.park(&spot, server, Probe::boxed("woken", &tx));
        waker.wake_by_ref();
        assert_eq!(resumed.recv().await.unwrap().0, "woken");
        // A late wake-up of a spot that was left does nothing.
        waker.wake();
        assert!(resumed.try_recv().is_err());

        // The keep-alive deadline.
        let (server, _client) = socket_pair();
        let spot = lot.reserve(Some(Instant::now() + Duration::from_millis(100)));
        lot.park(&spot, server, Probe::boxed("deadline", &tx));
        assert_eq!(resumed.recv().await.unwrap().0, "deadline");
        assert!(lot.is_empty());
    }

    #[tokio::test]
    async fn a_wake_before_parking_resumes_at_once_and_cancel_frees_the_spot() {
        let lot = ParkingLot::new().unwrap();
        let (tx, mut resumed) = mpsc::unbounded_channel();

        let (server, _client) = socket_pair();
        let spot = lot.reserve(None);
        let waker = spot.waker();
        // The connection polled its sources with this waker and one fired at once.
        waker.wake_by_ref();
        lot.park(&spot, server, Probe::boxed("early", &tx));
        assert_eq!(resumed.recv().await.unwrap().0, "early");
        assert!(lot.is_empty());

        let spot = lot.reserve(None);
        assert_eq!(lot.len(), 1);
        lot.cancel(&spot);
        assert!(lot.is_empty());
        spot.waker().wake();
        assert!(resumed.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_event_for_a_spot_that_was_left_does_not_reach_its_successor() {
        let lot = ParkingLot::new().unwrap();
        let first = lot.reserve(None);
        let stale = first.token();
        lot.cancel(&first);
        let second = lot.reserve(None);
        assert_eq!(second.key, first.key, "the key is taken again");
        assert!(lot.shared.spot(stale).is_none());
        assert!(lot.shared.spot(second.token()).is_some());
        lot.cancel(&second);
    }

    #[tokio::test]
    async fn input_already_waiting_when_parking_resumes_at_once() {
        let lot = ParkingLot::new().unwrap();
        let (tx, mut resumed) = mpsc::unbounded_channel();
        let (server, mut client) = socket_pair();
        client.write_all(b"early bytes").unwrap();
        // Let the bytes reach the server's socket.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut peek = [0u8; 1];
        while server.peek(&mut peek).is_err() {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            tokio::task::yield_now().await;
        }
        let spot = lot.reserve(None);
        lot.park(&spot, server, Probe::boxed("waiting", &tx));
        assert_eq!(resumed.recv().await.unwrap().0, "waiting");
    }
}
