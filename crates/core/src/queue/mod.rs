//! Queues: a handle that adapters and exchanges hold, the commands it sends, and what consumers
//! receive. Each queue runs as one task ([`actor`]) that owns its messages, its consumers and
//! their credit; everything else talks to it through its bounded mailbox, which is also where
//! publishers feel backpressure.

mod actor;
mod admission;
pub mod arguments;
mod blocks;
mod budget;
mod credit;
mod dead_letter;
mod level;
mod ready;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

pub use admission::{Admitted, admit, release_admission};
pub use arguments::{Overflow, QueueArguments, QueueType};
pub use budget::{
    ConsumerSink, DEFAULT_DELIVERY_BUDGET, DELIVERY_OVERHEAD, DeliveryBudget, DeliveryPermit,
};
pub use credit::ChannelCredit;
pub(crate) use dead_letter::is_cycle as is_dead_letter_cycle;

use crate::error::{CoreError, CoreResult};
use crate::field::FieldTable;
use crate::message::Message;
use crate::persistence::StoredAt;

pub(crate) use actor::spawn;

#[cfg(test)]
mod paging_tests;
#[cfg(test)]
mod tests;

/// Identifies one client connection (of any protocol) for the life of the broker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies one channel (AMQP) or session (MQTT, STOMP: number 0) of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    /// The connection the channel belongs to.
    pub connection: ConnectionId,
    /// The channel number within its connection.
    pub number: u16,
    /// Tells apart successive channels that reuse a number, so a delivery meant for a closed
    /// channel is never taken for one of its successor's.
    pub generation: u32,
}

/// A queue's position for one message: unique within the queue, increasing in publish order.
pub type MessageSeq = u64;

/// A message handed to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The channel whose consumer receives it.
    pub channel: ChannelId,
    /// The consumer's tag.
    pub consumer_tag: Arc<str>,
    /// The queue it comes from; acknowledgements go back to it.
    pub queue: QueueHandle,
    /// Its position in the queue, to name it in an acknowledgement.
    pub seq: MessageSeq,
    /// The message itself.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the consumer must acknowledge it (false for no-ack consumers).
    pub needs_ack: bool,
    /// Its share of the connection's delivery budget, given back when the delivery is
    /// dropped: the connection drops it once it has written the delivery out.
    pub permit: DeliveryPermit,
}

/// What a queue tells a consumer's connection.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// A message for one of the connection's consumers.
    Deliver(Delivery),
    /// The queue was deleted: the consumer no longer exists.
    Cancelled {
        /// The consumer's channel.
        channel: ChannelId,
        /// The consumer's tag.
        consumer_tag: Arc<str>,
    },
}

/// A consumer as the queue knows it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The tag, unique within its channel.
    pub tag: Arc<str>,
    /// The channel it belongs to.
    pub channel: ChannelId,
    /// Deliveries are settled on sending (no acknowledgement expected).
    pub no_ack: bool,
    /// Transient (non-persistent) messages are settled on sending, as for a no-ack consumer,
    /// and take no `prefetch`; persistent ones wait for an acknowledgement (and while they
    /// fill the prefetch, everything behind them waits: the queue delivers in order). MQTT
    /// sessions: a transient message goes out at QoS 0, which has no acknowledgement.
    pub settles_transient: bool,
    /// No other consumer may use the queue while this one exists.
    pub exclusive: bool,
    /// At most this many unacknowledged deliveries (0 = unlimited).
    pub prefetch: u32,
    /// The channel-wide limit shared by every consumer of the channel (basic.qos global).
    pub channel_credit: Option<Arc<ChannelCredit>>,
    /// Where deliveries go.
    pub sink: ConsumerSink,
    /// Its priority (`x-priority`): consumers of a higher priority receive first.
    pub priority: i64,
}

/// What a client asks for when it declares a queue.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueSpec {
    /// The name (already generated when the client left it empty).
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by one connection, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away (after having had one).
    pub auto_delete: bool,
    /// Declaration arguments (`x-message-ttl`, ...).
    pub arguments: FieldTable,
}

/// Counts reported by a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub ready: u32,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u32,
    /// Active consumers.
    pub consumers: u32,
    /// Transient messages dropped on arrival because the queue was at its transient limit
    /// ([`QueueHandle::limit_transient`]), since the queue started.
    pub dropped_transient: u64,
}

