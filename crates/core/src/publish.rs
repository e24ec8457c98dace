//! The publish pipeline, the one path every protocol publishes through (AMQP, MQTT, STOMP;
//! dead letters too): route the message, ask full queues whether they take it (`x-overflow`
//! reject-publish), write it to the message store when it is persistent and reached a durable
//! queue (or reached a quorum queue, which keeps every message), and only then hand it to the queues; report what happened ([`Published`]) so the
//! adapter can answer its publisher (a mandatory return, a refusal, an answer that waits for
//! the disk through its [`crate::ledger::Ledger`]).
//!
//! "Store before any queue sees it" lives here and nowhere else: a persistent message the
//! store refuses ([`NotStored`]) reaches no queue, as RabbitMQ does not enqueue what it could
//! not store, and the publisher is told ([`Persisted::Refused`]). A message whose write fails
//! after it was enqueued (it was in the batch that hit the error) is withdrawn from the
//! durable queues that still hold it ready, so it is not delivered from memory as if it were
//! stored; one already delivered to a consumer cannot be called back. A failed batch fails
//! many messages at once: their withdrawals are gathered ([`Unstored`]) and each queue gets one
//! command naming all of its failed messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::exchange::{Exchange, ExchangeHandler, HeldMessage};
use crate::flow::FlowHold;
use crate::message::Message;
use crate::persistence::{Durability, NotStored, OnDurable, QueueKey, StoredAt};
use crate::queue::QueueHandle;
use crate::stats::MessageCounters;
use crate::vhost::VirtualHost;

/// Messages of a vhost whose write failed, waiting to be withdrawn from the durable queues
/// they were routed to. The first failure of a burst spawns one task that withdraws all that
/// gathered meanwhile, one command per queue.
#[derive(Default)]
pub(crate) struct Unstored {
    /// Failed store ids with the queues they were written for.
    pending: Mutex<Vec<(u64, Arc<[QueueKey]>)>>,
    /// The runtime the withdrawing task runs on (completions run on the store's thread).
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Unstored {
    /// Notes the runtime publishes run on, once.
    fn note_runtime(&self) {
        if self.runtime.get().is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let _ = self.runtime.set(runtime);
        }
    }

    /// Message `id`, written for `queues` of `vhost`, failed to reach the disk.
    fn failed(vhost: Weak<VirtualHost>, id: u64, queues: Arc<[QueueKey]>) {
        let Some(host) = vhost.upgrade() else {
            return;
        };
        let unstored = host.unstored();
        let first = {
            let mut pending = unstored.pending.lock();
            pending.push((id, queues));
            pending.len() == 1
        };
        if !first {
            return;
        }
        let Some(runtime) = unstored.runtime.get() else {
            tracing::warn!(
                vhost = %host.name,
                "no runtime to withdraw messages whose write failed"
            );
            unstored.pending.lock().clear();
            return;
        };
        runtime.spawn(async move {
            let Some(host) = vhost.upgrade() else {
                return;
            };
            let failed = std::mem::take(&mut *host.unstored().pending.lock());
            let mut by_queue: HashMap<&str, HashSet<u64>> = HashMap::new();
            for (id, queues) in &failed {
                for key in queues.iter() {
                    by_queue.entry(key.queue.as_str()).or_default().insert(*id);
                }
            }
            for (name, ids) in by_queue {
                if let Some(queue) = host.queue(name) {
                    queue.withdraw_unstored(ids).await;
                }
            }
        });
    }
}

/// Makes the completion that hears when a publication's message is on disk (or failed to get
/// there). Called only when the message is written to the store, so a publication that needs
/// no write (transient, or no durable queue took it) allocates nothing for it.
pub type MakeOnDurable<'a> = &'a mut (dyn FnMut() -> OnDurable + Send);

/// A message to publish, and what its publisher asks of the pipeline.
pub struct Publication<'a> {
    /// The exchange it is published to.
    pub exchange: &'a Exchange,
    /// The message; the pipeline gives it its store id when it is written.
    pub message: Message,
    /// Hand the message back when no queue takes it ([`Published::returned`]; AMQP's
    /// `mandatory`).
    pub mandatory: bool,
    /// Where the store reports the message on disk, when it is written.
    pub on_durable: Option<MakeOnDurable<'a>>,
    /// The publishing protocol's message counters.
    pub counters: Option<&'a MessageCounters>,
}

impl<'a> Publication<'a> {
    /// `message` published to `exchange`, not mandatory, with no one to tell when it is on disk.
    pub fn new(exchange: &'a Exchange, message: Message) -> Self {
        Self {
            exchange,
            message,
            mandatory: false,
            on_durable: None,
            counters: None,
        }
    }

