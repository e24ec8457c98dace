//! Telling a connection to close, cheaply: a takeover by another connection of the same
//! client id, or the broker shutting down. Each connection has one small [`Signal`] (an
//! atomic and a waker slot) that its driver polls with everything else, instead of a watch
//! channel per purpose and a future waiting on each; [`Connections`] finds them all at
//! shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use junction_core::stats::{
    ConnectionSnapshot, ConnectionSource, ConnectionState, Family, TlsSession, Traffic,
};
use junction_core::{ConnectionId, Principal};
use tokio::sync::Notify;

use crate::sessions::SessionKey;

/// Why a connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// Another connection took the session over (the will is published).
    Kicked,
    /// The broker is shutting down (the will is not published).
    Shutdown,
    /// An operator closed the connection (the will is published).
    Forced,
}

const KICKED: u8 = 1;
const SHUTDOWN: u8 = 2;
const FINISHED: u8 = 4;
const FORCED: u8 = 8;

/// One connection's close signal, whether it has finished closing, and what the management
/// API lists of it: who it is (once CONNECT is accepted), its traffic and state. Kept here,
/// in the one allocation every connection has anyway, so an idle connection stays small.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicU8,
    /// What the connection is doing ([`ConnectionState`] as a number).
    state: AtomicU8,
    /// Its TLS cipher suite's number, 0 over plain TCP (set at login; two bytes in what
    /// would be padding, where the session's facts would take a size class more).
    tls_suite: AtomicU16,
    waker: AtomicWaker,
    info: OnceLock<Login>,
    recv_oct: AtomicU64,
    send_oct: AtomicU64,
}

/// Who a logged-in MQTT connection is.
pub(crate) struct Login {
    /// Its session (vhost and client id).
    pub(crate) key: Arc<SessionKey>,
    /// Its user, shared by the user's connections.
    pub(crate) principal: Arc<Principal>,
    /// The client's address, compactly.
    peer: Option<(IpAddr, u16)>,
    /// When it logged in, in seconds after the broker started.
    connected_after: u32,
}

impl Signal {
    /// Records who the connection is, once CONNECT is accepted; false if it was already.
    pub(crate) fn log_in(
        &self,
        key: Arc<SessionKey>,
        principal: Arc<Principal>,
        peer: Option<SocketAddr>,
        tls: Option<&junction_transport::TlsInfo>,
        connected_after: u32,
    ) -> bool {
        self.tls_suite
            .store(tls.map_or(0, |tls| tls.suite), Ordering::Relaxed);
        self.info
            .set(Login {
                key,
                principal,
                peer: peer.map(|p| (p.ip(), p.port())),
                connected_after,
            })
            .is_ok()
    }

    /// Whether CONNECT was accepted.
    pub(crate) fn is_logged_in(&self) -> bool {
        self.info.get().is_some()
    }

    /// Stores the socket's traffic and what the connection is doing.
    pub(crate) fn report(&self, recv_oct: u64, send_oct: u64, state: ConnectionState) {
        self.recv_oct.store(recv_oct, Ordering::Relaxed);
        self.send_oct.store(send_oct, Ordering::Relaxed);
        self.state.store(state.as_u8(), Ordering::Relaxed);
    }

    /// The bytes read and written so far (a resumed connection counts on from them).
    pub(crate) fn traffic(&self) -> (u64, u64) {
        (
            self.recv_oct.load(Ordering::Relaxed),
            self.send_oct.load(Ordering::Relaxed),
        )
    }

