//! The connections of every protocol as the broker knows them: who is connected over what,
//! to which vhost, with their traffic, and a way to close each one; and what each protocol's
//! publishers have sent, counted per protocol.
//!
//! Connections are listed from *sources*. AMQP and STOMP register each logged-in connection
//! here ([`Connections::register`], a small shared record the connection updates and drops
//! when it ends). MQTT, whose idle connections must stay as small as Mosquitto's, keeps what
//! the list needs in the close signal it has anyway and shows its connections through a
//! [`ConnectionSource`]. Either way the management API sees [`ConnectionSnapshot`]s, made when
//! it asks.
//!
//! Message counts (published, confirmed, returned, dropped) are per protocol, in striped
//! counters ([`MessageCounters`]): a publish adds to its thread's stripe, so publishers on
//! different cores do not share a cache line, and the totals only grow.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::events::{EventBus, text};
use crate::field::{FieldTable, FieldValue};
use crate::queue::ConnectionId;

/// The protocols counted apart, with RabbitMQ's `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AMQP 0-9-1.
    Amqp,
    /// MQTT 3.1.1.
    Mqtt,
    /// STOMP 1.0-1.2.
    Stomp,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 3] = [Family::Amqp, Family::Mqtt, Family::Stomp];

    /// RabbitMQ's Prometheus label (`amqp091`, `mqtt311`, `stomp`).
    pub fn label(self) -> &'static str {
        match self {
            Family::Amqp => "amqp091",
            Family::Mqtt => "mqtt311",
            Family::Stomp => "stomp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Stripes per protocol's message counters.
const STRIPES: usize = 8;

/// One stripe, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe {
    published: AtomicU64,
    confirmed: AtomicU64,
    returned: AtomicU64,
    dropped: AtomicU64,
}

/// What one protocol's publishers have sent, counted in stripes.
#[derive(Debug, Default)]
pub struct MessageCounters {
    stripes: [Stripe; STRIPES],
}

/// A protocol's message totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTotals {
    /// Messages published.
    pub published: u64,
    /// Publishes confirmed: AMQP confirms, MQTT PUBACK/PUBREC, STOMP persistent SENDs on
    /// disk (those a receipt waits for).
    pub confirmed: u64,
    /// Unroutable messages returned to their publisher (AMQP mandatory).
    pub returned: u64,
    /// Unroutable messages dropped.
    pub dropped: u64,
}

impl MessageTotals {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &MessageTotals) {
        self.published += other.published;
        self.confirmed += other.confirmed;
        self.returned += other.returned;
        self.dropped += other.dropped;
    }
}

thread_local! {
    /// This thread's stripe.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe_index() -> usize {
    STRIPE.with(|slot| {
        let mut index = slot.get();
        if index == usize::MAX {
            index = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            slot.set(index);
        }
        index
    })
}

impl MessageCounters {
    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    /// One message published (by the publish pipeline): routed, returned or dropped.
    pub(crate) fn published(&self, routed: bool, returned: bool) {
        let stripe = self.stripe();
        stripe.published.fetch_add(1, Ordering::Relaxed);
        if returned {
            stripe.returned.fetch_add(1, Ordering::Relaxed);
        } else if !routed {
            stripe.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `count` publishes confirmed.
    pub fn confirmed(&self, count: u64) {
        self.stripe().confirmed.fetch_add(count, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn totals(&self) -> MessageTotals {
        let mut totals = MessageTotals::default();
        for stripe in &self.stripes {
            totals.add(&MessageTotals {
                published: stripe.published.load(Ordering::Relaxed),
                confirmed: stripe.confirmed.load(Ordering::Relaxed),
                returned: stripe.returned.load(Ordering::Relaxed),
                dropped: stripe.dropped.load(Ordering::Relaxed),
            });
        }
        totals
    }
}

/// What a connection is doing, as the management API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Reading and writing.
    Running,
    /// Not read: a resource alarm blocks publishers.
    Blocked,
    /// Not read: credit flow holds the publisher until a queue catches up.
    Flow,
    /// An idle MQTT connection parked without a task of its own.
    Parked,
}

impl ConnectionState {
    /// The name RabbitMQ's API uses (`parked` is Junction's own).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Flow => "flow",
            Self::Parked => "parked",
        }
    }

    /// The state stored as a number ([`ConnectionState::from_u8`] reads it back).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The state a number stands for (unknown numbers read as running).
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Blocked,
            2 => Self::Flow,
            3 => Self::Parked,
            _ => Self::Running,
        }
    }
}