    /// Counts the publish in its protocol's `counters`.
    pub fn counted(mut self, counters: &'a MessageCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Asks for the message back when no queue takes it.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Reports the message on disk (or failed) through the completion `make` makes, when the
    /// message is written to the store.
    pub fn on_durable(mut self, make: MakeOnDurable<'a>) -> Self {
        self.on_durable = Some(make);
        self
    }
}

/// What became of a published message.
#[derive(Debug, Clone)]
pub struct Published {
    /// How many queues it was routed to and admitted by (before the store and the queues
    /// themselves had their say).
    pub routed: usize,
    /// How many queues took it.
    pub queues: usize,
    /// Whether it went to the message store.
    pub stored: Persisted,
    /// Whether a full queue refused it (`x-overflow` reject-publish).
    pub refused: bool,
    /// A queue that took it and has fallen behind: credit flow holds the publisher.
    pub behind: Option<QueueHandle>,
    /// The message, when it was mandatory and no queue took it (none refused it, and the
    /// store did not refuse it either): the publisher gets it back.
    pub returned: Option<Arc<Message>>,
}

impl Published {
    /// Whether the message is lost to its publisher: a full queue refused it, the store could
    /// not write it, or every queue it was routed to went away before taking it. (A message
    /// routed nowhere is not lost in this sense: it was never meant for a queue.) A publisher
    /// that asked to hear about it is answered negatively.
    pub fn is_lost(&self) -> bool {
        self.refused || self.stored == Persisted::Refused || (self.routed > 0 && self.queues == 0)
    }

    /// Holds the publishing connection by credit flow (in `slot`) when a queue that took
    /// the message has fallen behind and nothing holds it yet.
    pub fn hold(&self, slot: &mut Option<FlowHold>) {
        if slot.is_none()
            && let Some(queue) = &self.behind
        {
            *slot = Some(FlowHold::new(queue.clone()));
        }
    }
}

/// Whether a published message went to the message store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// It did not need to (transient, or no durable queue took it); no completion was made.
    Unneeded,
    /// It is being written; the completion runs once it is on disk or has failed.
    Pending,
    /// The store cannot write now: the message reached no queue and must not be
    /// acknowledged; the completion was dropped unrun.
    Refused,
}

/// Whether a queue keeps persistent messages in the message store.
pub fn is_durable(queue: &QueueHandle) -> bool {
    queue.spec().durable && !queue.spec().exclusive
}

/// Whether `queue` keeps `message` in the message store: a durable queue keeps persistent
/// messages, and a quorum queue keeps every message, as RabbitMQ's quorum queues do.
fn keeps(queue: &QueueHandle, message: &Message) -> bool {
    is_durable(queue) && (message.properties.is_persistent() || queue.arguments().is_quorum())
}

/// One answer for a publisher from several completions: the holders that store a held
/// message and the message store's write for its queues. It answers once every part has
/// reported and [`Joint::seal`] says no more parts come, [`Durability::Failed`] when any part
/// failed; [`Joint::abandon`] drops the answer unrun (the publisher was refused at once).
struct Joint {
    state: Arc<Mutex<JointState>>,
}

struct JointState {
    /// Parts not yet reported, plus one until sealed.
    waiting: usize,
    failed: bool,
    answer: Option<OnDurable>,
}

impl Joint {
    fn new(answer: OnDurable) -> Self {
        Self {
            state: Arc::new(Mutex::new(JointState {
                waiting: 1,
                failed: false,
                answer: Some(answer),
            })),
        }
    }

    /// A completion for one more part.
    fn part(&self) -> OnDurable {
        self.state.lock().waiting += 1;
        let state = self.state.clone();
        Box::new(move |durability| Self::arrive(&state, durability))
    }

    /// No more parts come.
    fn seal(&self) {
        Self::arrive(&self.state, Durability::OnDisk);
    }

    fn abandon(&self) {
        self.state.lock().answer = None;
    }

    fn arrive(state: &Mutex<JointState>, durability: Durability) {
        let answer = {
            let mut state = state.lock();
            state.failed |= durability == Durability::Failed;
            state.waiting = state.waiting.saturating_sub(1);
            if state.waiting > 0 {
                return;
            }
            let failed = state.failed;
            state.answer.take().map(|answer| (answer, failed))
        };
        if let Some((answer, failed)) = answer {
            answer(if failed {
                Durability::Failed
            } else {
                Durability::OnDisk
            });
        }
    }
}