    /// A snapshot for the management API, once logged in; `started_ms` is when the broker
    /// started.
    pub(crate) fn snapshot(&self, id: ConnectionId, started_ms: u64) -> Option<ConnectionSnapshot> {
        let info = self.info.get()?;
        let (recv_oct, send_oct) = self.traffic();
        Some(ConnectionSnapshot {
            id,
            family: Family::Mqtt,
            protocol: "MQTT 3.1.1",
            peer: info.peer.map(|(ip, port)| SocketAddr::new(ip, port)),
            user: info.principal.user.name.clone(),
            vhost: info.key.vhost.to_string(),
            client_properties: junction_core::FieldTable::new(),
            client_id: Some(info.key.client_id.clone()),
            connected_at_ms: started_ms + u64::from(info.connected_after) * 1000,
            state: ConnectionState::from_u8(self.state.load(Ordering::Relaxed)),
            channels: Vec::new(),
            traffic: Traffic {
                recv_oct,
                recv_cnt: 0,
                send_oct,
                send_cnt: 0,
            },
            tls: match self.tls_suite.load(Ordering::Relaxed) {
                0 => None,
                suite => {
                    let (version, cipher) = junction_transport::TlsInfo::describe_suite(suite);
                    Some(TlsSession { version, cipher })
                }
            },
            auth_mechanism: "PLAIN",
        })
    }