/// A consumer as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// Its tag.
    pub tag: Arc<str>,
    /// Its channel.
    pub channel: ChannelId,
    /// Whether it acknowledges.
    pub ack_required: bool,
    /// Whether it is the queue's exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch (0: unlimited).
    pub prefetch: u32,
    /// Its priority.
    pub priority: i64,
    /// Whether it receives: false for a single-active-consumer queue's waiting consumers.
    pub active: bool,
}

/// The answer to a basic.get that found a message.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// Its position in the queue.
    pub seq: MessageSeq,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Messages still ready after this one.
    pub remaining: u32,
}

pub(crate) enum QueueCommand {
    Publish(Arc<Message>, Option<StoredAt>),
    /// The message store failed to write the messages with these store ids: drop those still
    /// ready, so they are not delivered as if they were stored.
    WithdrawUnstored(HashSet<u64>),
    /// A message the queue refused (`x-overflow` reject-publish-dlx): dead-letter it.
    DeadLetterRefused(Arc<Message>),
    /// The queue was redeclared: it counts as used (`x-expires`).
    Touch,
    Consume(ConsumerSpec, oneshot::Sender<CoreResult<()>>),
    Cancel(ChannelId, Arc<str>, oneshot::Sender<bool>),
    Ack(ChannelId, Vec<MessageSeq>),
    Reject(ChannelId, Vec<MessageSeq>, bool),
    Get(ChannelId, bool, oneshot::Sender<Option<GetResult>>),
    Purge(oneshot::Sender<u32>),
    Stats(oneshot::Sender<QueueStats>),
    Consumers(oneshot::Sender<Vec<ConsumerSummary>>),
    ChannelClosed(ChannelId),
    Recover(ChannelId),
    Wake,
    Delete {
        if_unused: bool,
        if_empty: bool,
        /// Remove the queue's stored definition once the preconditions hold.
        forget_record: bool,
        reply: oneshot::Sender<CoreResult<u32>>,
    },
}

pub(crate) struct QueueShared {
    pub(crate) spec: QueueSpec,
    /// Its arguments, parsed.
    pub(crate) arguments: QueueArguments,
    /// The length count publishers check, for queues that refuse publishes when full.
    pub(crate) admission: Option<Arc<admission::Admission>>,
    pub(crate) owner: Option<ConnectionId>,
    pub(crate) vhost: String,
    tx: mpsc::Sender<QueueCommand>,
    /// Settlements (acks, rejects) and wake-ups: a lane of their own that the queue serves
    /// first, so a consumer's acks never wait behind publishes in a full mailbox (which
    /// would starve the consumer exactly when the queue is busiest). Not bounded by count:
    /// a settlement answers a delivery, and deliveries are bounded by prefetch and the
    /// delivery budget.
    settle_tx: mpsc::UnboundedSender<QueueCommand>,
    deleted: AtomicBool,
    /// Tells publishers waiting for the queue to catch up ([`QueueHandle::caught_up`]).
    caught_up: tokio::sync::Notify,
    /// Whether a publisher waits on `caught_up`.
    awaited: AtomicBool,
    /// Transient messages arriving while this many are ready are dropped (0 = no limit).
    transient_limit: AtomicU32,
    /// How many were.
    pub(crate) dropped_transient: AtomicU64,
    /// What the task has counted, as of its last batch.
    pub(crate) counters: crate::stats::QueueCounters,
}

/// A cheap, clonable reference to a running queue.
#[derive(Clone)]
pub struct QueueHandle(Arc<QueueShared>);

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueHandle({})", self.0.spec.name)
    }
}

impl QueueHandle {
    pub(crate) fn new(
        spec: QueueSpec,
        arguments: QueueArguments,
        owner: Option<ConnectionId>,
        vhost: String,
        tx: mpsc::Sender<QueueCommand>,
        settle_tx: mpsc::UnboundedSender<QueueCommand>,
    ) -> Self {
        Self(Arc::new(QueueShared {
            spec,
            admission: admission::Admission::for_arguments(&arguments).map(Arc::new),
            arguments,
            owner,
            vhost,
            tx,
            settle_tx,
            deleted: AtomicBool::new(false),
            caught_up: tokio::sync::Notify::new(),
            awaited: AtomicBool::new(false),
            transient_limit: AtomicU32::new(0),
            dropped_transient: AtomicU64::new(0),
            counters: crate::stats::QueueCounters::default(),
        }))
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.0.spec.name
    }

