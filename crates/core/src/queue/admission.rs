//! Length limits that refuse publishes (`x-overflow` = `reject-publish` or
//! `reject-publish-dlx`). The publisher must know at once whether the queue takes a message
//! (a confirming publisher gets a nack, and a persistent message must not be written to the
//! store for a queue that refuses it), so the count of ready messages and bytes is shared:
//! publishers reserve room with one atomic update before sending, the queue gives it back
//! when a message stops being ready. A full queue refuses exactly, with no lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Overflow, QueueArguments, QueueHandle};
use crate::message::Message;

/// The shared count of a queue that refuses publishes when full.
#[derive(Debug)]
pub(crate) struct Admission {
    max_length: Option<u64>,
    max_bytes: Option<u64>,
    length: AtomicU64,
    bytes: AtomicU64,
    dead_letter: bool,
}

impl Admission {
    /// The count for a queue with these arguments; None when it never refuses.
    pub(crate) fn for_arguments(arguments: &QueueArguments) -> Option<Self> {
        let refuses = matches!(
            arguments.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        );
        (refuses && arguments.has_length_limit()).then(|| Self {
            max_length: arguments.max_length,
            max_bytes: arguments.max_length_bytes,
            length: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dead_letter: arguments.overflow == Overflow::RejectPublishDlx,
        })
    }

    /// Reserves room for a message of `size` bytes; false when the queue is full: as in
    /// RabbitMQ, when taking it would put the queue over either limit.
    fn reserve(&self, size: u64) -> bool {
        let length_ok = match self.max_length {
            Some(max) => self
                .length
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
            None => {
                self.length.fetch_add(1, Ordering::AcqRel);
                true
            }
        };
        if !length_ok {
            return false;
        }
        let bytes_ok = match self.max_bytes {
            Some(max) => self
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    b.checked_add(size).filter(|total| *total <= max)
                })
                .is_ok(),
            None => {
                self.bytes.fetch_add(size, Ordering::AcqRel);
                true
            }
        };
        if !bytes_ok {
            self.length.fetch_sub(1, Ordering::AcqRel);
        }
        bytes_ok
    }

    /// A message became ready without a reservation (returned to the queue).
    pub(crate) fn enter(&self, size: u64) {
        self.length.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(size, Ordering::AcqRel);
    }

    /// A message stopped being ready (delivered, expired, purged, dropped).
    pub(crate) fn leave(&self, size: u64) {
        let _ = self
            .length
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(size))
            });
    }
}

/// The queues that took a message, and whether any refused it.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The queues to hand the message to.
    pub queues: Vec<QueueHandle>,
    /// Whether a full queue refused it (a confirming publisher gets a nack).
    pub refused: bool,
}

/// Asks each of `queues` whether it takes `message` now. Queues without a refusing length
/// limit always do; a full `reject-publish-dlx` queue dead-letters the message instead.
/// Callers hand the message to the admitted queues (and only those) right after.
pub async fn admit(queues: Vec<QueueHandle>, message: &Message) -> Admitted {
    if queues.iter().all(|queue| queue.0.admission.is_none()) {
        return Admitted {
            queues,
            refused: false,
        };
    }
    let size = message.body.len() as u64;
    let mut admitted = Admitted::default();
    for queue in queues {
        match &queue.0.admission {
            Some(admission) if !admission.reserve(size) => {
                admitted.refused = true;
                if admission.dead_letter {
                    queue.dead_letter_refused(Arc::new(message.clone())).await;
                }
            }
            _ => admitted.queues.push(queue),
        }
    }
    admitted
}

/// Gives back the room [`admit`] reserved for `message` in `queues` when it is not handed to
/// them after all (the message store refused it).
pub fn release_admission(queues: &[QueueHandle], message: &Message) {
    let size = message.body.len() as u64;
    for queue in queues {
        if let Some(admission) = &queue.0.admission {
            admission.leave(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(max_length: Option<u64>, max_bytes: Option<u64>) -> Admission {
        let arguments = QueueArguments {
            max_length,
            max_length_bytes: max_bytes,
            overflow: Overflow::RejectPublish,
            ..Default::default()
        };
        Admission::for_arguments(&arguments).expect("refuses")
    }

    #[test]
    fn only_refusing_limits_need_a_count() {
        let drop_head = QueueArguments {
            max_length: Some(1),
            ..Default::default()
        };
        assert!(Admission::for_arguments(&drop_head).is_none());
        let no_limit = QueueArguments {
            overflow: Overflow::RejectPublish,
            ..Default::default()
        };
        assert!(Admission::for_arguments(&no_limit).is_none());
    }

    #[test]
    fn a_full_queue_refuses_until_a_message_leaves() {
        let admission = limited(Some(2), None);
        assert!(admission.reserve(10));
        assert!(admission.reserve(10));
        assert!(!admission.reserve(10));
        admission.leave(10);
        assert!(admission.reserve(10));
        admission.enter(10);
        assert!(!admission.reserve(10));
    }

    #[test]
    fn a_message_that_would_go_over_the_byte_limit_is_refused() {
        let admission = limited(None, Some(100));
        assert!(admission.reserve(60));
        assert!(!admission.reserve(60));
        assert!(admission.reserve(40));
        assert!(!admission.reserve(1));
        admission.leave(60);
        assert!(admission.reserve(60));
    }
}
