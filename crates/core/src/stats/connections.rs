//! The connections of every protocol as the broker knows them: who is connected over what,
//! to which vhost, with their traffic counters, and a way to close each one. An adapter
//! registers a connection once its client has logged in and keeps the [`Registration`] for
//! the connection's life; dropping it takes the connection off the list and adds its totals
//! to those of its protocol, so node totals never go backwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::events::{EventBus, text};
use crate::field::{FieldTable, FieldValue};
use crate::queue::ConnectionId;

/// Who a connection is, as its adapter tells at registration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionDetails {
    /// The protocol and version, as RabbitMQ names them (`AMQP 0-9-1`, `MQTT 3.1.1`,
    /// `STOMP 1.2`).
    pub protocol: &'static str,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The logged-in user.
    pub user: String,
    /// The vhost the connection uses.
    pub vhost: String,
    /// AMQP's client properties (empty for other protocols).
    pub client_properties: FieldTable,
    /// MQTT's client id.
    pub client_id: Option<String>,
}

impl ConnectionDetails {
    /// A connection of `protocol` from `peer`, logged in as `user` on `vhost`.
    pub fn new(
        protocol: &'static str,
        peer: Option<SocketAddr>,
        user: impl Into<String>,
        vhost: impl Into<String>,
    ) -> Self {
        Self {
            protocol,
            peer,
            user: user.into(),
            vhost: vhost.into(),
            client_properties: FieldTable::new(),
            client_id: None,
        }
    }

    /// With AMQP's client properties.
    pub fn with_client_properties(mut self, properties: FieldTable) -> Self {
        self.client_properties = properties;
        self
    }

    /// With MQTT's client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
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

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Blocked,
            2 => Self::Flow,
            3 => Self::Parked,
            _ => Self::Running,
        }
    }
}

/// One connection's counters, written by its own task.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    recv_oct: AtomicU64,
    recv_cnt: AtomicU64,
    send_oct: AtomicU64,
    send_cnt: AtomicU64,
    channels: AtomicU64,
    published: AtomicU64,
    confirmed: AtomicU64,
    returned: AtomicU64,
    dropped: AtomicU64,
    state: AtomicU8,
}

/// A connection's totals: a snapshot of its counters, or the sum over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    /// Bytes read from the client.
    pub recv_oct: u64,
    /// Reads that brought bytes.
    pub recv_cnt: u64,
    /// Bytes written to the client.
    pub send_oct: u64,
    /// Writes.
    pub send_cnt: u64,
    /// Messages the client published.
    pub published: u64,
    /// Publishes confirmed to it (AMQP confirms, MQTT PUBACK/PUBREC, STOMP receipts).
    pub confirmed: u64,
    /// Unroutable messages returned to it (AMQP mandatory).
    pub returned: u64,
    /// Unroutable messages dropped.
    pub dropped: u64,
}

impl ConnectionTotals {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &ConnectionTotals) {
        self.recv_oct += other.recv_oct;
        self.recv_cnt += other.recv_cnt;
        self.send_oct += other.send_oct;
        self.send_cnt += other.send_cnt;
        self.published += other.published;
        self.confirmed += other.confirmed;
        self.returned += other.returned;
        self.dropped += other.dropped;
    }
}

impl ConnectionCounters {
    /// Stores the socket traffic so far (the connection's own running totals).
    pub fn set_traffic(&self, recv_oct: u64, recv_cnt: u64, send_oct: u64, send_cnt: u64) {
        self.recv_oct.store(recv_oct, Ordering::Relaxed);
        self.recv_cnt.store(recv_cnt, Ordering::Relaxed);
        self.send_oct.store(send_oct, Ordering::Relaxed);
        self.send_cnt.store(send_cnt, Ordering::Relaxed);
    }

    /// Stores how many channels (AMQP) or sessions are open.
    fn set_channels(&self, channels: usize) {
        self.channels.store(channels as u64, Ordering::Relaxed);
    }

    /// Stores what the connection is doing.
    pub fn set_state(&self, state: ConnectionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// `count` publishes confirmed to the client.
    pub fn confirmed(&self, count: u64) {
        self.confirmed.fetch_add(count, Ordering::Relaxed);
    }

    /// One message published (by the publish pipeline): routed, returned or dropped.
    pub(crate) fn published(&self, routed: bool, returned: bool) {
        self.published.fetch_add(1, Ordering::Relaxed);
        if returned {
            self.returned.fetch_add(1, Ordering::Relaxed);
        } else if !routed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Open channels (AMQP) or sessions.
    pub fn channels(&self) -> u64 {
        self.channels.load(Ordering::Relaxed)
    }

    /// What the connection is doing.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The counters now.
    pub fn totals(&self) -> ConnectionTotals {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionTotals {
            recv_oct: load(&self.recv_oct),
            recv_cnt: load(&self.recv_cnt),
            send_oct: load(&self.send_oct),
            send_cnt: load(&self.send_cnt),
            published: load(&self.published),
            confirmed: load(&self.confirmed),
            returned: load(&self.returned),
            dropped: load(&self.dropped),
        }
    }
}

/// Closes a connection on request: the adapter's way of telling its driver (the reason is
/// what the client is told).
pub type Closer = Box<dyn Fn(&str) + Send + Sync>;

/// A registered connection.
pub struct ConnectionInfo {
    /// Its identifier.
    pub id: ConnectionId,
    /// Its unique name, as the management API shows it and closes it by.
    pub name: String,
    /// Who it is.
    pub details: ConnectionDetails,
    /// When it logged in.
    pub connected_at: SystemTime,
    /// Its counters.
    pub counters: ConnectionCounters,
    /// The numbers of its open channels (AMQP), in order.
    channel_numbers: Mutex<Vec<u16>>,
    closer: Closer,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("name", &self.name)
            .field("details", &self.details)
            .finish()
    }
}

impl ConnectionInfo {
    /// Records the numbers of the open channels (AMQP), which the channel count follows.
    pub fn set_channel_numbers(&self, numbers: Vec<u16>) {
        self.counters.set_channels(numbers.len());
        *self.channel_numbers.lock() = numbers;
    }