/// A connection's socket traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes read from the client.
    pub recv_oct: u64,
    /// Reads that brought bytes.
    pub recv_cnt: u64,
    /// Bytes written to the client.
    pub send_oct: u64,
    /// Writes.
    pub send_cnt: u64,
}

/// One connection as the management API shows it: a copy made when it asks.
#[derive(Debug, Clone)]
pub struct ConnectionSnapshot {
    /// Its identifier.
    pub id: ConnectionId,
    /// Its protocol family.
    pub family: Family,
    /// The protocol and version, as RabbitMQ names them (`AMQP 0-9-1`, `MQTT 3.1.1`,
    /// `STOMP 1.2`).
    pub protocol: &'static str,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The logged-in user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// AMQP's client properties (empty for other protocols).
    pub client_properties: FieldTable,
    /// MQTT's client id.
    pub client_id: Option<String>,
    /// When it logged in, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// What it is doing.
    pub state: ConnectionState,
    /// Its open AMQP channels' numbers.
    pub channels: Vec<u16>,
    /// Its traffic so far.
    pub traffic: Traffic,
    /// Its TLS session, if it came over TLS.
    pub tls: Option<TlsSession>,
    /// The SASL mechanism it logged in with.
    pub auth_mechanism: &'static str,
}

impl ConnectionSnapshot {
    /// Its unique name: the peer's address and the connection's number (the management API
    /// names, shows and closes connections by it).
    pub fn name(&self) -> String {
        connection_name(self.peer, self.id)
    }
}

/// The name of connection `id` from `peer`.
pub fn connection_name(peer: Option<SocketAddr>, id: ConnectionId) -> String {
    match peer {
        Some(peer) => format!("{peer} #{}", id.0),
        None => format!("#{}", id.0),
    }
}

/// The connection id a name ends with.
pub fn id_of_name(name: &str) -> Option<ConnectionId> {
    let (_, number) = name.rsplit_once('#')?;
    number.parse().ok().map(ConnectionId)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An adapter that keeps its connections' records itself and shows them on request.
pub trait ConnectionSource: Send + Sync + 'static {
    /// The protocol family of its connections.
    fn family(&self) -> Family;
    /// Appends a snapshot of every logged-in connection.
    fn collect(&self, out: &mut Vec<ConnectionSnapshot>);
    /// How many logged-in connections there are.
    fn count(&self) -> usize;
    /// A snapshot of logged-in connection `id`, if it is this source's.
    fn snapshot(&self, id: ConnectionId) -> Option<ConnectionSnapshot>;
    /// Adds how many logged-in connections are in each state (indexed by
    /// [`ConnectionState::as_u8`]) to `counts`.
    fn count_states(&self, counts: &mut [usize; 4]);
    /// Asks connection `id` to close, telling its client `reason`; false if it is not this
    /// source's.
    fn close(&self, id: ConnectionId, reason: &str) -> bool;
}

/// Who a connection is, as AMQP and STOMP tell at registration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionDetails {
    /// The protocol family.
    pub family: Family,
    /// The protocol and version, as RabbitMQ names them.
    pub protocol: &'static str,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The logged-in user.
    pub user: String,
    /// The vhost the connection uses.
    pub vhost: String,
    /// AMQP's client properties.
    pub client_properties: FieldTable,
    /// The TLS session, when the connection came over TLS.
    pub tls: Option<TlsSession>,
    /// The SASL mechanism it logged in with (AMQP), as RabbitMQ's API shows it.
    pub auth_mechanism: &'static str,
}

