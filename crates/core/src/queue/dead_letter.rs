//! Dead-lettering: a message rejected without requeue, expired, or pushed out of a full queue
//! is republished to the queue's dead-letter exchange (`x-dead-letter-exchange`), with the
//! `x-death` header RabbitMQ writes. Republishing goes through one task per queue, so dead
//! letters keep their order, and never blocks the queue that dead-letters: the queue never
//! waits for the task. The letters on their way are bounded instead: past
//! [`DEAD_LETTERS_IN_FLIGHT`] the queue stops letting ready messages die (expiry, drop-head)
//! and leaves them in place until [`DeadLetters::room`] says the task caught up; rejections
//! by consumers are never held back (they are bounded by the consumers' unacknowledged
//! deliveries).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};

use crate::field::{FieldTable, FieldValue};
use crate::message::Message;
use crate::vhost::VirtualHost;

/// Why a message was dead-lettered, as `x-death` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// basic.reject or basic.nack without requeue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// The queue's length limit pushed it out (or refused it, with `reject-publish-dlx`).
    MaxLen,
    /// It came back more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterTarget {
    /// The exchange ("" is the default exchange).
    pub(crate) exchange: String,
    /// The routing key; None keeps the message's own.
    pub(crate) routing_key: Option<String>,
}

/// The copy of `message` that `queue` republishes to `target`: the new `x-death` entry first
/// (or the existing one for this queue and reason, its count raised, moved first), the
/// `x-first-death-*` headers on its first death, and a per-message TTL moved to
/// `original-expiration` so the copy does not expire again.
pub(crate) fn dead_lettered(
    message: &Message,
    queue: &str,
    reason: Reason,
    target: &DeadLetterTarget,
) -> Message {
    let mut properties = message.properties.clone();
    let original_expiration = properties.expiration.take();
    let mut headers = properties.headers.take().unwrap_or_default();

    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|death| {
        matches!(death, FieldValue::Table(entry)
            if entry.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && entry.get("reason").and_then(FieldValue::as_str) == Some(reason.name()))
    });
    let entry = match same {
        Some(index) => {
            let mut entry = match deaths.remove(index) {
                FieldValue::Table(entry) => entry,
                _ => FieldTable::default(),
            };
            let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            entry.insert("count", FieldValue::I64(count.saturating_add(1)));
            entry.insert("time", FieldValue::Timestamp(now_seconds()));
            entry
        }
        None => {
            let mut entry = FieldTable::default();
            entry.insert("count", FieldValue::I64(1));
            entry.insert("reason", FieldValue::string(reason.name()));
            entry.insert("queue", FieldValue::string(queue));
            entry.insert("time", FieldValue::Timestamp(now_seconds()));
            entry.insert("exchange", FieldValue::string(message.exchange.clone()));
            entry.insert(
                "routing-keys",
                FieldValue::Array(routing_keys(message).map(FieldValue::string).collect()),
            );
            if let Some(expiration) = &original_expiration {
                entry.insert(
                    "original-expiration",
                    FieldValue::string(expiration.clone()),
                );
            }
            entry
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    // RabbitMQ 3.13 and later also say where it died last.
    headers.insert("x-last-death-reason", FieldValue::string(reason.name()));
    headers.insert("x-last-death-queue", FieldValue::string(queue));
    headers.insert(
        "x-last-death-exchange",
        FieldValue::string(message.exchange.clone()),
    );
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", FieldValue::string(reason.name()));
        headers.insert("x-first-death-queue", FieldValue::string(queue));
        headers.insert(
            "x-first-death-exchange",
            FieldValue::string(message.exchange.clone()),
        );
    }
    properties.headers = Some(headers);

    let routing_key = target
        .routing_key
        .clone()
        .unwrap_or_else(|| message.routing_key.clone());
    Message::new(
        target.exchange.clone(),
        routing_key,
        properties,
        message.body.clone(),
    )
}

/// Whether delivering a dead letter to `queue` would go round a cycle: the message died in
/// that queue before and no consumer rejected it since (RabbitMQ drops such a message,
/// otherwise an expiring message would circle for ever). Only the deaths since the last one
/// in `queue` count (the newest come first).
pub(crate) fn is_cycle(message: &Message, queue: &str) -> bool {
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|headers| headers.get("x-death"))
    else {
        return false;
    };
    for death in deaths {
        let FieldValue::Table(entry) = death else {
            continue;
        };
        if entry.get("reason").and_then(FieldValue::as_str) == Some(Reason::Rejected.name()) {
            return false;
        }
        if entry.get("queue").and_then(FieldValue::as_str) == Some(queue) {
            return true;
        }
    }
    false
}