    /// The name of the vhost it lives in.
    pub fn vhost_name(&self) -> &str {
        &self.0.vhost
    }

    /// What the queue was declared with.
    pub fn spec(&self) -> &QueueSpec {
        &self.0.spec
    }

    /// Its arguments, parsed.
    pub fn arguments(&self) -> &QueueArguments {
        &self.0.arguments
    }

    /// The connection owning this exclusive queue.
    pub fn owner(&self) -> Option<ConnectionId> {
        self.0.owner
    }

    /// Commands waiting in the queue's mailbox.
    fn waiting(&self) -> usize {
        self.0.tx.max_capacity() - self.0.tx.capacity()
    }

    /// Whether the queue has fallen behind its publishers: more than half of its mailbox is
    /// waiting. A connection that publishes to a queue behind stops being read until it has
    /// caught up ([`QueueHandle::caught_up`]): credit flow.
    pub fn is_behind(&self) -> bool {
        self.waiting() > self.0.tx.max_capacity() / 2
    }

    /// Resolves once at most a quarter of the queue's mailbox is waiting (at once if so now),
    /// or the queue has stopped.
    pub async fn caught_up(self) {
        loop {
            let notified = self.0.caught_up.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.0.awaited.store(true, Ordering::SeqCst);
            if self.waiting() <= self.0.tx.max_capacity() / 4 || self.0.tx.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Called by the queue task after each batch: wakes the publishers waiting for it once
    /// it has caught up.
    pub(crate) fn tell_caught_up(&self, stopping: bool) {
        if self.0.awaited.load(Ordering::SeqCst)
            && (stopping || self.waiting() <= self.0.tx.max_capacity() / 4)
        {
            self.0.awaited.store(false, Ordering::SeqCst);
            self.0.caught_up.notify_waiters();
        }
    }

    /// Drops transient (non-persistent) messages that arrive while `limit` messages are
    /// already ready (0: no limit), counting them in [`QueueStats::dropped_transient`].
    /// Persistent messages are never dropped by it. The limit lives as long as the queue
    /// runs (it is not stored): MQTT sets it on a session's queue for QoS 0, as Mosquitto's
    /// `max_queued_messages`.
    pub fn limit_transient(&self, limit: u32) {
        self.0.transient_limit.store(limit, Ordering::Relaxed);
    }

    /// The transient limit (0: none).
    pub(crate) fn transient_limit(&self) -> u32 {
        self.0.transient_limit.load(Ordering::Relaxed)
    }

    /// Whether both handles refer to the same queue.
    pub fn same(&self, other: &QueueHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.0.deleted.load(Ordering::Acquire)
    }

    /// Marks the queue deleted; returns false if it already was.
    pub(crate) fn mark_deleted(&self) -> bool {
        !self.0.deleted.swap(true, Ordering::AcqRel)
    }

    fn gone(&self) -> CoreError {
        CoreError::not_found(format!(
            "no queue '{}' in vhost '{}'",
            self.0.spec.name, self.0.vhost
        ))
    }

    async fn send(&self, command: QueueCommand) -> CoreResult<()> {
        self.0.tx.send(command).await.map_err(|_| self.gone())
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCommand) -> CoreResult<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| self.gone())
    }

    /// Enqueues a message. Waits while the queue's mailbox is full (backpressure).
    pub async fn publish(&self, message: Arc<Message>) -> CoreResult<()> {
        self.send(QueueCommand::Publish(message, None)).await
    }

    /// The message store could not write messages `ids` after this queue took them: the
    /// queue drops those still ready (one already delivered cannot be called back).
    pub async fn withdraw_unstored(&self, ids: HashSet<u64>) {
        let _ = self.send(QueueCommand::WithdrawUnstored(ids)).await;
    }

    /// Enqueues a persistent message already written to the message store at `at`, so a
    /// durable queue may page its body out and read it back later.
    pub async fn publish_stored(&self, message: Arc<Message>, at: StoredAt) -> CoreResult<()> {
        self.send(QueueCommand::Publish(message, Some(at))).await
    }