/// A connection's TLS session, as the management API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSession {
    /// The protocol version: `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The negotiated cipher suite, as IANA names it.
    pub cipher: &'static str,
}

impl ConnectionDetails {
    /// A connection of `protocol` (in `family`) from `peer`, logged in as `user` on `vhost`.
    pub fn new(
        family: Family,
        protocol: &'static str,
        peer: Option<SocketAddr>,
        user: impl Into<String>,
        vhost: impl Into<String>,
    ) -> Self {
        Self {
            family,
            protocol,
            peer,
            user: user.into(),
            vhost: vhost.into(),
            client_properties: FieldTable::new(),
            tls: None,
            auth_mechanism: "PLAIN",
        }
    }

    /// With AMQP's client properties.
    pub fn with_client_properties(mut self, properties: FieldTable) -> Self {
        self.client_properties = properties;
        self
    }

    /// Over the TLS session `tls` (None: plain TCP).
    pub fn with_tls(mut self, tls: Option<TlsSession>) -> Self {
        self.tls = tls;
        self
    }

    /// Logged in with SASL mechanism `mechanism` (`PLAIN` unless told).
    pub fn with_auth_mechanism(mut self, mechanism: &'static str) -> Self {
        self.auth_mechanism = mechanism;
        self
    }
}

/// A registered connection's traffic and state, written by its own task.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    recv_oct: AtomicU64,
    recv_cnt: AtomicU64,
    send_oct: AtomicU64,
    send_cnt: AtomicU64,
    state: AtomicU8,
}

impl ConnectionCounters {
    /// Stores the socket traffic so far (the connection's own running totals).
    pub fn set_traffic(&self, traffic: Traffic) {
        self.recv_oct.store(traffic.recv_oct, Ordering::Relaxed);
        self.recv_cnt.store(traffic.recv_cnt, Ordering::Relaxed);
        self.send_oct.store(traffic.send_oct, Ordering::Relaxed);
        self.send_cnt.store(traffic.send_cnt, Ordering::Relaxed);
    }

    /// Stores what the connection is doing.
    pub fn set_state(&self, state: ConnectionState) {
        self.state.store(state.as_u8(), Ordering::Relaxed);
    }

    /// What the connection is doing.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The traffic so far.
    pub fn traffic(&self) -> Traffic {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Traffic {
            recv_oct: load(&self.recv_oct),
            recv_cnt: load(&self.recv_cnt),
            send_oct: load(&self.send_oct),
            send_cnt: load(&self.send_cnt),
        }
    }
}

/// Closes a registered connection on request: the adapter's way of telling its driver (the
/// reason is what the client is told).
pub type Closer = Box<dyn Fn(&str) + Send + Sync>;

/// A connection registered by AMQP or STOMP.
pub struct ConnectionInfo {
    /// Its identifier.
    pub id: ConnectionId,
    /// Who it is.
    pub details: ConnectionDetails,
    /// When it logged in, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// Its traffic and state.
    pub counters: ConnectionCounters,
    /// The numbers of its open channels (AMQP), in order.
    channel_numbers: Mutex<Vec<u16>>,
    closer: Closer,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("details", &self.details)
            .finish()
    }
}

impl ConnectionInfo {
    /// Records the numbers of the open channels (AMQP).
    pub fn set_channel_numbers(&self, numbers: Vec<u16>) {
        *self.channel_numbers.lock() = numbers;
    }

    /// A snapshot of the connection now.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        let details = &self.details;
        ConnectionSnapshot {
            id: self.id,
            family: details.family,
            protocol: details.protocol,
            peer: details.peer,
            user: details.user.clone(),
            vhost: details.vhost.clone(),
            client_properties: details.client_properties.clone(),
            client_id: None,
            connected_at_ms: self.connected_at_ms,
            state: self.counters.state(),
            channels: self.channel_numbers.lock().clone(),
            traffic: self.counters.traffic(),
            tls: details.tls,
            auth_mechanism: details.auth_mechanism,
        }
    }
}

