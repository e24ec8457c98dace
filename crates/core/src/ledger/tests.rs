use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::message::{Message, Properties};
use crate::persistence::OnDurable;
use crate::persistence::testing::HeldStore;
use crate::publish::{Persisted, Publication};
use crate::queue::{ConnectionId, QueueSpec};
use crate::vhost::VirtualHost;

fn answers<A>(ledger: &mut Ledger<A>) -> Vec<Answer<A>> {
    std::iter::from_fn(|| ledger.next_answer()).collect()
}

fn confirms<A>(ledger: &mut Ledger<A>) -> Vec<Confirm> {
    std::iter::from_fn(|| ledger.next_confirm()).collect()
}

fn ack(upto: Seq, covered: u64) -> Confirm {
    Confirm::Ack {
        upto,
        multiple: covered > 1,
        covered,
    }
}

#[test]
fn answers_leave_in_publish_order_once_what_they_cover_is_on_disk() {
    let mut ledger = Ledger::new();
    let stored = ledger.owe("puback 1");
    let transient = ledger.owe("puback 2");
    ledger.ready(transient);
    assert_eq!(
        answers(&mut ledger),
        [],
        "the second waits behind the first"
    );
    ledger.settle(stored, Durability::OnDisk);
    assert_eq!(
        answers(&mut ledger),
        [Answer::Ready(1, "puback 1"), Answer::Ready(2, "puback 2")]
    );
    assert!(ledger.is_empty());
}

#[test]
fn an_answer_owed_now_goes_at_once_when_nothing_waits_before_it() {
    let mut ledger = Ledger::new();
    ledger.owe_now("receipt");
    assert_eq!(answers(&mut ledger), [Answer::Ready(1, "receipt")]);
    let waiting = ledger.owe("send");
    ledger.owe_now("receipt after the send");
    assert_eq!(answers(&mut ledger), []);
    assert_eq!(
        ledger.owed().copied().collect::<Vec<_>>(),
        ["send", "receipt after the send"]
    );
    assert_eq!(ledger.waiting().copied().collect::<Vec<_>>(), ["send"]);
    ledger.settle(waiting, Durability::OnDisk);
    assert_eq!(
        answers(&mut ledger),
        [
            Answer::Ready(2, "send"),
            Answer::Ready(3, "receipt after the send")
        ]
    );
}

#[test]
fn confirms_go_as_one_multiple_ack_up_to_the_first_answer_still_waiting() {
    let mut ledger = Ledger::<()>::new();
    for _ in 0..3 {
        let seq = ledger.owe(());
        ledger.ready(seq);
    }
    let stored = ledger.owe(());
    for _ in 0..2 {
        let seq = ledger.owe(());
        ledger.ready(seq);
    }
    assert_eq!(confirms(&mut ledger), [ack(3, 3)]);
    ledger.settle(stored, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [ack(6, 3)]);
    let single = ledger.owe_now(());
    assert_eq!(confirms(&mut ledger), [ack(single, 1)]);
}

#[test]
fn a_failed_write_is_answered_at_once_and_no_ack_covers_it() {
    let mut ledger = Ledger::<()>::new();
    let first = ledger.owe(());
    let failing = ledger.owe(());
    let after = ledger.owe_now(());
    ledger.settle(failing, Durability::Failed);
    assert_eq!(
        confirms(&mut ledger),
        [Confirm::Nack(failing)],
        "a failure needs no disk: it goes ahead of the answer still waiting"
    );
    ledger.settle(first, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [ack(first, 1), ack(after, 1)]);
    assert!(ledger.is_empty());
}

#[test]
fn acks_around_a_refused_publication_split_in_two() {
    let mut ledger = Ledger::<()>::new();
    for _ in 0..5 {
        ledger.owe_now(());
    }
    ledger.fail(3);
    assert_eq!(
        confirms(&mut ledger),
        [ack(2, 2), Confirm::Nack(3), ack(5, 2)]
    );
}

#[test]
fn nothing_is_answered_twice() {
    let mut ledger = Ledger::<()>::new();
    let refused = ledger.owe(());
    ledger.fail(refused);
    // The store reports on the refused message later (it was written for another queue).
    ledger.settle(refused, Durability::Failed);
    ledger.settle(refused, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [Confirm::Nack(refused)]);
    let next = ledger.owe_now(());
    // A report on an answer released already, or never owed, changes nothing.
    ledger.settle(refused, Durability::Failed);
    ledger.settle(next, Durability::Failed);
    ledger.settle(99, Durability::Failed);
    assert_eq!(confirms(&mut ledger), [ack(next, 1)]);
    assert_eq!(confirms(&mut ledger), []);
}

#[test]
fn a_failure_behind_an_answer_still_waiting_is_stepped_over_later() {
    let mut ledger = Ledger::<()>::new();
    ledger.owe_now(());
    let waiting = ledger.owe(());
    let refused = ledger.owe_now(());
    ledger.owe_now(());
    ledger.fail(refused);
    assert_eq!(confirms(&mut ledger), [ack(1, 1), Confirm::Nack(refused)]);
    ledger.settle(waiting, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [ack(2, 1), ack(4, 1)]);
}

