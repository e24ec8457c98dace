//! The cap on connections that have not logged in yet. Each accepted client takes a
//! [`LoginTicket`] and its protocol drops it once the login is complete; while the cap's
//! tickets are all out, new clients are closed at once (and logged, at most once a second),
//! so a flood of strangers, each held only for the handshake timeout, cannot hold more than
//! the cap at any time. Logged-in clients are not affected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct Inner {
    max: usize,
    out: AtomicUsize,
    /// The second a refusal was last logged (Unix time), so a flood logs one line a second.
    logged: AtomicU64,
    refused: AtomicU64,
}

/// The cap on connections still logging in, shared by the protocol listeners.
#[derive(Debug, Clone)]
pub struct LoginGate {
    inner: Arc<Inner>,
}

/// One connection's place among those logging in; dropping it frees the place.
#[derive(Debug)]
pub struct LoginTicket(Arc<Inner>);

impl LoginGate {
    /// A gate letting at most `max` connections log in at once (0: no cap).
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max: if max == 0 { usize::MAX } else { max },
                out: AtomicUsize::new(0),
                logged: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A ticket, or None when the cap is reached (the refusal is logged, at most once a
    /// second, with how many were refused since).
    pub fn enter(&self) -> Option<LoginTicket> {
        let inner = &self.inner;
        let taken = inner
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                (out < inner.max).then_some(out + 1)
            })
            .is_ok();
        if taken {
            return Some(LoginTicket(inner.clone()));
        }
        let refused = inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if inner.logged.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                max = inner.max,
                refused,
                "too many connections logging in at once; closing new ones"
            );
        }
        None
    }

    /// Connections logging in now.
    pub fn logging_in(&self) -> usize {
        self.inner.out.load(Ordering::Acquire)
    }
}

impl Drop for LoginTicket {
    fn drop(&mut self) {
        self.0.out.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_lets_in_up_to_its_cap_and_a_dropped_ticket_frees_a_place() {
        let gate = LoginGate::new(2);
        let first = gate.enter().expect("1");
        let _second = gate.enter().expect("2");
        assert!(gate.enter().is_none());
        drop(first);
        assert!(gate.enter().is_some());
        assert_eq!(gate.logging_in(), 1, "the ticket above was dropped at once");
        assert!(LoginGate::new(0).enter().is_some());
    }
}