/// Every logged-in connection, from every source, and each protocol's message counters.
#[derive(Default)]
pub struct Connections {
    records: DashMap<ConnectionId, Arc<ConnectionInfo>>,
    sources: RwLock<Vec<Arc<dyn ConnectionSource>>>,
    messages: [MessageCounters; 3],
    opened: AtomicU64,
    closed: AtomicU64,
    events: Option<Arc<EventBus>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("records", &self.records.len())
            .finish()
    }
}

impl Connections {
    /// A registry that reports `connection.created` and `connection.closed` to `events`.
    pub fn with_events(events: Arc<EventBus>) -> Self {
        Self {
            events: Some(events),
            ..Self::default()
        }
    }

    /// What `family`'s publishers have sent.
    pub fn messages(&self, family: Family) -> &MessageCounters {
        &self.messages[family.index()]
    }

    /// Lists the connections of `source` too.
    pub fn add_source(&self, source: Arc<dyn ConnectionSource>) {
        self.sources.write().push(source);
    }

    /// Lists connection `id` until the returned registration is dropped; `closer` closes it
    /// when an operator asks.
    pub fn register(
        self: &Arc<Self>,
        id: ConnectionId,
        details: ConnectionDetails,
        closer: Closer,
    ) -> Registration {
        let info = Arc::new(ConnectionInfo {
            id,
            details,
            connected_at_ms: now_ms(),
            counters: ConnectionCounters::default(),
            channel_numbers: Mutex::new(Vec::new()),
            closer,
        });
        self.records.insert(id, info.clone());
        self.opened(&info.snapshot());
        Registration {
            info,
            registry: self.clone(),
        }
    }