/// The routing keys a message was published with: its own and its `CC` header's (not `BCC`).
fn routing_keys(message: &Message) -> impl Iterator<Item = String> + '_ {
    let cc = message
        .properties
        .headers
        .as_ref()
        .and_then(|headers| match headers.get("CC") {
            Some(FieldValue::Array(keys)) => Some(keys),
            _ => None,
        })
        .into_iter()
        .flatten()
        .filter_map(|key| key.as_str().map(str::to_owned));
    std::iter::once(message.routing_key.clone()).chain(cc)
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Dead letters a queue may have on their way to its republishing task before it stops
/// letting ready messages die.
pub(crate) const DEAD_LETTERS_IN_FLIGHT: usize = 1024;

/// A queue's dead-letter publisher: a task made on the first dead letter that republishes
/// them in order through the vhost.
pub(crate) struct DeadLetters {
    sender: Option<mpsc::UnboundedSender<Message>>,
    in_flight: Arc<InFlight>,
}

/// Letters sent and not yet republished, and the signal that some were.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    room: Notify,
}

impl DeadLetters {
    pub(crate) fn new() -> Self {
        Self {
            sender: None,
            in_flight: Arc::default(),
        }
    }

    /// How many more letters fit before [`DEAD_LETTERS_IN_FLIGHT`].
    pub(crate) fn room_left(&self) -> usize {
        DEAD_LETTERS_IN_FLIGHT.saturating_sub(self.in_flight.count.load(Ordering::Acquire))
    }

    /// Resolves once fewer than [`DEAD_LETTERS_IN_FLIGHT`] letters are on their way.
    pub(crate) async fn room(&self) {
        while self.room_left() == 0 {
            self.in_flight.room.notified().await;
        }
    }