#[test]
fn answers_given_up_are_handed_back_in_order() {
    let mut ledger = Ledger::new();
    ledger.owe("a");
    ledger.owe_now("b");
    assert_eq!(ledger.abandon().collect::<Vec<_>>(), ["a", "b"]);
    assert!(ledger.is_empty());
    let next = ledger.owe_now("c");
    assert_eq!(next, 3, "numbers keep counting");
    assert_eq!(answers(&mut ledger), [Answer::Ready(3, "c")]);
}

/// A vhost on `store` with a durable queue `durable` and a transient one `transient`.
async fn vhost_on(store: Arc<HeldStore>) -> Arc<VirtualHost> {
    let vhost = crate::persistence::testing::vhost_on(store);
    for (name, durable) in [("durable", true), ("transient", false)] {
        let spec = QueueSpec {
            name: name.into(),
            durable,
            ..Default::default()
        };
        vhost
            .declare_queue(spec, false, false, ConnectionId(1))
            .await
            .expect("declare");
    }
    vhost
}

fn message(queue: &str, persistent: bool) -> Message {
    Message::new(
        "",
        queue,
        Properties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        },
        Bytes::from_static(b"body"),
    )
}

/// A publisher as an adapter drives one: each publication owes an answer in the ledger, its
/// store completion reports back through a channel, and the ledger says what may go.
struct Publisher {
    vhost: Arc<VirtualHost>,
    ledger: Ledger<&'static str>,
    notices: mpsc::UnboundedReceiver<(Seq, Durability)>,
    notify: mpsc::UnboundedSender<(Seq, Durability)>,
}

impl Publisher {
    fn new(vhost: Arc<VirtualHost>) -> Self {
        let (notify, notices) = mpsc::unbounded_channel();
        Self {
            vhost,
            ledger: Ledger::new(),
            notices,
            notify,
        }
    }

    async fn publish(&mut self, answer: &'static str, queue: &str, persistent: bool) -> Persisted {
        let seq = self.ledger.owe(answer);
        let notify = self.notify.clone();
        let mut on_durable = move || -> OnDurable {
            let notify = notify.clone();
            Box::new(move |durability| {
                let _ = notify.send((seq, durability));
            })
        };
        let exchange = self.vhost.exchange("").expect("default exchange");
        let published = self
            .vhost
            .publish(
                Publication::new(&exchange, message(queue, persistent)).on_durable(&mut on_durable),
            )
            .await;
        match published.stored {
            Persisted::Unneeded => self.ledger.ready(seq),
            Persisted::Refused => self.ledger.fail(seq),
            Persisted::Pending => {}
        }
        published.stored
    }

    fn answers(&mut self) -> Vec<Answer<&'static str>> {
        while let Ok((seq, durability)) = self.notices.try_recv() {
            self.ledger.settle(seq, durability);
        }
        answers(&mut self.ledger)
    }
}

#[tokio::test]
async fn answers_wait_for_the_fsync_that_covers_their_message() {
    let store = Arc::new(HeldStore::new());
    let mut publisher = Publisher::new(vhost_on(store.clone()).await);
    assert_eq!(
        publisher.publish("stored", "durable", true).await,
        Persisted::Pending
    );
    assert_eq!(
        publisher.publish("transient", "durable", false).await,
        Persisted::Unneeded
    );
    assert_eq!(
        publisher
            .publish("to a transient queue", "transient", true)
            .await,
        Persisted::Unneeded
    );
    assert_eq!(
        publisher.answers(),
        [],
        "all wait behind the stored message"
    );
    store.settle(Durability::OnDisk);
    assert_eq!(
        publisher.answers(),
        [
            Answer::Ready(1, "stored"),
            Answer::Ready(2, "transient"),
            Answer::Ready(3, "to a transient queue"),
        ]
    );
}

#[tokio::test]
async fn a_failed_write_is_answered_as_a_failure() {
    let store = Arc::new(HeldStore::new());
    let mut publisher = Publisher::new(vhost_on(store.clone()).await);
    publisher.publish("first", "durable", true).await;
    publisher.publish("second", "durable", true).await;
    let mut held = store.take_held().into_iter();
    if let Some(first) = held.next() {
        first(Durability::OnDisk);
    }
    assert_eq!(publisher.answers(), [Answer::Ready(1, "first")]);
    for completion in held {
        completion(Durability::Failed);
    }
    assert_eq!(publisher.answers(), [Answer::Failed(2, "second")]);
    assert!(publisher.ledger.is_empty());
}

#[tokio::test]
async fn a_publication_the_store_refuses_is_answered_as_a_failure() {
    let store = Arc::new(HeldStore::refusing());
    let mut publisher = Publisher::new(vhost_on(store).await);
    assert_eq!(
        publisher.publish("refused", "durable", true).await,
        Persisted::Refused
    );
    assert_eq!(publisher.answers(), [Answer::Failed(1, "refused")]);
}
