//! Message counters of queues and exchanges. A queue's task is the only writer of its
//! [`QueueCounters`]: it counts in a plain [`QueueTally`] as it works and stores the tally
//! into the atomics once per batch, so the hot path pays a few relaxed stores per batch and
//! no shared read-modify-write. Readers (the management API, metrics) load them whenever
//! they like.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a queue's task has counted since the queue started (totals) and holds now (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTally {
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u64,
    /// Bytes of ready message bodies.
    pub ready_bytes: u64,
    /// Ready messages whose bodies are paged out to disk.
    pub paged: u64,
    /// Messages the queue took (published to it, dead letters included).
    pub published: u64,
    /// Deliveries to consumers that acknowledge.
    pub delivered_manual_ack: u64,
    /// Deliveries to consumers that do not acknowledge.
    pub delivered_auto_ack: u64,
    /// basic.get answers with a message, to be acknowledged.
    pub got_manual_ack: u64,
    /// basic.get answers with a message, settled on sending.
    pub got_auto_ack: u64,
    /// basic.get answers without one.
    pub got_empty: u64,
    /// Deliveries and gets of messages delivered before.
    pub redelivered: u64,
    /// Acknowledgements.
    pub acked: u64,
}

impl QueueTally {
    /// Every delivery and get with a message.
    pub fn delivered(&self) -> u64 {
        self.delivered_manual_ack + self.delivered_auto_ack
    }

    /// Every get with a message.
    pub fn got(&self) -> u64 {
        self.got_manual_ack + self.got_auto_ack
    }

    /// Adds the totals (not the gauges) of `other`: a queue that is gone still counts in
    /// its node's totals.
    pub fn add_totals(&mut self, other: &QueueTally) {
        self.published += other.published;
        self.delivered_manual_ack += other.delivered_manual_ack;
        self.delivered_auto_ack += other.delivered_auto_ack;
        self.got_manual_ack += other.got_manual_ack;
        self.got_auto_ack += other.got_auto_ack;
        self.got_empty += other.got_empty;
        self.redelivered += other.redelivered;
        self.acked += other.acked;
    }

    /// Adds everything of `other`, gauges included (a sum over queues).
    pub fn add(&mut self, other: &QueueTally) {
        self.add_totals(other);
        self.ready += other.ready;
        self.unacked += other.unacked;
        self.consumers += other.consumers;
        self.ready_bytes += other.ready_bytes;
        self.paged += other.paged;
    }
}

/// A queue's counters as the world reads them: written by its task once per batch.
#[derive(Debug, Default)]
pub struct QueueCounters {
    ready: AtomicU64,
    unacked: AtomicU64,
    consumers: AtomicU64,
    ready_bytes: AtomicU64,
    paged: AtomicU64,
    published: AtomicU64,
    delivered_manual_ack: AtomicU64,
    delivered_auto_ack: AtomicU64,
    got_manual_ack: AtomicU64,
    got_auto_ack: AtomicU64,
    got_empty: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
}

impl QueueCounters {
    /// Stores `tally` (the task's own count) for readers.
    pub(crate) fn store(&self, tally: &QueueTally) {
        let pairs = [
            (&self.ready, tally.ready),
            (&self.unacked, tally.unacked),
            (&self.consumers, tally.consumers),
            (&self.ready_bytes, tally.ready_bytes),
            (&self.paged, tally.paged),
            (&self.published, tally.published),
            (&self.delivered_manual_ack, tally.delivered_manual_ack),
            (&self.delivered_auto_ack, tally.delivered_auto_ack),
            (&self.got_manual_ack, tally.got_manual_ack),
            (&self.got_auto_ack, tally.got_auto_ack),
            (&self.got_empty, tally.got_empty),
            (&self.redelivered, tally.redelivered),
            (&self.acked, tally.acked),
        ];
        for (counter, value) in pairs {
            counter.store(value, Ordering::Relaxed);
        }
    }

    /// The counters as last stored.
    pub fn load(&self) -> QueueTally {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QueueTally {
            ready: load(&self.ready),
            unacked: load(&self.unacked),
            consumers: load(&self.consumers),
            ready_bytes: load(&self.ready_bytes),
            paged: load(&self.paged),
            published: load(&self.published),
            delivered_manual_ack: load(&self.delivered_manual_ack),
            delivered_auto_ack: load(&self.delivered_auto_ack),
            got_manual_ack: load(&self.got_manual_ack),
            got_auto_ack: load(&self.got_auto_ack),
            got_empty: load(&self.got_empty),
            redelivered: load(&self.redelivered),
            acked: load(&self.acked),
        }
    }
}

/// Messages into and out of an exchange, counted by the publish pipeline. On a cache line of
/// its own, so the adds do not disturb the router pointer every publish reads beside it.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ExchangeCounters {
    publish_in: AtomicU64,
    publish_out: AtomicU64,
}

impl ExchangeCounters {
    /// One message published to the exchange, routed to `queues` queues.
    pub(crate) fn count(&self, queues: usize) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        if queues > 0 {
            self.publish_out.fetch_add(queues as u64, Ordering::Relaxed);
        }
    }

    /// Messages published to the exchange.
    pub fn publish_in(&self) -> u64 {
        self.publish_in.load(Ordering::Relaxed)
    }

    /// Copies of them it routed to queues.
    pub fn publish_out(&self) -> u64 {
        self.publish_out.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_tally_reads_back_and_sums_keep_gauges_apart_from_totals() {
        let counters = QueueCounters::default();
        let tally = QueueTally {
            ready: 3,
            unacked: 2,
            consumers: 1,
            ready_bytes: 30,
            paged: 1,
            published: 10,
            delivered_manual_ack: 4,
            delivered_auto_ack: 1,
            got_manual_ack: 1,
            got_auto_ack: 1,
            got_empty: 2,
            redelivered: 1,
            acked: 4,
        };
        counters.store(&tally);
        assert_eq!(counters.load(), tally);
        assert_eq!(tally.delivered(), 5);
        assert_eq!(tally.got(), 2);

        let mut retired = QueueTally::default();
        retired.add_totals(&tally);
        assert_eq!(retired.ready, 0, "a gone queue holds nothing");
        assert_eq!(retired.published, 10);
        let mut sum = retired;
        sum.add(&tally);
        assert_eq!((sum.ready, sum.published, sum.acked), (3, 20, 8));
    }

    #[test]
    fn exchanges_count_messages_in_and_copies_out() {
        let counters = ExchangeCounters::default();
        counters.count(2);
        counters.count(0);
        assert_eq!((counters.publish_in(), counters.publish_out()), (2, 2));
    }
}