    /// Dead-letters a message this queue refused because it was full.
    pub(crate) async fn dead_letter_refused(&self, message: Arc<Message>) {
        let _ = self.send(QueueCommand::DeadLetterRefused(message)).await;
    }

    /// Tells the queue it was redeclared (it counts as used, for `x-expires`).
    pub(crate) async fn touch(&self) {
        let _ = self.send(QueueCommand::Touch).await;
    }

    /// Adds a consumer.
    pub async fn consume(&self, consumer: ConsumerSpec) -> CoreResult<()> {
        self.ask(|tx| QueueCommand::Consume(consumer, tx)).await?
    }

    /// Removes a consumer; returns whether it existed.
    pub async fn cancel(&self, channel: ChannelId, tag: Arc<str>) -> bool {
        self.ask(|tx| QueueCommand::Cancel(channel, tag, tx))
            .await
            .unwrap_or(false)
    }

    /// Settles deliveries positively (on the settlement lane: never behind publishes).
    pub async fn ack(&self, channel: ChannelId, seqs: Vec<MessageSeq>) {
        let _ = self.0.settle_tx.send(QueueCommand::Ack(channel, seqs));
    }

    /// Settles deliveries negatively, putting them back in the queue when `requeue` (on the
    /// settlement lane).
    pub async fn reject(&self, channel: ChannelId, seqs: Vec<MessageSeq>, requeue: bool) {
        let _ = self
            .0
            .settle_tx
            .send(QueueCommand::Reject(channel, seqs, requeue));
    }

    /// Takes one message, if any is ready.
    pub async fn get(&self, channel: ChannelId, no_ack: bool) -> CoreResult<Option<GetResult>> {
        let arguments = self.arguments();
        if arguments.is_quorum() && arguments.single_active_consumer {
            return Err(CoreError::locked(format!(
                "cannot obtain access to locked queue '{}' in vhost '{}'. basic.get operations are not supported by quorum queues with single active consumer",
                self.name(),
                self.vhost_name()
            )));
        }
        self.ask(|tx| QueueCommand::Get(channel, no_ack, tx)).await
    }

    /// Drops every ready message; returns how many.
    pub async fn purge(&self) -> CoreResult<u32> {
        self.ask(QueueCommand::Purge).await
    }

    /// The queue's counters as of its task's last batch (no message to the task).
    pub fn counters(&self) -> crate::stats::QueueTally {
        self.0.counters.load()
    }

    /// Lists the queue's consumers.
    pub async fn consumers(&self) -> CoreResult<Vec<ConsumerSummary>> {
        self.ask(QueueCommand::Consumers).await
    }

    /// Reports the queue's counts.
    pub async fn stats(&self) -> CoreResult<QueueStats> {
        self.ask(QueueCommand::Stats).await
    }

    /// Tells the queue a channel is gone: its consumers are removed and its unacknowledged
    /// messages return to the queue, flagged redelivered.
    pub async fn channel_closed(&self, channel: ChannelId) {
        let _ = self.send(QueueCommand::ChannelClosed(channel)).await;
    }

    /// Returns the channel's unacknowledged messages to the queue (basic.recover).
    pub async fn recover(&self, channel: ChannelId) {
        let _ = self.send(QueueCommand::Recover(channel)).await;
    }

    /// Asks the queue to try delivering again (a channel's credit was freed elsewhere).
    pub async fn wake(&self) {
        self.try_wake();
    }

    /// Asks the queue to try delivering again, without waiting (on the settlement lane).
    pub(crate) fn try_wake(&self) {
        let _ = self.0.settle_tx.send(QueueCommand::Wake);
    }

    /// Deletes the queue if `if_unused` / `if_empty` allow; with `forget_record` the queue
    /// first removes its stored definition, once the preconditions hold and before it stops
    /// (a store that cannot write fails the delete with nothing changed).
    pub(crate) async fn delete(
        &self,
        if_unused: bool,
        if_empty: bool,
        forget_record: bool,
    ) -> CoreResult<u32> {
        self.ask(|reply| QueueCommand::Delete {
            if_unused,
            if_empty,
            forget_record,
            reply,
        })
        .await?
    }
}