    fn raise(&self, reason: u8) {
        self.raised.fetch_or(reason, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Tells the connection that another one took its session over.
    pub(crate) fn kick(&self) {
        self.raise(KICKED);
    }

    /// Tells the connection that an operator closed it.
    pub(crate) fn force(&self) {
        self.raise(FORCED);
    }

    /// Ready once the connection must close; shutdown wins over a takeover.
    pub(crate) fn poll_close(&self, cx: &mut Context<'_>) -> Poll<Close> {
        if let Some(close) = self.close() {
            return Poll::Ready(close);
        }
        self.waker.register(cx.waker());
        match self.close() {
            Some(close) => Poll::Ready(close),
            None => Poll::Pending,
        }
    }

    /// Why the connection must close, if it must.
    pub(crate) fn close(&self) -> Option<Close> {
        let raised = self.raised.load(Ordering::Acquire);
        if raised & SHUTDOWN != 0 {
            Some(Close::Shutdown)
        } else if raised & KICKED != 0 {
            Some(Close::Kicked)
        } else if raised & FORCED != 0 {
            Some(Close::Forced)
        } else {
            None
        }
    }

    /// Records that the connection has finished closing (its session is released).
    pub(crate) fn finish(&self) {
        self.raised.fetch_or(FINISHED, Ordering::AcqRel);
    }

    /// Whether [`Signal::finish`] has been called.
    pub(crate) fn is_finished(&self) -> bool {
        self.raised.load(Ordering::Acquire) & FINISHED != 0
    }
}

/// Every open connection's signal, to close them all at shutdown and to list the logged-in
/// ones for the management API (a [`ConnectionSource`]).
#[derive(Default)]
pub(crate) struct Connections {
    open: DashMap<ConnectionId, Arc<Signal>>,
    closing: AtomicBool,
    /// Told when the last connection has closed during shutdown.
    emptied: Notify,
    /// Connections whose CONNECT was accepted.
    logged_in: AtomicUsize,
    /// When the broker started, in milliseconds since the Unix epoch (login times count
    /// from it).
    started_ms: AtomicU64,
}

impl Connections {
    /// A signal for a new connection (already raised if the broker is shutting down).
    pub(crate) fn open(&self, id: ConnectionId) -> Arc<Signal> {
        let signal = Arc::new(Signal::default());
        self.open.insert(id, signal.clone());
        if self.closing.load(Ordering::Acquire) {
            signal.raise(SHUTDOWN);
        }
        signal
    }

    /// Sets when the broker started (login times count from it).
    pub(crate) fn set_started(&self, started_ms: u64) {
        self.started_ms.store(started_ms, Ordering::Relaxed);
    }

    /// When the broker started, in milliseconds since the Unix epoch.
    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms.load(Ordering::Relaxed)
    }

    /// Counts a connection whose CONNECT was accepted.
    pub(crate) fn logged_in(&self) {
        self.logged_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a closed connection (once it has finished closing); its snapshot if it had
    /// logged in.
    pub(crate) fn closed(&self, id: ConnectionId) -> Option<ConnectionSnapshot> {
        let snapshot = self
            .open
            .remove(&id)
            .and_then(|(_, signal)| signal.snapshot(id, self.started_ms()));
        if snapshot.is_some() {
            self.logged_in.fetch_sub(1, Ordering::Relaxed);
        }
        if self.closing.load(Ordering::Acquire) && self.open.is_empty() {
            self.emptied.notify_waiters();
        }
        snapshot
    }

    /// Resolves once every connection has finished closing, after [`Connections::shut_down`].
    /// (Parked connections have no task the listeners could wait for.)
    pub(crate) async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.open.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Tells every connection, and every one opened from now on, to close.
    pub(crate) fn shut_down(&self) {
        self.closing.store(true, Ordering::Release);
        for entry in self.open.iter() {
            entry.value().raise(SHUTDOWN);
        }
    }
}

impl ConnectionSource for Connections {
    fn family(&self) -> Family {
        Family::Mqtt
    }

    fn collect(&self, out: &mut Vec<ConnectionSnapshot>) {
        let started_ms = self.started_ms();
        out.extend(
            self.open
                .iter()
                .filter_map(|entry| entry.value().snapshot(*entry.key(), started_ms)),
        );
    }

    fn count(&self) -> usize {
        self.logged_in.load(Ordering::Relaxed)
    }

    fn snapshot(&self, id: ConnectionId) -> Option<ConnectionSnapshot> {
        let signal = self.open.get(&id).map(|entry| entry.value().clone())?;
        signal.snapshot(id, self.started_ms())
    }

    fn count_states(&self, counts: &mut [usize; 4]) {
        for entry in self.open.iter() {
            let signal = entry.value();
            if signal.is_logged_in() {
                counts[usize::from(signal.state.load(Ordering::Relaxed) & 3)] += 1;
            }
        }
    }

    fn close(&self, id: ConnectionId, _reason: &str) -> bool {
        // MQTT 3.1.1 has no way to tell the client why: the socket closes (the will is
        // published, as for any connection that did not say DISCONNECT).
        match self.open.get(&id).map(|entry| entry.value().clone()) {
            Some(signal) if signal.is_logged_in() => {
                signal.force();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_raised_signal_wakes_its_connection_and_shutdown_wins() {
        let connections = Connections::default();
        let signal = connections.open(ConnectionId(1));
        let quiet = poll_fn(|cx| Poll::Ready(signal.poll_close(cx).is_pending())).await;
        assert!(quiet);

        let waiting = signal.clone();
        let task = tokio::spawn(async move { poll_fn(|cx| waiting.poll_close(cx)).await });
        signal.kick();
        assert_eq!(task.await.unwrap(), Close::Kicked);

        connections.shut_down();
        assert_eq!(poll_fn(|cx| signal.poll_close(cx)).await, Close::Shutdown);
        let late = connections.open(ConnectionId(2));
        assert_eq!(poll_fn(|cx| late.poll_close(cx)).await, Close::Shutdown);

        // Shutdown waits until both have finished closing.
        let connections = Arc::new(connections);
        let waiting = connections.clone();
        let all_closed = tokio::spawn(async move { waiting.all_closed().await });
        connections.closed(ConnectionId(1));
        tokio::task::yield_now().await;
        assert!(!all_closed.is_finished());
        connections.closed(ConnectionId(2));
        all_closed.await.unwrap();
    }

    #[test]
    fn finishing_is_not_a_reason_to_close() {
        let signal = Signal::default();
        assert!(!signal.is_finished());
        signal.finish();
        assert!(signal.is_finished());
        assert_eq!(signal.close(), None);
        signal.kick();
        assert_eq!(signal.close(), Some(Close::Kicked));
        assert!(signal.is_finished());
    }
}