impl VirtualHost {
    /// Publishes through the pipeline: routes the message, admits it to full queues, writes it
    /// to the message store first when it is persistent and reaches a durable queue, and hands
    /// it to every queue that takes it.
    pub async fn publish(&self, publication: Publication<'_>) -> Published {
        let Publication {
            exchange,
            message,
            mandatory,
            on_durable,
            counters,
        } = publication;
        let mut queues = Vec::new();
        let mut holders = Vec::new();
        self.route(exchange, &message, &mut queues, &mut holders);
        exchange.counters().count(queues.len());
        let held = !holders.is_empty();
        let published = if held {
            self.deliver_held(queues, holders, message, on_durable)
                .await
        } else {
            self.deliver(queues, message, mandatory, on_durable).await
        };
        if let Some(counters) = counters {
            counters.published(held || published.routed > 0, published.returned.is_some());
        }
        published
    }

    /// Republishes a dead letter (made by the queue that let it die) through the exchange it
    /// names. A missing exchange drops it, as in RabbitMQ; so does a queue it already died in
    /// without a rejection since (a cycle).
    pub(crate) async fn publish_dead_letter(&self, message: Message) {
        let Ok(exchange) = self.exchange(&message.exchange) else {
            tracing::debug!(exchange = %message.exchange, "dead-letter exchange missing; message dropped");
            return;
        };
        let mut queues = Vec::new();
        let mut holders = Vec::new();
        self.route(&exchange, &message, &mut queues, &mut holders);
        queues.retain(|queue| !crate::queue::is_dead_letter_cycle(&message, queue.name()));
        if holders.is_empty() {
            self.deliver(queues, message, false, None).await;
        } else {
            self.deliver_held(queues, holders, message, None).await;
        }
    }