    /// Counts a connection that logged in (a source calls it; registration does it) and
    /// reports `connection.created`.
    pub fn opened(&self, connection: &ConnectionSnapshot) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.emit("connection.created", connection);
    }

    /// Counts a logged-in connection that ended and reports `connection.closed`.
    pub fn closed(&self, connection: &ConnectionSnapshot) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.emit("connection.closed", connection);
    }

    fn emit(&self, kind: &'static str, connection: &ConnectionSnapshot) {
        let Some(events) = &self.events else {
            return;
        };
        events.emit(kind, |headers| {
            headers.insert("name", text(connection.name()));
            headers.insert("vhost", text(connection.vhost.as_str()));
            headers.insert("user", text(connection.user.as_str()));
            headers.insert("protocol", text(connection.protocol));
            headers.insert("type", text("network"));
            if let Some(peer) = connection.peer {
                headers.insert("peer_host", text(peer.ip().to_string()));
                headers.insert("peer_port", FieldValue::I32(i32::from(peer.port())));
            }
            if let Some(client_id) = &connection.client_id {
                headers.insert("client_id", text(client_id.as_str()));
            }
            headers.insert(
                "client_properties",
                FieldValue::Table(connection.client_properties.clone()),
            );
        });
    }

    /// A snapshot of every logged-in connection, in no particular order.
    pub fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        let mut out: Vec<ConnectionSnapshot> = self
            .records
            .iter()
            .map(|entry| entry.value().snapshot())
            .collect();
        for source in self.sources.read().iter() {
            source.collect(&mut out);
        }
        out
    }

    /// Snapshots of the registered connections of `family` (AMQP or STOMP; sources' are
    /// left out).
    pub fn snapshots_of(&self, family: Family) -> Vec<ConnectionSnapshot> {
        self.records
            .iter()
            .filter(|entry| entry.value().details.family == family)
            .map(|entry| entry.value().snapshot())
            .collect()
    }

    /// A snapshot of logged-in connection `id`.
    pub fn snapshot(&self, id: ConnectionId) -> Option<ConnectionSnapshot> {
        if let Some(record) = self.records.get(&id).map(|r| r.value().clone()) {
            return Some(record.snapshot());
        }
        self.sources
            .read()
            .iter()
            .find_map(|source| source.snapshot(id))
    }

    /// The logged-in connection called `name`.
    pub fn find(&self, name: &str) -> Option<ConnectionSnapshot> {
        self.snapshot(id_of_name(name)?)
            .filter(|snapshot| snapshot.name() == name)
    }

    /// How many logged-in connections are in each state (indexed by
    /// [`ConnectionState::as_u8`]), without a snapshot of each.
    pub fn count_states(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for record in self.records.iter() {
            counts[usize::from(record.value().counters.state().as_u8())] += 1;
        }
        for source in self.sources.read().iter() {
            source.count_states(&mut counts);
        }
        counts
    }

    /// How many logged-in connections each protocol family has.
    pub fn count_families(&self) -> [(Family, usize); 3] {
        let mut counts = Family::ALL.map(|family| (family, 0));
        for record in self.records.iter() {
            counts[record.value().details.family.index()].1 += 1;
        }
        for source in self.sources.read().iter() {
            counts[source.family().index()].1 += source.count();
        }
        counts
    }

    /// Asks connection `id` to close, telling its client `reason`; false if there is none.
    pub fn close(&self, id: ConnectionId, reason: &str) -> bool {
        if let Some(record) = self.records.get(&id).map(|r| r.value().clone()) {
            (record.closer)(reason);
            return true;
        }
        self.sources
            .read()
            .iter()
            .any(|source| source.close(id, reason))
    }

    /// How many are logged in.
    pub fn len(&self) -> usize {
        self.records.len()
            + self
                .sources
                .read()
                .iter()
                .map(|source| source.count())
                .sum::<usize>()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logins since the broker started.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Logged-in connections closed since the broker started.
    pub fn closed_total(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Keeps an AMQP or STOMP connection listed; dropping it unlists the connection.
pub struct Registration {
    info: Arc<ConnectionInfo>,
    registry: Arc<Connections>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({:?})", self.info.id)
    }
}

impl std::ops::Deref for Registration {
    type Target = ConnectionInfo;

    fn deref(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Registration {
    /// What the connection's protocol family has sent (for the publish pipeline and
    /// confirms).
    pub fn messages(&self) -> &MessageCounters {
        self.registry.messages(self.info.details.family)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.records.remove(&self.info.id);
        self.registry.closed(&self.info.snapshot());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn registered_connections_are_listed_found_by_name_and_closable() {
        let connections = Arc::new(Connections::default());
        let asked = Arc::new(AtomicBool::new(false));
        let told = asked.clone();
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let details = ConnectionDetails::new(Family::Amqp, "AMQP 0-9-1", Some(peer), "guest", "/");
        let registration = connections.register(
            ConnectionId(7),
            details,
            Box::new(move |_| told.store(true, Ordering::Relaxed)),
        );
        registration.counters.set_traffic(Traffic {
            recv_oct: 100,
            recv_cnt: 2,
            send_oct: 50,
            send_cnt: 1,
        });
        registration.messages().published(true, false);
        registration.messages().published(false, false);
        let listed = connections.find("127.0.0.1:5555 #7").expect("listed");
        assert_eq!(listed.traffic.recv_oct, 100);
        assert!(
            connections.find("127.0.0.1:5556 #7").is_none(),
            "the whole name counts"
        );
        assert!(connections.close(ConnectionId(7), "Closed via management plugin"));
        assert!(asked.load(Ordering::Relaxed));
        assert_eq!(connections.len(), 1);

        drop(registration);
        assert!(connections.is_empty());
        assert_eq!(
            (connections.opened_total(), connections.closed_total()),
            (1, 1)
        );
        let totals = connections.messages(Family::Amqp).totals();
        assert_eq!(
            (totals.published, totals.dropped),
            (2, 1),
            "totals outlive the connection"
        );
        assert_eq!(
            connections.messages(Family::Mqtt).totals(),
            MessageTotals::default()
        );
    }

    #[test]
    fn threads_count_in_their_own_stripes_and_totals_add_them_up() {
        let counters = Arc::new(MessageCounters::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counters.published(true, false);
                    }
                    counters.confirmed(10);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let totals = counters.totals();
        assert_eq!((totals.published, totals.confirmed), (4000, 40));
    }
}
