//! The delivery budget: how many bytes of deliveries a connection may have on their way to it,
//! sent by its queues and not yet written to its socket's buffer. Queues take from it before
//! they hand a consumer a message and the connection gives it back as it writes each delivery
//! out, so a consumer that stops reading holds at most the budget (plus one message) in broker
//! memory, whether it acknowledges or not: the rest stays in its queue. A queue that finds the
//! budget spent waits on it and is woken once the connection has written half of it out.
//!
//! The budget does not decide who gets a message (that is the queue's credit, prefetch) and
//! does not count what the connection keeps afterwards (its unacknowledged deliveries).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{ConsumerEvent, QueueHandle};

/// What a delivery costs beside its body: the event, the message's header and properties.
pub const DELIVERY_OVERHEAD: usize = 256;

/// The default budget of a connection, in bytes.
pub const DEFAULT_DELIVERY_BUDGET: usize = 1024 * 1024;

/// Bytes of deliveries on their way to one connection, and the queues waiting for room.
#[derive(Debug)]
pub struct DeliveryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Set while a queue waits: only then does a release look at the waiting list.
    waited_on: AtomicBool,
    waiting: Mutex<Vec<QueueHandle>>,
}

impl DeliveryBudget {
    /// A budget of `limit` bytes (at least one delivery is always allowed).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            waited_on: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken and not given back yet.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes `bytes` if anything is left of the budget (so one delivery of any size fits).
    pub(crate) fn try_take(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used >= self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => used = actual,
            }
        }
    }

    /// Takes `bytes` more for a delivery already admitted (its body, once known).
    pub(crate) fn take_more(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Gives `bytes` back; wakes the waiting queues once at most half the budget is used.
    pub(crate) fn give_back(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::SeqCst);
        let after = before.saturating_sub(bytes);
        if after <= self.limit / 2 && self.waited_on.load(Ordering::SeqCst) {
            self.wake_waiting();
        }
    }

    /// `queue` found the budget spent: it is woken (`Wake`) when there is room again.
    pub(crate) fn wait(&self, queue: &QueueHandle) {
        {
            let mut waiting = self.waiting.lock();
            if !waiting.iter().any(|q| q.same(queue)) {
                waiting.push(queue.clone());
            }
            self.waited_on.store(true, Ordering::SeqCst);
        }
        // The connection may have given everything back before it could see the flag.
        if self.used.load(Ordering::SeqCst) < self.limit {
            self.wake_waiting();
        }
    }

    fn wake_waiting(&self) {
        let waiting = {
            let mut waiting = self.waiting.lock();
            self.waited_on.store(false, Ordering::SeqCst);
            std::mem::take(&mut *waiting)
        };
        for queue in waiting {
            queue.try_wake();
        }
    }
}

/// The part of the budget one delivery holds; given back when it is dropped, which the
/// connection does once it has written the delivery out.
#[derive(Debug)]
pub struct DeliveryPermit {
    budget: Arc<DeliveryBudget>,
    bytes: usize,
}

impl DeliveryPermit {
    /// The bytes this delivery holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeliveryPermit {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Where a connection receives its [`ConsumerEvent`]s, with the budget its deliveries take
/// from. One per connection, cloned into each of its consumers, so the connection has a single
/// stream to drain and a single bound.
#[derive(Debug, Clone)]
pub struct ConsumerSink {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    budget: Arc<DeliveryBudget>,
}

impl ConsumerSink {
    /// A sink sending to `events`, its deliveries bounded by `budget_bytes`.
    pub fn new(events: mpsc::UnboundedSender<ConsumerEvent>, budget_bytes: usize) -> Self {
        Self {
            events,
            budget: Arc::new(DeliveryBudget::new(budget_bytes)),
        }
    }

    /// The connection's sink kept in `slot`, made on first use (with a sender from `events`
    /// and a budget of `budget_bytes`), so every consumer of the connection shares one budget.
    pub fn shared(
        slot: &mut Option<ConsumerSink>,
        events: impl FnOnce() -> mpsc::UnboundedSender<ConsumerEvent>,
        budget_bytes: usize,
    ) -> ConsumerSink {
        slot.get_or_insert_with(|| ConsumerSink::new(events(), budget_bytes))
            .clone()
    }

    /// The connection's delivery budget.
    pub fn budget(&self) -> &Arc<DeliveryBudget> {
        &self.budget
    }

    /// Whether the connection has gone away.
    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    /// Takes room for one delivery, or registers `queue` to be woken when there is some.
    pub(crate) fn reserve(&self, queue: &QueueHandle) -> Option<DeliveryPermit> {
        if self.budget.try_take(DELIVERY_OVERHEAD) {
            return Some(DeliveryPermit {
                budget: self.budget.clone(),
                bytes: DELIVERY_OVERHEAD,
            });
        }
        self.budget.wait(queue);
        None
    }

    /// Sends an event; gives it back if the connection has gone.
    pub(crate) fn send(&self, event: ConsumerEvent) -> Result<(), ConsumerEvent> {
        self.events.send(event).map_err(|error| error.0)
    }
}

impl DeliveryPermit {
    /// Adds the delivery's body to what it holds.
    pub(crate) fn grow(&mut self, bytes: usize) {
        self.budget.take_more(bytes);
        self.bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_refuses_until_half_is_given_back() {
        let budget = Arc::new(DeliveryBudget::new(1000));
        assert!(budget.try_take(600));
        assert!(budget.try_take(600), "anything left admits one more");
        assert!(!budget.try_take(1));
        budget.give_back(600);
        assert_eq!(budget.used(), 600);
        assert!(budget.try_take(10));
    }

    #[test]
    fn a_permit_gives_its_bytes_back_when_dropped() {
        let budget = Arc::new(DeliveryBudget::new(1000));
        assert!(budget.try_take(100));
        let mut permit = DeliveryPermit {
            budget: budget.clone(),
            bytes: 100,
        };
        permit.grow(400);
        assert_eq!(budget.used(), 500);
        drop(permit);
        assert_eq!(budget.used(), 0);
    }
}