    /// Hands `message` to `queues` as [`Self::deliver`] does, then to the exchanges that hold
    /// it. A publisher waiting for an answer gets one ([`Joint`]) once the message store has
    /// written the message for the queues and, for a persistent message, every holder has
    /// stored it; a transient held message is answered without waiting for its holders. A held
    /// message is never returned as unroutable: its exchange took it.
    async fn deliver_held(
        &self,
        queues: Vec<QueueHandle>,
        holders: Vec<Arc<dyn ExchangeHandler>>,
        message: Message,
        on_durable: Option<MakeOnDurable<'_>>,
    ) -> Published {
        // One answer for the publisher: the store's write for the queues (a quorum queue keeps
        // even a transient message) and, for a persistent message, every holder's.
        let joint = on_durable.map(|make| Joint::new(make()));
        let held = message.clone();
        let mut make_part = || -> OnDurable {
            match &joint {
                Some(joint) => joint.part(),
                None => Box::new(|_| {}),
            }
        };
        let mut published = self
            .deliver(
                queues,
                message,
                false,
                joint
                    .is_some()
                    .then_some(&mut make_part as MakeOnDurable<'_>),
            )
            .await;
        published.routed += holders.len();
        // Held only once the queues took it: a message a full queue or the store refused is
        // refused to its publisher, and no holder keeps it to deliver later.
        if published.refused || published.stored == Persisted::Refused {
            if let Some(joint) = &joint {
                joint.abandon();
            }
            return published;
        }
        let persistent = held.properties.is_persistent();
        for holder in &holders {
            let part = if persistent {
                joint.as_ref().map(Joint::part)
            } else {
                None
            };
            if holder.hold(HeldMessage::new(held.clone(), part)).is_err() {
                if let Some(joint) = &joint {
                    joint.abandon();
                }
                published.stored = Persisted::Refused;
                return published;
            }
            published.queues += 1;
        }
        if let Some(joint) = joint {
            published.stored = Persisted::Pending;
            joint.seal();
        }
        published
    }

    /// Writes `message` to the message store when it has a store id (it is persistent and one
    /// of `queues` is durable), before any queue sees it. Returns where
    /// it lies (None when it needs no write, and `on_durable` is not called), or [`NotStored`]
    /// when the store cannot write now: then it must reach no queue. If the write fails later,
    /// the completion hears so and the durable queues withdraw it while it is still ready.
    fn store_message(
        &self,
        message: &Message,
        queues: &[QueueHandle],
        on_durable: Option<MakeOnDurable<'_>>,
    ) -> Result<Option<StoredAt>, NotStored> {
        let (Some(store), Some(id)) = (&self.storage().messages, message.store_id) else {
            return Ok(None);
        };
        // The keys go to the store and stay with the completion, which needs them only if the
        // write fails (then the queues are looked up by name).
        let durable: Arc<[QueueKey]> = queues
            .iter()
            .filter(|q| keeps(q, message))
            .map(|q| QueueKey {
                vhost: self.name.clone(),
                queue: q.name().to_owned(),
            })
            .collect();
        self.unstored().note_runtime();
        let vhost = self.me();
        let holders = durable.clone();
        let on_durable = on_durable.map(|make| make());
        let completion: OnDurable = Box::new(move |durability| {
            if durability == Durability::Failed {
                Unstored::failed(vhost, id, holders);
            }
            if let Some(on_durable) = on_durable {
                on_durable(durability);
            }
        });
        store
            .publish(id, &durable, message, Some(completion))
            .map(Some)
    }

    /// Hands `message` to those of `queues` that take it, writing it to the message store
    /// first when it is persistent and one of them is durable.
    async fn deliver(
        &self,
        queues: Vec<QueueHandle>,
        mut message: Message,
        mandatory: bool,
        on_durable: Option<MakeOnDurable<'_>>,
    ) -> Published {
        let admitted = crate::queue::admit(queues, &message).await;
        let (queues, refused) = (admitted.queues, admitted.refused);
        let routed = queues.len();
        // Only a message that reached a queue keeping it is written (a persistent message
        // and a durable queue, or a quorum queue), under an id of its own (a dead letter's
        // copy does not keep its original's).
        message.store_id = match &self.storage().messages {
            Some(store) if queues.iter().any(|q| keeps(q, &message)) => Some(store.next_id()),
            _ => None,
        };
        if message.store_id.is_some()
            && let Some(room) = self
                .storage()
                .messages
                .as_ref()
                .and_then(|store| store.room())
        {
            // The store's writer is behind: wait here, not on a runtime thread.
            room.await;
        }
        let stored = match self.store_message(&message, &queues, on_durable) {
            Ok(stored) => stored,
            Err(NotStored) => {
                crate::queue::release_admission(&queues, &message);
                return Published {
                    routed,
                    queues: 0,
                    stored: Persisted::Refused,
                    refused,
                    behind: None,
                    returned: None,
                };
            }
        };
        let message = Arc::new(message);
        let mut taken = 0;
        let mut behind = None;
        for queue in &queues {
            let accepted = match stored {
                Some(at) if keeps(queue, &message) => {
                    queue.publish_stored(message.clone(), at).await
                }
                _ => queue.publish(message.clone()).await,
            };
            if accepted.is_ok() {
                taken += 1;
                if behind.is_none() && queue.is_behind() {
                    behind = Some(queue.clone());
                }
            }
        }
        Published {
            routed,
            queues: taken,
            stored: if stored.is_some() {
                Persisted::Pending
            } else {
                Persisted::Unneeded
            },
            refused,
            behind,
            returned: (mandatory && taken == 0 && !refused).then_some(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::message::Properties;
    use crate::persistence::testing::HeldStore;
    use crate::queue::{ConnectionId, QueueSpec};

    async fn durable_queue_on(store: Arc<HeldStore>) -> (Arc<VirtualHost>, QueueHandle) {
        let vhost = crate::persistence::testing::vhost_on(store);
        let spec = QueueSpec {
            name: "q".into(),
            durable: true,
            ..Default::default()
        };
        let queue = vhost
            .declare_queue(spec, false, false, ConnectionId(1))
            .await
            .expect("declare")
            .handle;
        (vhost, queue)
    }

    /// A maker of completions that report on the returned receiver, as an adapter's do.
    fn reported() -> (
        impl FnMut() -> OnDurable + Send,
        tokio::sync::mpsc::UnboundedReceiver<Durability>,
    ) {
        let (tx, told) = tokio::sync::mpsc::unbounded_channel();
        let make = move || -> OnDurable {
            let tx = tx.clone();
            Box::new(move |durability| {
                let _ = tx.send(durability);
            })
        };
        (make, told)
    }

    fn persistent() -> Message {
        Message::new(
            "",
            "q",
            Properties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            Bytes::from_static(b"body"),
        )
    }

    #[tokio::test]
    async fn a_message_the_store_refuses_reaches_no_queue() {
        let store = Arc::new(HeldStore::refusing());
        let (vhost, queue) = durable_queue_on(store).await;
        let exchange = vhost.exchange("").expect("default exchange");
        let published = vhost
            .publish(Publication::new(&exchange, persistent()))
            .await;
        assert_eq!(published.stored, Persisted::Refused);
        assert_eq!(published.queues, 0);
        assert_eq!(queue.stats().await.expect("stats").ready, 0);
    }

    #[tokio::test]
    async fn a_message_whose_write_fails_is_withdrawn_from_the_queue_holding_it() {
        let store = Arc::new(HeldStore::new());
        let (vhost, queue) = durable_queue_on(store.clone()).await;
        let exchange = vhost.exchange("").expect("default exchange");
        let (mut on_durable, mut told) = reported();
        let published = vhost
            .publish(Publication::new(&exchange, persistent()).on_durable(&mut on_durable))
            .await;
        assert_eq!(published.stored, Persisted::Pending);
        assert_eq!(queue.stats().await.expect("stats").ready, 1);
        store.settle(Durability::Failed);
        assert_eq!(told.recv().await, Some(Durability::Failed));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while queue.stats().await.expect("stats").ready > 0 {
            assert!(tokio::time::Instant::now() < deadline, "still ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.removed(), [1], "the store hears it left");
    }

    /// Holds every message and keeps its completion, so a test decides when it is stored.
    #[derive(Default)]
    struct Holding {
        held: Mutex<Vec<HeldMessage>>,
    }

    struct HoldAll;

    impl crate::exchange::Router for HoldAll {
        fn route(
            &self,
            _message: &Message,
            _out: &mut Vec<crate::exchange::BindingTarget>,
        ) -> crate::exchange::Routing {
            crate::exchange::Routing::Hold
        }
    }

    impl ExchangeHandler for Holding {
        fn compile(
            &self,
            _bindings: &[crate::exchange::Binding],
        ) -> Box<dyn crate::exchange::Router> {
            Box::new(HoldAll)
        }

        fn hold(&self, held: HeldMessage) -> Result<(), NotStored> {
            self.held.lock().push(held);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_held_persistent_message_is_confirmed_once_its_holder_and_the_store_have_it() {
        let store = Arc::new(HeldStore::new());
        let (vhost, queue) = durable_queue_on(store.clone()).await;
        let holding = Arc::new(Holding::default());
        let holder = Arc::new(Exchange::new(
            crate::exchange::ExchangeSpec {
                name: "holder".into(),
                kind: "test".into(),
                ..Default::default()
            },
            holding.clone(),
        ));
        let (mut on_durable, mut told) = reported();
        let published = vhost
            .publish(Publication::new(&holder, persistent()).on_durable(&mut on_durable))
            .await;
        assert_eq!(published.stored, Persisted::Pending);
        assert_eq!((published.routed, published.queues), (1, 1));
        assert!(
            published.returned.is_none(),
            "a held message is not returned"
        );
        assert_eq!(queue.stats().await.expect("stats").ready, 0);
        assert!(told.try_recv().is_err(), "not answered before it is stored");
        let (message, on_stored) = holding.held.lock().remove(0).into_parts();
        assert_eq!(message.body, persistent().body);
        on_stored.expect("a completion for a persistent message")(Durability::OnDisk);
        assert_eq!(told.recv().await, Some(Durability::OnDisk));
        let transient = vhost
            .publish(
                Publication::new(
                    &holder,
                    Message::new("", "q", Properties::default(), Bytes::new()),
                )
                .on_durable(&mut on_durable),
            )
            .await;
        // A transient held message is answered at once, without waiting for its holder.
        assert_eq!(transient.stored, Persisted::Pending);
        assert_eq!(told.recv().await, Some(Durability::OnDisk));
        let (message, on_stored) = holding.held.lock().remove(0).into_parts();
        assert!(message.body.is_empty());
        assert!(
            on_stored.is_none(),
            "nothing waits for a transient message's holder"
        );
    }

    /// A failed batch fails many messages at once: withdrawing them takes one command per
    /// queue and one pass over its ready messages, not one scan per message (which froze a
    /// queue with a long backlog). The deadline only catches such a freeze.
    #[tokio::test]
    async fn many_failed_writes_are_withdrawn_in_one_pass() {
        const KEPT: usize = 50_000;
        const FAILED: usize = 50_000;
        let store = Arc::new(HeldStore::new());
        let (vhost, queue) = durable_queue_on(store.clone()).await;
        let exchange = vhost.exchange("").expect("default exchange");
        for _ in 0..KEPT {
            vhost
                .publish(Publication::new(&exchange, persistent()))
                .await;
        }
        store.settle(Durability::OnDisk);
        for _ in 0..FAILED {
            vhost
                .publish(Publication::new(&exchange, persistent()))
                .await;
        }
        assert_eq!(
            queue.stats().await.expect("stats").ready as usize,
            KEPT + FAILED
        );
        store.settle(Durability::Failed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while queue.stats().await.expect("stats").ready as usize > KEPT {
            assert!(tokio::time::Instant::now() < deadline, "withdrawal froze");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(queue.stats().await.expect("stats").ready as usize, KEPT);
        assert_eq!(store.removed().len(), FAILED);
    }
}