    /// Republishes `message` (already made with [`dead_lettered`]).
    pub(crate) fn send(&mut self, vhost: &Weak<VirtualHost>, message: Message) {
        let sender = self.sender.get_or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(republish(vhost.clone(), receiver, self.in_flight.clone()));
            sender
        });
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        if sender.send(message).is_err() {
            self.in_flight.count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

async fn republish(
    vhost: Weak<VirtualHost>,
    mut letters: mpsc::UnboundedReceiver<Message>,
    in_flight: Arc<InFlight>,
) {
    while let Some(message) = letters.recv().await {
        let Some(vhost) = vhost.upgrade() else {
            return;
        };
        vhost.publish_dead_letter(message).await;
        in_flight.count.fetch_sub(1, Ordering::AcqRel);
        in_flight.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;
    use bytes::Bytes;

    fn death(message: &Message, index: usize) -> FieldTable {
        match message.properties.headers.as_ref().unwrap().get("x-death") {
            Some(FieldValue::Array(deaths)) => match &deaths[index] {
                FieldValue::Table(entry) => entry.clone(),
                other => panic!("not a table: {other:?}"),
            },
            other => panic!("no x-death: {other:?}"),
        }
    }

    fn original() -> Message {
        let properties = Properties {
            expiration: Some("5000".into()),
            ..Default::default()
        };
        Message::new("orders", "new", properties, Bytes::from_static(b"body"))
    }

    #[test]
    fn the_first_death_is_recorded_as_rabbitmq_writes_it() {
        let target = DeadLetterTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let dead = dead_lettered(&original(), "work", Reason::Expired, &target);
        assert_eq!(dead.exchange, "dlx");
        assert_eq!(dead.routing_key, "new");
        assert_eq!(dead.properties.expiration, None);
        assert_eq!(&dead.body[..], b"body");
        let entry = death(&dead, 0);
        assert_eq!(entry.get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(
            entry.get("reason").and_then(FieldValue::as_str),
            Some("expired")
        );
        assert_eq!(
            entry.get("queue").and_then(FieldValue::as_str),
            Some("work")
        );
        assert_eq!(
            entry.get("exchange").and_then(FieldValue::as_str),
            Some("orders")
        );
        assert_eq!(
            entry.get("routing-keys"),
            Some(&FieldValue::Array(vec![FieldValue::string("new")]))
        );
        assert_eq!(
            entry
                .get("original-expiration")
                .and_then(FieldValue::as_str),
            Some("5000")
        );
        assert!(matches!(entry.get("time"), Some(FieldValue::Timestamp(_))));
        let headers = dead.properties.headers.as_ref().unwrap();
        assert_eq!(
            headers
                .get("x-first-death-reason")
                .and_then(FieldValue::as_str),
            Some("expired")
        );
        assert_eq!(
            headers
                .get("x-first-death-queue")
                .and_then(FieldValue::as_str),
            Some("work")
        );
    }

    #[test]
    fn dying_again_for_the_same_reason_in_the_same_queue_counts_up() {
        let target = DeadLetterTarget {
            exchange: "".into(),
            routing_key: Some("retry".into()),
        };
        let once = dead_lettered(&original(), "work", Reason::Rejected, &target);
        assert_eq!(once.routing_key, "retry");
        let elsewhere = dead_lettered(&once, "retry", Reason::Expired, &target);
        let twice = dead_lettered(&elsewhere, "work", Reason::Rejected, &target);
        assert_eq!(death(&twice, 0).get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(
            death(&twice, 0).get("queue").and_then(FieldValue::as_str),
            Some("work")
        );
        assert_eq!(
            death(&twice, 1).get("queue").and_then(FieldValue::as_str),
            Some("retry")
        );
        // The first death stays the first.
        let headers = twice.properties.headers.as_ref().unwrap();
        assert_eq!(
            headers
                .get("x-first-death-reason")
                .and_then(FieldValue::as_str),
            Some("rejected")
        );
    }

    #[test]
    fn a_cycle_without_rejection_is_detected() {
        let target = DeadLetterTarget {
            exchange: "".into(),
            routing_key: Some("work".into()),
        };
        let expired = dead_lettered(&original(), "work", Reason::Expired, &target);
        assert!(is_cycle(&expired, "work"));
        assert!(!is_cycle(&expired, "other"));
        let rejected = dead_lettered(&original(), "work", Reason::Rejected, &target);
        assert!(!is_cycle(&rejected, "work"));
        assert!(!is_cycle(&original(), "work"));
    }

    #[test]
    fn an_old_rejection_does_not_excuse_a_new_cycle() {
        // work rejects once, the copy expires in retry and comes back, then expires in work:
        // going to retry again is a cycle although a rejection lies further back.
        let target = DeadLetterTarget {
            exchange: "".into(),
            routing_key: None,
        };
        let rejected = dead_lettered(&original(), "work", Reason::Rejected, &target);
        let expired_in_retry = dead_lettered(&rejected, "retry", Reason::Expired, &target);
        let expired_in_work = dead_lettered(&expired_in_retry, "work", Reason::Expired, &target);
        assert!(is_cycle(&expired_in_work, "retry"));
        assert!(is_cycle(&expired_in_work, "work"));
        assert!(!is_cycle(&expired_in_retry, "work"));
    }

    #[tokio::test]
    async fn letters_on_their_way_are_bounded_and_room_comes_back() {
        use std::sync::Arc;
        let vhost = VirtualHost::new(
            "/",
            Arc::new(crate::exchange::ExchangeTypeRegistry::with_builtins()),
        );
        let spec = crate::queue::QueueSpec {
            name: "dlq".into(),
            ..Default::default()
        };
        let dlq = vhost
            .declare_queue(spec, false, false, crate::queue::ConnectionId(1))
            .await
            .expect("declare")
            .handle;
        let target = DeadLetterTarget {
            exchange: "".into(),
            routing_key: Some("dlq".into()),
        };
        let mut letters = DeadLetters::new();
        let weak = Arc::downgrade(&vhost);
        for _ in 0..DEAD_LETTERS_IN_FLIGHT {
            letters.send(
                &weak,
                dead_lettered(&original(), "work", Reason::Expired, &target),
            );
        }
        assert_eq!(letters.room_left(), 0, "the queue must now hold back");
        tokio::time::timeout(std::time::Duration::from_secs(10), letters.room())
            .await
            .expect("room comes back as the task republishes");
        assert!(letters.room_left() > 0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while dlq.stats().await.expect("stats").ready < DEAD_LETTERS_IN_FLIGHT as u32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "every letter arrives"
            );
            tokio::task::yield_now().await;
        }
        while letters.room_left() < DEAD_LETTERS_IN_FLIGHT {
            assert!(
                tokio::time::Instant::now() < deadline,
                "all room comes back"
            );
            tokio::task::yield_now().await;
        }
    }
}
