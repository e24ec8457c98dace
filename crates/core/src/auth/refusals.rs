//! Rate limiting for the log lines about refused logins.
//!
//! A client that retries without credentials in a tight loop would otherwise write one line
//! per attempt: tens of thousands a second, all alike. Each peer address gets one line per
//! protocol and window; the refusals in between are counted, and the next line that is
//! written says how many were left out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long one peer's refusals share a single log line.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Peers remembered at most; beyond it, those whose window is over are forgotten first.
const MAX_PEERS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    suppressed: u64,
}

/// Which refused logins get a log line (see the module documentation).
#[derive(Debug, Default)]
pub struct RefusalLog {
    peers: Mutex<HashMap<(&'static str, Option<IpAddr>), Window>>,
}

impl RefusalLog {
    /// An empty log limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a refused `protocol` login from `peer`. Returns `Some(left_out)` when it should
    /// be logged, `left_out` being how many such refusals were not logged since the last
    /// line; `None` when it falls in a window that already has its line.
    pub fn admit(&self, protocol: &'static str, peer: Option<IpAddr>) -> Option<u64> {
        self.admit_at((protocol, peer), Instant::now())
    }

    fn admit_at(&self, peer: (&'static str, Option<IpAddr>), now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock();
        if let Some(window) = peers.get_mut(&peer) {
            if now.saturating_duration_since(window.started) < REFUSAL_LOG_WINDOW {
                window.suppressed += 1;
                return None;
            }
            let left_out = window.suppressed;
            *window = Window {
                started: now,
                suppressed: 0,
            };
            return Some(left_out);
        }
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, window| {
                now.saturating_duration_since(window.started) < REFUSAL_LOG_WINDOW
            });
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        peers.insert(
            peer,
            Window {
                started: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_and_window_then_the_count_left_out() {
        let log = RefusalLog::new();
        let start = Instant::now();
        let a = ("mqtt", Some(IpAddr::from([10, 0, 0, 1])));
        let b = ("mqtt", Some(IpAddr::from([10, 0, 0, 2])));
        assert_eq!(log.admit_at(a, start), Some(0));
        for n in 1..1000u64 {
            assert_eq!(log.admit_at(a, start + Duration::from_millis(n)), None);
        }
        assert_eq!(
            log.admit_at(b, start),
            Some(0),
            "another peer has its own window"
        );
        assert_eq!(
            log.admit_at(("amqp", a.1), start),
            Some(0),
            "so has another protocol"
        );
        let later = start + REFUSAL_LOG_WINDOW;
        assert_eq!(log.admit_at(a, later), Some(999));
        assert_eq!(log.admit_at(a, later), None);
    }

    #[test]
    fn the_remembered_peers_stay_bounded() {
        let log = RefusalLog::new();
        let start = Instant::now();
        for n in 0..(3 * MAX_PEERS as u32) {
            let peer = ("amqp", Some(IpAddr::from(n.to_be_bytes())));
            assert_eq!(log.admit_at(peer, start), Some(0));
        }
        assert!(log.peers.lock().len() <= MAX_PEERS);
    }
}
