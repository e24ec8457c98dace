//! Channel-wide prefetch (AMQP `basic.qos` with `global`): one counter shared by every queue
//! that delivers to the channel's consumers, so the limit holds across queues without a lock.

use std::sync::atomic::{AtomicU32, Ordering};

/// Unacknowledged deliveries of one channel and the limit on them (0 = unlimited).
#[derive(Debug, Default)]
pub struct ChannelCredit {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl ChannelCredit {
    /// A credit with `limit` (0 = unlimited).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Changes the limit; deliveries already in flight stay.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Takes one unit of credit if the limit allows.
    pub fn try_acquire(&self) -> bool {
        let mut used = self.in_flight.load(Ordering::Acquire);
        loop {
            let limit = self.limit();
            if limit != 0 && used >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => used = actual,
            }
        }
    }

    /// Returns one unit of credit.
    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
    }

    /// Unacknowledged deliveries counted against the limit.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelCredit;

    #[test]
    fn credit_stops_at_the_limit_and_resumes_on_release() {
        let credit = ChannelCredit::new(2);
        assert!(credit.try_acquire());
        assert!(credit.try_acquire());
        assert!(!credit.try_acquire());
        credit.release();
        assert!(credit.try_acquire());
    }

    #[test]
    fn zero_means_unlimited() {
        let credit = ChannelCredit::new(0);
        for _ in 0..1000 {
            assert!(credit.try_acquire());
        }
        assert_eq!(credit.in_flight(), 1000);
    }
}
