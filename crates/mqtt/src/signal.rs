//! Telling a connection to close, cheaply: a takeover by another connection of the same
//! client id, or the broker shutting down. Each connection has one small [`Signal`] (an
//! atomic and a waker slot) that its driver polls with everything else, instead of a watch
//! channel per purpose and a future waiting on each; [`Connections`] finds them all at
//! shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use junction_core::ConnectionId;
use tokio::sync::Notify;

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

/// One connection's close signal, and whether it has finished closing.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
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

/// Every open connection's signal, to close them all at shutdown.
#[derive(Default)]
pub(crate) struct Connections {
    open: DashMap<ConnectionId, Arc<Signal>>,
    closing: AtomicBool,
    /// Told when the last connection has closed during shutdown.
    emptied: Notify,
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

    /// Forgets a closed connection (once it has finished closing).
    pub(crate) fn closed(&self, id: ConnectionId) {
        self.open.remove(&id);
        if self.closing.load(Ordering::Acquire) && self.open.is_empty() {
            self.emptied.notify_waiters();
        }
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