    /// The numbers of the open channels, in order.
    pub fn channel_numbers(&self) -> Vec<u16> {
        self.channel_numbers.lock().clone()
    }

    /// Asks the connection to close, telling its client `reason`.
    pub fn close(&self, reason: &str) {
        (self.closer)(reason);
    }
}

/// Every logged-in connection, and the totals of those gone, per protocol.
#[derive(Default)]
pub struct Connections {
    open: DashMap<ConnectionId, Arc<ConnectionInfo>>,
    retired: Mutex<BTreeMap<&'static str, ConnectionTotals>>,
    opened: AtomicU64,
    closed: AtomicU64,
    events: Option<Arc<EventBus>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open.len())
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

    fn emit(&self, kind: &'static str, info: &ConnectionInfo) {
        let Some(events) = &self.events else {
            return;
        };
        events.emit(kind, |headers| {
            headers.insert("name", text(info.name.as_str()));
            headers.insert("vhost", text(info.details.vhost.as_str()));
            headers.insert("user", text(info.details.user.as_str()));
            headers.insert("protocol", text(info.details.protocol));
            headers.insert("type", text("network"));
            if let Some(peer) = info.details.peer {
                headers.insert("peer_host", text(peer.ip().to_string()));
                headers.insert("peer_port", FieldValue::I32(i32::from(peer.port())));
            }
            if let Some(client_id) = &info.details.client_id {
                headers.insert("client_id", text(client_id.as_str()));
            }
            headers.insert(
                "client_properties",
                FieldValue::Table(info.details.client_properties.clone()),
            );
        });
    }

    /// Lists connection `id` until the returned registration is dropped; `closer` closes it
    /// when an operator asks.
    pub fn register(
        self: &Arc<Self>,
        id: ConnectionId,
        details: ConnectionDetails,
        closer: Closer,
    ) -> Registration {
        let name = match details.peer {
            Some(peer) => format!("{peer} #{}", id.0),
            None => format!("#{}", id.0),
        };
        let info = Arc::new(ConnectionInfo {
            id,
            name,
            details,
            connected_at: SystemTime::now(),
            counters: ConnectionCounters::default(),
            channel_numbers: Mutex::new(Vec::new()),
            closer,
        });
        self.open.insert(id, info.clone());
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.emit("connection.created", &info);
        Registration {
            info,
            registry: self.clone(),
        }
    }

    /// The open connections, in no particular order.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        self.open
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// The open connection `id`.
    pub fn get(&self, id: ConnectionId) -> Option<Arc<ConnectionInfo>> {
        self.open.get(&id).map(|entry| entry.value().clone())
    }

    /// The open connection called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<ConnectionInfo>> {
        self.open
            .iter()
            .find(|entry| entry.value().name == name)
            .map(|entry| entry.value().clone())
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Connections registered since the broker started.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Registered connections closed since the broker started.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Totals per protocol since the broker started: connections gone and open alike.
    pub fn totals(&self) -> BTreeMap<&'static str, ConnectionTotals> {
        let mut totals = self.retired.lock().clone();
        for entry in self.open.iter() {
            let info = entry.value();
            totals
                .entry(info.details.protocol)
                .or_default()
                .add(&info.counters.totals());
        }
        totals
    }
}

/// Keeps a connection listed; dropping it unlists the connection and keeps its totals.
pub struct Registration {
    info: Arc<ConnectionInfo>,
    registry: Arc<Connections>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({})", self.info.name)
    }
}

impl std::ops::Deref for Registration {
    type Target = ConnectionInfo;

    fn deref(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Totals go to the retired sum before the connection leaves the list, so a reader
        // summing both may count it twice for a moment but never loses it.
        let totals = self.info.counters.totals();
        self.registry
            .retired
            .lock()
            .entry(self.info.details.protocol)
            .or_default()
            .add(&totals);
        self.registry.open.remove(&self.info.id);
        self.registry.closed.fetch_add(1, Ordering::Relaxed);
        self.registry.emit("connection.closed", &self.info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn registered_connections_are_listed_closable_and_their_totals_outlive_them() {
        let connections = Arc::new(Connections::default());
        let asked = Arc::new(AtomicBool::new(false));
        let told = asked.clone();
        let details = ConnectionDetails::new("MQTT 3.1.1", None, "guest", "/").with_client_id("d1");
        let registration = connections.register(
            ConnectionId(7),
            details,
            Box::new(move |_| told.store(true, Ordering::Relaxed)),
        );
        registration.counters.published(true, false);
        registration.counters.published(false, false);
        registration.counters.set_traffic(100, 2, 50, 1);
        assert_eq!(connections.len(), 1);
        let listed = connections.find(&registration.name).expect("listed");
        listed.close("Closed via management plugin");
        assert!(asked.load(Ordering::Relaxed));

        drop(registration);
        assert!(connections.is_empty());
        assert_eq!((connections.opened(), connections.closed()), (1, 1));
        let totals = connections.totals()["MQTT 3.1.1"];
        assert_eq!(
            (totals.published, totals.dropped, totals.recv_oct),
            (2, 1, 100)
        );
    }
}
