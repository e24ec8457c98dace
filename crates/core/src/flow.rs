//! Credit flow: a connection that publishes to a queue that has fallen behind stops being read
//! until that queue catches up, so TCP pushes back on the client instead of the broker
//! buffering what the queue cannot take yet.
//!
//! A queue has fallen behind when more than half of its mailbox waits
//! ([`QueueHandle::is_behind`]); the publish pipeline reports such a queue
//! ([`crate::Published::behind`]) and the adapter holds the connection with a [`FlowHold`],
//! which the connection's driver polls beside everything else it waits on: deliveries, acks
//! and writes go on, only reading stops. The hold ends once at most a quarter of the queue's
//! mailbox waits. Publishers to queues that keep up never see it, and a queue never waits on
//! a connection, so a connection held this way cannot hold up its own queue.
//!
//! A publish that finds a mailbox completely full still waits for room (a read batch is
//! bounded), which is the hard limit behind the soft one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::queue::QueueHandle;

/// A connection held by credit flow: resolves when the queue it published to has caught up.
/// Two words, so an idle connection's state does not grow by much for carrying one.
pub struct FlowHold {
    caught_up: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
}

impl std::fmt::Debug for FlowHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowHold")
    }
}

impl FlowHold {
    /// Holds the connection until `queue` has caught up.
    pub fn new(queue: QueueHandle) -> Self {
        tracing::debug!(queue = queue.name(), "publisher held by credit flow");
        Self {
            caught_up: Box::pin(queue.caught_up()),
        }
    }

    /// Holds the connection until `deadline` (a publish rate limit's pause).
    pub fn until(deadline: tokio::time::Instant) -> Self {
        Self {
            caught_up: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Ready once the queue has caught up (or gone).
    pub fn poll_caught_up(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.caught_up.as_mut().poll(cx)
    }

    /// Polls the hold kept in `slot`: ready, and the slot emptied, once its queue has caught
    /// up; pending while the slot is empty (nothing holds the connection).
    pub fn poll_release(slot: &mut Option<FlowHold>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(hold) = slot else {
            return Poll::Pending;
        };
        std::task::ready!(hold.poll_caught_up(cx));
        *slot = None;
        Poll::Ready(())
    }
}
