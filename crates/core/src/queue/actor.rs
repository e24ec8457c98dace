//! The queue task. It owns the ready messages, the unacknowledged ones (per channel), the
//! consumers and their credit, and is the only place that decides who gets which message.
//! Commands arrive through a bounded mailbox and are handled in batches; after each batch the
//! queue dispatches as many ready messages as its consumers have credit for.
//!
//! RabbitMQ's queue arguments live here too: message TTL (`x-message-ttl`, `expiration`),
//! queue expiry (`x-expires`), length limits (`x-max-length`, `x-max-length-bytes`, with
//! `x-overflow` drop-head; the refusing modes are decided by publishers, see `admission`),
//! dead-lettering, priorities (`x-max-priority`), single active consumer and consumer
//! priorities. One timer wakes the task for the earliest expiry.
//!
//! Ready bodies beyond the queue's memory budget are paged out: a durable queue's persistent
//! message stays only in the message store, any other goes to the queue's overflow. The task
//! never reads or writes a file itself: it asks the blocking pool to read back the next paged
//! entries (a batch at a time, ahead of delivery) and to write the overflow, and takes the
//! answers in its select loop. Delivery waits for a paged head to be read back, so order holds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::dead_letter::{DeadLetterTarget, DeadLetters, Reason, dead_lettered};
use super::ready::{Body, Clock, Deadline, Place, ReadAhead, Ready, ReadyList, Stored, Wanted};
use super::{
    ChannelCredit, ChannelId, ConsumerEvent, ConsumerSpec, Delivery, DeliveryPermit, GetResult,
    MessageSeq, Overflow, QueueCommand, QueueHandle, QueueStats,
};
use crate::error::{CoreError, CoreResult};
use crate::field::FieldValue;
use crate::message::Message;
use crate::persistence::{
    MessageStore, Overflow as PageOverflow, OverflowStore, QueueKey, Recovered, Storage, StoredAt,
};
use crate::stats::QueueTally;
use crate::vhost::VirtualHost;

/// How many commands the queue handles before it dispatches.
const BATCH: usize = 256;

/// How far ahead of delivery paged bodies are read back: one batch of at most this many
/// entries or bytes, and none while this much is in memory ahead already.
const READ_AHEAD: ReadAhead = ReadAhead {
    entries: 256,
    bytes: 1024 * 1024,
    loaded_ahead: 1024 * 1024,
    scan: 1024,
};

/// While an overflow write is under way and more than this is waiting to be written, the
/// queue stops taking commands (its publishers wait on its mailbox) until the write is done.
const OVERFLOW_BACKLOG: usize = 8 * 1024 * 1024;

/// Paged bodies read back by the blocking pool, with the entries they belong to.
type ReadBack = Vec<(Wanted, Option<Message>)>;

/// A basic.get waiting for the head's body to be read back.
type WaitingGet = (ChannelId, bool, oneshot::Sender<Option<GetResult>>);

/// The head of the queue, as delivery sees it.
enum Head {
    Ready(Loaded),
    /// Its body is being read back (or expired and waits to be dead-lettered).
    Waiting,
    Empty,
}

/// What woke the queue task.
enum Event {
    /// An ack, reject or wake-up from the settlement lane.
    Settlement(QueueCommand),
    Command(Option<QueueCommand>),
    ReadBack(ReadBack),
    Flushed,
    DeadLetterRoom,
    Timer,
}

/// A ready message with its body in memory, on its way to a consumer.
struct Loaded {
    seq: MessageSeq,
    message: Arc<Message>,
    stored: Option<Stored>,
    redelivered: bool,
    returns: u16,
    size: usize,
    level: u8,
    expires_at: Option<Deadline>,
}

impl Loaded {
    fn into_ready(self) -> Ready {
        Ready {
            seq: self.seq,
            size: Ready::size_of_len(self.size),
            body: Body::Loaded(self.message, self.stored.map(|stored| stored.at)),
            redelivered: self.redelivered,
            returns: self.returns,
            level: self.level,
            expires_at: self.expires_at,
        }
    }
}

struct Unacked {
    message: Arc<Message>,
    /// How often it came back before this delivery.
    returns: u16,
    stored: Option<Stored>,
    level: u8,
    expires_at: Option<Deadline>,
    /// The consumer it was delivered to (None for basic.get).
    consumer: Option<Arc<str>>,
    /// The channel-wide credit it holds, released when it is settled.
    credit: Option<Arc<ChannelCredit>>,
}

impl Unacked {
    /// The delivery back in the ready list (requeued, flagged redelivered).
    fn into_ready(self, seq: MessageSeq) -> Ready {
        Ready {
            seq,
            size: Ready::size_of(&self.message.body),
            body: Body::Loaded(self.message, self.stored.map(|stored| stored.at)),
            redelivered: true,
            returns: self.returns.saturating_add(1),
            level: self.level,
            expires_at: self.expires_at,
        }
    }

    /// Frees the per-consumer and per-channel credit this delivery holds.
    fn release(&self, consumers: &mut [Consumer], channel: ChannelId) {
        if let Some(tag) = &self.consumer
            && let Some(consumer) = consumers
                .iter_mut()
                .find(|c| c.spec.channel == channel && c.spec.tag == *tag)
        {
            consumer.unacked = consumer.unacked.saturating_sub(1);
        }
        if let Some(credit) = &self.credit {
            credit.release();
        }
    }
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }
}

struct QueueActor {
    handle: QueueHandle,
    vhost: Weak<VirtualHost>,
    ready: ReadyList,
    unacked: HashMap<ChannelId, HashMap<MessageSeq, Unacked>>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: MessageSeq,
    had_consumers: bool,
    /// The message store and this queue's key in it, for durable queues.
    store: Option<(Arc<dyn MessageStore>, QueueKey)>,
    /// Bytes of ready bodies held in memory.
    loaded_bytes: usize,
    /// Above this, bodies are paged out (to the store or the overflow).
    max_loaded_bytes: usize,
    /// Counts instants as the ready list keeps them.
    clock: Clock,
    /// Makes the overflow, when the queue first needs one.
    overflow_store: Option<Arc<dyn OverflowStore>>,
    /// Where bodies the store does not hold are paged out.
    overflow: Option<Arc<dyn PageOverflow>>,
    /// The read-back under way on the blocking pool.
    reading: Option<JoinHandle<ReadBack>>,
    /// The overflow write under way on the blocking pool.
    flushing: Option<JoinHandle<()>>,
    /// A head is paged out and wanted (delivery, basic.get, dead-lettering).
    head_wanted: bool,
    /// Letting ready messages die waits for the dead-letter task to catch up.
    dead_letters_full: bool,
    /// basic.get requests waiting for the head's body, in order.
    waiting_gets: VecDeque<WaitingGet>,
    /// Where dead letters go (`x-dead-letter-exchange`), and the task republishing them.
    dead_letter_target: Option<DeadLetterTarget>,
    dead_letters: DeadLetters,
    /// The time the current batch started: expiry is judged against it, so a message with a
    /// TTL of 0 still reaches a consumer that can take it in the same batch.
    now: Instant,
    /// When the queue was last used (consumed from, read with basic.get, redeclared), for
    /// `x-expires`.
    last_used: Instant,
    /// Messages recovered from the store at start-up have sequence numbers below this; their
    /// own `expiration` counts from `started` (their bodies are read only when delivered).
    recovered: MessageSeq,
    started: Instant,
    /// Where round-robin resumes in each priority group, when consumers' priorities differ.
    group_cursors: HashMap<i64, usize>,
    /// What the task counts; stored for readers after each batch.
    tally: QueueTally,
    /// Deliveries not yet acknowledged, across channels (kept as `unacked` changes, so
    /// reporting does not walk the channels).
    unacked_count: u64,
}

/// Starts the task of a new queue and returns its handle.
/// With `durable`, persistent messages are kept in `storage`'s message store: those leaving
/// the queue for good are removed from it. `recovered` are messages restored from it at
/// start-up, oldest first; they are delivered flagged redelivered. Bodies beyond `storage`'s
/// budget go to its overflow (or stay in the message store).
pub(crate) fn spawn(
    spec: super::QueueSpec,
    owner: Option<super::ConnectionId>,
    vhost: &Arc<VirtualHost>,
    mailbox: usize,
    storage: &Storage,
    durable: bool,
    recovered: Vec<Recovered>,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(mailbox);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let max_loaded_bytes = storage.max_loaded_bytes_per_queue;
    let overflow_store = storage.overflow.clone();
    let store = durable.then(|| storage.messages.clone()).flatten();
    let store = store.map(|store| {
        let key = QueueKey {
            vhost: vhost.name.clone(),
            queue: spec.name.clone(),
        };
        (store, key)
    });
    let arguments = match super::QueueArguments::parse(&spec.arguments) {
        Ok(arguments) => arguments,
        Err(error) => {
            // Declarations are checked before a queue exists; a stored queue with arguments
            // a newer check refuses keeps running without them.
            tracing::warn!(queue = %spec.name, reason = %error.message(&spec.name, &vhost.name), "queue arguments ignored");
            super::QueueArguments::default()
        }
    };
    let dead_letter_target =
        arguments
            .dead_letter_exchange
            .as_ref()
            .map(|exchange| DeadLetterTarget {
                exchange: exchange.clone(),
                routing_key: arguments.dead_letter_routing_key.clone(),
            });
    let handle = QueueHandle::new(spec, arguments, owner, vhost.name.clone(), tx, settle_tx);
    let now = Instant::now();
    let clock = Clock::new(now);
    let mut ready = ReadyList::new(handle.arguments().max_priority, handle.0.admission.clone());
    let count = recovered.len();
    for (seq, recovered) in recovered.into_iter().enumerate() {
        // Recovered messages wait at the lowest priority (their bodies stay on disk) and
        // their TTL counts again from the restart.
        ready.restore(Ready {
            seq: seq as MessageSeq,
            body: Body::Stored(Stored {
                id: recovered.id,
                at: recovered.at,
            }),
            redelivered: true,
            returns: 0,
            size: 0,
            level: 0,
            expires_at: handle
                .arguments()
                .message_ttl
                .map(|ttl| clock.deadline(now + ttl)),
        });
    }
    let actor = QueueActor {
        handle: handle.clone(),
        vhost: Arc::downgrade(vhost),
        next_seq: count as MessageSeq,
        ready,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_consumer: 0,
        had_consumers: false,
        store,
        loaded_bytes: 0,
        max_loaded_bytes,
        clock,
        overflow_store,
        overflow: None,
        reading: None,
        flushing: None,
        head_wanted: false,
        dead_letters_full: false,
        waiting_gets: VecDeque::new(),
        dead_letter_target,
        dead_letters: DeadLetters::new(),
        now,
        last_used: now,
        recovered: count as MessageSeq,
        started: now,
        group_cursors: HashMap::new(),
        tally: QueueTally::default(),
        unacked_count: 0,
    };
    tokio::spawn(actor.run(rx, settle_rx));
    handle
}

/// What handling a command asks the loop to do next.
enum Flow {
    Continue,
    Stop,
}

impl QueueActor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<QueueCommand>,
        mut settlements: mpsc::UnboundedReceiver<QueueCommand>,
    ) {
        loop {
            let deadline = self.next_deadline();
            let take_commands = !self.overflow_backlogged();
            let event = tokio::select! {
                // Settlements first: they free consumers' credit and never wait for publishes.
                biased;
                Some(command) = settlements.recv() => Event::Settlement(command),
                command = rx.recv(), if take_commands => Event::Command(command),
                read = finished(&mut self.reading) => Event::ReadBack(read.unwrap_or_default()),
                _ = finished(&mut self.flushing) => Event::Flushed,
                () = self.dead_letters.room(), if self.dead_letters_full => Event::DeadLetterRoom,
                () = sleep_until(deadline) => Event::Timer,
            };
            self.now = Instant::now();
            match event {
                Event::Command(None) => break,
                Event::Settlement(command) => {
                    self.handle_command(command);
                    self.take_settlements(&mut settlements);
                }
                Event::Command(Some(command)) => {
                    // A settlement sent before a command is handled before it (a client's
                    // ack before its channel's close, a reject before its basic.get).
                    self.take_settlements(&mut settlements);
                    let mut flow = self.handle_command(command);
                    let mut handled = 1;
                    while matches!(flow, Flow::Continue) && handled < BATCH {
                        self.take_settlements(&mut settlements);
                        match rx.try_recv() {
                            Ok(command) => flow = self.handle_command(command),
                            Err(_) => break,
                        }
                        handled += 1;
                    }
                    if matches!(flow, Flow::Stop) {
                        break;
                    }
                }
                Event::Timer => {
                    if self.has_expired() {
                        self.expire_queue();
                        break;
                    }
                    // Expiry first: a message at its deadline dies rather than go out late.
                    self.expire_heads();
                }
                Event::ReadBack(read) => self.take_read_back(read),
                Event::DeadLetterRoom => self.dead_letters_full = false,
                Event::Flushed => {}
            }
            self.serve_waiting_gets();
            self.dispatch();
            self.enforce_length_limit();
            self.expire_heads();
            self.handle.tell_caught_up(false);
            if self.should_auto_delete() {
                self.auto_delete();
                break;
            }
            self.read_ahead();
            self.flush_overflow();
            self.report();
        }
        self.report();
        // Publishes still in the mailbox will never be enqueued: their store records go.
        rx.close();
        self.handle.tell_caught_up(true);
        while let Ok(command) = rx.try_recv() {
            if let QueueCommand::Publish(message, Some(at)) = command
                && let Some(id) = message.store_id
            {
                self.forget(Some(Stored { id, at }));
            }
        }
        if let Some(overflow) = self.overflow.take() {
            drop(tokio::task::spawn_blocking(move || overflow.close()));
        }
        tracing::debug!(queue = self.handle.name(), "queue task stopped");
    }

    /// Stores the tally, with the gauges as they are now, for readers.
    fn report(&mut self) {
        self.tally.ready = self.ready.len() as u64;
        self.tally.ready_bytes = self.ready.bytes() as u64;
        self.tally.paged = self.ready.paged() as u64;
        debug_assert_eq!(
            self.unacked_count,
            self.unacked.values().map(|m| m.len() as u64).sum::<u64>(),
            "the unacknowledged count follows the map"
        );
        self.tally.unacked = self.unacked_count;
        self.tally.consumers = self.consumers.len() as u64;
        self.handle.0.counters.store(&self.tally);
    }

    /// Handles the settlements waiting on their lane (acks, rejects, wake-ups: none stops
    /// the queue).
    fn take_settlements(&mut self, settlements: &mut mpsc::UnboundedReceiver<QueueCommand>) {
        while let Ok(command) = settlements.try_recv() {
            self.handle_command(command);
        }
    }

    fn handle_command(&mut self, command: QueueCommand) -> Flow {
        match command {
            QueueCommand::Publish(message, at) => self.enqueue(message, at),
            QueueCommand::WithdrawUnstored(ids) => {
                for entry in self.ready.take_stored(&ids) {
                    // The store skips the removal of a message it never wrote, and so
                    // learns that this queue no longer holds it.
                    self.discard(&entry);
                }
            }
            QueueCommand::DeadLetterRefused(message) => {
                self.dead_letter(&message, Reason::MaxLen);
            }
            QueueCommand::Touch => self.last_used = self.now,
            QueueCommand::Consume(spec, reply) => {
                let _ = reply.send(self.add_consumer(spec));
            }
            QueueCommand::Cancel(channel, tag, reply) => {
                let _ = reply.send(self.remove_consumer(channel, &tag));
            }
            QueueCommand::Ack(channel, seqs) => self.settle(channel, &seqs, None),
            QueueCommand::Reject(channel, seqs, requeue) => {
                self.settle(channel, &seqs, Some(requeue))
            }
            QueueCommand::Get(channel, no_ack, reply) => {
                if self.waiting_gets.is_empty()
                    && let Some(answer) = self.get(channel, no_ack)
                {
                    let _ = reply.send(answer);
                } else {
                    self.waiting_gets.push_back((channel, no_ack, reply));
                }
            }
            QueueCommand::Purge(reply) => {
                let purged = self.ready.len() as u32;
                for entry in self.ready.take_all() {
                    self.discard(&entry);
                }
                let _ = reply.send(purged);
            }
            QueueCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            QueueCommand::Consumers(reply) => {
                let single = self.handle.arguments().single_active_consumer;
                let listed = self
                    .consumers
                    .iter()
                    .enumerate()
                    .map(|(index, c)| super::ConsumerSummary {
                        tag: c.spec.tag.clone(),
                        channel: c.spec.channel,
                        ack_required: !c.spec.no_ack,
                        exclusive: c.spec.exclusive,
                        prefetch: c.spec.prefetch,
                        priority: c.spec.priority,
                        active: !single || index == 0,
                    })
                    .collect();
                let _ = reply.send(listed);
            }
            QueueCommand::ChannelClosed(channel) => {
                if !self
                    .remove_consumers_where(|c| c.spec.channel == channel)
                    .is_empty()
                {
                    self.note_consumers_changed();
                }
                self.requeue_channel(channel);
            }
            QueueCommand::Recover(channel) => self.requeue_channel(channel),
            QueueCommand::Wake => {}
            QueueCommand::Delete {
                if_unused,
                if_empty,
                forget_record,
                reply,
            } => {
                let outcome = self
                    .check_delete(if_unused, if_empty)
                    .and_then(|count| self.forget_record(forget_record).map(|()| count));
                let stop = outcome.is_ok();
                if stop {
                    self.cancel_all_consumers();
                    self.forget_everything();
                    // The vhost retires what the queue counted once it is told: count it all.
                    self.report();
                }
                let _ = reply.send(outcome);
                if stop {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// A persistent message has left this queue for good: tell the store.
    fn forget(&self, stored: Option<Stored>) {
        if let (Some((store, key)), Some(stored)) = (&self.store, stored) {
            store.remove(key, stored.id, stored.at);
        }
    }

    /// A ready entry leaves the queue for good: its body leaves memory, the store and the
    /// overflow.
    fn discard(&mut self, entry: &Ready) {
        if let Some(message) = entry.message() {
            self.loaded_bytes = self.loaded_bytes.saturating_sub(message.memory_size());
        }
        if let (Body::Paged(at), Some(overflow)) = (&entry.body, &self.overflow) {
            overflow.release(*at);
        }
        self.forget(entry.stored());
    }

    /// Republishes a dead message to the dead-letter exchange, if the queue has one.
    fn dead_letter(&mut self, message: &Message, reason: Reason) {
        if let Some(target) = &self.dead_letter_target {
            let copy = dead_lettered(message, self.handle.name(), reason, target);
            self.dead_letters.send(&self.vhost, copy);
        }
    }

    /// When a message published now expires: the queue's TTL or the message's own
    /// `expiration`, whichever is shorter.
    fn expiry_of(&self, message: &Message) -> Option<Instant> {
        let own = message
            .properties
            .expiration
            .as_deref()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis);
        let ttl = match (self.handle.arguments().message_ttl, own) {
            (Some(queue), Some(own)) => Some(queue.min(own)),
            (queue, own) => queue.or(own),
        };
        ttl.map(|ttl| self.now + ttl)
    }

    fn enqueue(&mut self, message: Arc<Message>, at: Option<StoredAt>) {
        let stored = match (&self.store, message.store_id, at) {
            (Some(_), Some(id), Some(at)) => Some(Stored { id, at }),
            _ => None,
        };
        let limit = self.handle.transient_limit();
        if limit != 0 && self.ready.len() >= limit as usize && !message.properties.is_persistent() {
            // A transient message the queue has no room for (MQTT QoS 0 to a session that
            // does not keep up): dropped and counted; what is ready stays. (Stored only if a
            // quorum queue kept it.)
            self.handle
                .0
                .dropped_transient
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(admission) = &self.handle.0.admission {
                admission.leave(message.body.len() as u64);
            }
            self.forget(stored);
            return;
        }
        self.tally.published += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = message.body.len();
        let level = self.ready.level_for(message.properties.priority);
        let expires_at = self.expiry_of(&message).map(|at| self.clock.deadline(at));
        // The budget counts what a message costs in memory, not only its body: a backlog of
        // small messages is mostly their headers.
        let cost = message.memory_size();
        // Once part of the backlog is paged, what comes behind it is paged too: the budget
        // holds the head, read back in order, not the newest messages (and the paged run
        // stays unbroken, so it stays compact).
        let paged = if self.ready.paged() > 0 || self.loaded_bytes + cost > self.max_loaded_bytes {
            self.page_out(&message, stored)
        } else {
            None
        };
        let body = paged.unwrap_or_else(|| {
            self.loaded_bytes += cost;
            Body::Loaded(message, stored.map(|stored| stored.at))
        });
        self.ready.push_back(Ready {
            seq,
            body,
            size: Ready::size_of_len(size),
            level,
            redelivered: false,
            returns: 0,
            expires_at,
        });
        // With no consumer able to take it now, the limit applies at once (RabbitMQ judges
        // each publish as it arrives); otherwise after dispatch.
        if self.handle.arguments().has_length_limit()
            && !self.consumers.iter().any(Consumer::has_room)
        {
            self.enforce_length_limit();
        }
    }

    /// Where a body beyond the memory budget goes: a durable queue's persistent message
    /// stays only in the store; any other is appended to the overflow (in memory until the
    /// next flush). None keeps it in memory (no overflow, or it cannot take it now).
    fn page_out(&mut self, message: &Message, stored: Option<Stored>) -> Option<Body> {
        if let Some(stored) = stored {
            return Some(Body::Stored(stored));
        }
        if self.overflow.is_none() {
            let key = QueueKey {
                vhost: self.handle.0.vhost.clone(),
                queue: self.handle.name().to_owned(),
            };
            self.overflow = Some(self.overflow_store.as_ref()?.open(&key));
        }
        self.overflow.as_ref()?.append(message).map(Body::Paged)
    }

    /// Drops (dead-letters) messages from the head while the queue is over its length limit,
    /// for `x-overflow` = drop-head (the refusing modes never let it get there by
    /// publishing). Runs after dispatch, as RabbitMQ delivers to a consumer with room before
    /// it counts a message against the limit. A paged head to dead-letter waits for its body.
    fn enforce_length_limit(&mut self) {
        let arguments = self.handle.arguments();
        if arguments.overflow != Overflow::DropHead || !arguments.has_length_limit() {
            return;
        }
        let (max_length, max_bytes) = (arguments.max_length, arguments.max_length_bytes);
        let dead_lettering = self.dead_letter_target.is_some();
        loop {
            let over = max_length.is_some_and(|max| self.ready.len() as u64 > max)
                || max_bytes.is_some_and(|max| self.ready.bytes() as u64 > max);
            if !over {
                return;
            }
            let Some(head) = self.ready.front() else {
                return;
            };
            if dead_lettering && !head.is_loaded() {
                self.head_wanted = true;
                return;
            }
            if dead_lettering && self.dead_letters.room_left() == 0 {
                self.dead_letters_full = true;
                return;
            }
            let Some(entry) = self.ready.pop_front() else {
                return;
            };
            self.let_die(entry, Reason::MaxLen);
        }
    }

    /// A ready message dies (expiry, length limit): dead-lettered if the queue says where
    /// (the callers wait for a paged body to be read back first), then gone from the store.
    fn let_die(&mut self, entry: Ready, reason: Reason) {
        if let Some(message) = entry.message() {
            self.dead_letter(message, reason);
        }
        self.discard(&entry);
    }

    /// Lets the expired messages at the heads die; with a dead-letter exchange, a paged one
    /// waits for its body, and they wait while the dead-letter task is behind.
    fn expire_heads(&mut self) {
        let now = self.clock.deadline(self.now);
        if self.ready.next_expiry().is_none_or(|expiry| expiry > now) {
            return;
        }
        let dead_lettering = self.dead_letter_target.is_some();
        let room = if dead_lettering {
            self.dead_letters.room_left()
        } else {
            usize::MAX
        };
        if room == 0 {
            self.dead_letters_full = true;
            return;
        }
        let mut expired = Vec::new();
        if self
            .ready
            .take_expired(now, dead_lettering, room, &mut expired)
        {
            self.head_wanted = true;
        }
        for entry in expired {
            self.let_die(entry, Reason::Expired);
        }
    }

    /// The earliest time the queue must wake by itself: a message expiring at a head, or the
    /// queue expiring unused. An expiry already past waits for what holds it back (a paged
    /// body being read, the dead-letter task) instead.
    fn next_deadline(&self) -> Option<Instant> {
        let held = self.reading.is_some() || self.dead_letters_full;
        let message_expiry = self
            .ready
            .next_expiry()
            .map(|at| self.clock.instant(at))
            .filter(|at| !held || *at > self.now);
        let queue_expiry = self.queue_expiry();
        match (message_expiry, queue_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the queue stops taking commands until the overflow write under way is done.
    fn overflow_backlogged(&self) -> bool {
        self.flushing.is_some()
            && self
                .overflow
                .as_ref()
                .is_some_and(|overflow| overflow.unwritten_bytes() > OVERFLOW_BACKLOG)
    }

    /// Asks the blocking pool for the next paged bodies when they are wanted: by a paged
    /// head (delivery, basic.get, dead-lettering), or ahead of delivery while the queue has
    /// consumers. One batch at a time.
    fn read_ahead(&mut self) {
        if self.reading.is_some() || self.ready.paged() == 0 {
            return;
        }
        if !self.head_wanted && self.consumers.is_empty() {
            return;
        }
        let expired_by = self
            .dead_letter_target
            .as_ref()
            .map(|_| self.clock.deadline(self.now));
        let wanted = self.ready.paged_ahead(READ_AHEAD, expired_by);
        if wanted.is_empty() {
            return;
        }
        self.head_wanted = false;
        let store = self.store.as_ref().map(|(store, _)| store.clone());
        let overflow = self.overflow.clone();
        self.reading = Some(tokio::task::spawn_blocking(move || {
            read_back(store.as_deref(), overflow.as_deref(), wanted)
        }));
    }

    /// Takes the bodies read back into the ready list; an entry whose body could not be read
    /// is dropped (reported), one that left meanwhile is ignored.
    fn take_read_back(&mut self, read: ReadBack) {
        for (wanted, message) in read {
            match message {
                Some(message) => {
                    let cost = message.memory_size();
                    if self.ready.load(wanted.seq, wanted.level, Arc::new(message)) {
                        self.loaded_bytes += cost;
                        if let (Place::Paged(at), Some(overflow)) = (wanted.place, &self.overflow) {
                            overflow.release(at);
                        }
                    }
                }
                None => {
                    if let Some(entry) = self.ready.remove_paged(wanted.seq, wanted.level) {
                        tracing::error!(
                            queue = self.handle.name(),
                            "a paged-out message could not be read back; dropped"
                        );
                        self.discard(&entry);
                    }
                }
            }
        }
    }

    /// Has the blocking pool write the overflow when it has enough to write (or files to
    /// delete). One write at a time.
    fn flush_overflow(&mut self) {
        if self.flushing.is_some() {
            return;
        }
        if let Some(overflow) = &self.overflow
            && overflow.wants_flush()
        {
            let overflow = overflow.clone();
            self.flushing = Some(tokio::task::spawn_blocking(move || overflow.flush()));
        }
    }

    /// When the queue expires (`x-expires`), while it has no consumers.
    fn queue_expiry(&self) -> Option<Instant> {
        let expires = self.handle.arguments().expires?;
        self.consumers.is_empty().then(|| self.last_used + expires)
    }

    fn has_expired(&self) -> bool {
        self.queue_expiry().is_some_and(|at| at <= self.now)
    }

    /// Deletes the queue after `x-expires` unused, as if a client had deleted it.
    fn expire_queue(&mut self) {
        tracing::debug!(queue = self.handle.name(), "queue expired unused");
        self.forget_everything();
        if let Some(vhost) = self.vhost.upgrade() {
            self.report();
            vhost.forget_queue(&self.handle);
        }
    }

    /// Takes the first ready message that has not expired, if its body is in memory. Expired
    /// ones die on the way. None also when the head waits for its body (then it is asked
    /// for).
    fn pop_ready(&mut self) -> Option<Loaded> {
        match self.next_ready() {
            Head::Ready(loaded) => Some(loaded),
            Head::Waiting | Head::Empty => None,
        }
    }

    fn next_ready(&mut self) -> Head {
        let now = self.clock.deadline(self.now);
        let dead_lettering = self.dead_letter_target.is_some();
        loop {
            let Some(head) = self.ready.front() else {
                return Head::Empty;
            };
            if head.expires_at.is_some_and(|at| at < now) {
                if dead_lettering && !head.is_loaded() {
                    self.head_wanted = true;
                    return Head::Waiting;
                }
                if dead_lettering && self.dead_letters.room_left() == 0 {
                    self.dead_letters_full = true;
                    return Head::Waiting;
                }
                if let Some(entry) = self.ready.pop_front() {
                    self.let_die(entry, Reason::Expired);
                }
                continue;
            }
            if !head.is_loaded() {
                self.head_wanted = true;
                return Head::Waiting;
            }
            let Some(entry) = self.ready.pop_front() else {
                return Head::Empty;
            };
            let Body::Loaded(message, at) = entry.body else {
                continue;
            };
            self.loaded_bytes = self.loaded_bytes.saturating_sub(message.memory_size());
            let stored = at.and_then(|at| message.store_id.map(|id| Stored { id, at }));
            if self.recovered_and_expired(entry.seq, &message) {
                self.dead_letter(&message, Reason::Expired);
                self.forget(stored);
                continue;
            }
            return Head::Ready(Loaded {
                seq: entry.seq,
                size: message.body.len(),
                message,
                stored,
                redelivered: entry.redelivered,
                returns: entry.returns,
                level: entry.level,
                expires_at: entry.expires_at,
            });
        }
    }

    /// Whether a message recovered at start-up has passed its own `expiration` (counted from
    /// the restart: the store keeps no publish time).
    fn recovered_and_expired(&self, seq: MessageSeq, message: &Message) -> bool {
        seq < self.recovered
            && message
                .properties
                .expiration
                .as_deref()
                .and_then(|ms| ms.parse::<u64>().ok())
                .is_some_and(|ms| self.started + Duration::from_millis(ms) < self.now)
    }

    /// The queue is going away: every persistent message it holds leaves the store.
    fn forget_everything(&mut self) {
        for entry in self.ready.take_all() {
            self.discard(&entry);
        }
        self.loaded_bytes = 0;
        self.unacked_count = 0;
        for (_, pending) in std::mem::take(&mut self.unacked) {
            for unacked in pending.into_values() {
                // The channel-wide credit it holds is free again: no ack will reach us now.
                if let Some(credit) = &unacked.credit {
                    credit.release();
                }
                self.forget(unacked.stored);
            }
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.len() as u32,
            unacked: u32::try_from(self.unacked_count).unwrap_or(u32::MAX),
            consumers: self.consumers.len() as u32,
            dropped_transient: self
                .handle
                .0
                .dropped_transient
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Emits a consumer event (`consumer.created`, `consumer.deleted`).
    fn consumer_event(&self, kind: &'static str, spec: &ConsumerSpec) {
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        vhost.emit(kind, |headers| {
            use crate::events::text;
            headers.insert("consumer_tag", text(&*spec.tag));
            headers.insert("queue", text(self.handle.name()));
            headers.insert("channel", FieldValue::I32(i32::from(spec.channel.number)));
            headers.insert("exclusive", FieldValue::Bool(spec.exclusive));
            headers.insert("ack_required", FieldValue::Bool(!spec.no_ack));
            headers.insert("prefetch_count", FieldValue::I64(i64::from(spec.prefetch)));
        });
    }

    /// Removes the consumers `gone` says, with a `consumer.deleted` event each.
    fn remove_consumers_where(&mut self, gone: impl Fn(&Consumer) -> bool) -> Vec<ConsumerSpec> {
        let mut removed = Vec::new();
        self.consumers.retain(|c| {
            if gone(c) {
                removed.push(c.spec.clone());
                false
            } else {
                true
            }
        });
        for spec in &removed {
            self.consumer_event("consumer.deleted", spec);
        }
        removed
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> CoreResult<()> {
        let in_exclusive_use = self.consumers.iter().any(|c| c.spec.exclusive)
            || (spec.exclusive && !self.consumers.is_empty());
        if in_exclusive_use {
            return Err(CoreError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.handle.name(),
                self.handle.0.vhost
            )));
        }
        self.had_consumers = true;
        // Highest priority first, registration order within a priority. A single active
        // consumer queue keeps registration order only: the active one (the first) stays
        // active until it goes, whatever the priority of those after it.
        let position = if self.handle.arguments().single_active_consumer {
            self.consumers.len()
        } else {
            self.consumers
                .iter()
                .position(|c| c.spec.priority < spec.priority)
                .unwrap_or(self.consumers.len())
        };
        self.consumer_event("consumer.created", &spec);
        self.consumers
            .insert(position, Consumer { spec, unacked: 0 });
        Ok(())
    }

    fn remove_consumer(&mut self, channel: ChannelId, tag: &str) -> bool {
        let removed = !self
            .remove_consumers_where(|c| c.spec.channel == channel && &*c.spec.tag == tag)
            .is_empty();
        if removed {
            self.note_consumers_changed();
        }
        removed
    }

    /// The queue's last consumer leaving starts its `x-expires` clock.
    fn note_consumers_changed(&mut self) {
        if self.consumers.is_empty() {
            self.last_used = self.now;
        }
    }

    /// Answers the basic.get requests that waited for a paged head, in order, while the head
    /// is in memory (or the queue is empty).
    fn serve_waiting_gets(&mut self) {
        while let Some((channel, no_ack, _)) = self.waiting_gets.front() {
            let Some(answer) = self.get(*channel, *no_ack) else {
                return;
            };
            if let Some((_, _, reply)) = self.waiting_gets.pop_front() {
                let _ = reply.send(answer);
            }
        }
    }

    /// basic.get: the answer (a message or none), or None while the head's body is being
    /// read back.
    fn get(&mut self, channel: ChannelId, no_ack: bool) -> Option<Option<GetResult>> {
        self.last_used = self.now;
        let entry = match self.next_ready() {
            Head::Ready(entry) => entry,
            Head::Empty => {
                self.tally.got_empty += 1;
                return Some(None);
            }
            Head::Waiting => return None,
        };
        self.tally.redelivered += u64::from(entry.redelivered);
        if no_ack {
            self.tally.got_auto_ack += 1;
            self.forget(entry.stored);
        } else {
            self.unacked.entry(channel).or_default().insert(
                entry.seq,
                Unacked {
                    message: entry.message.clone(),
                    returns: entry.returns,
                    stored: entry.stored,
                    level: entry.level,
                    expires_at: entry.expires_at,
                    consumer: None,
                    credit: None,
                },
            );
            self.tally.got_manual_ack += 1;
            self.unacked_count += 1;
        }
        let message = self.as_handed_out(entry.message, entry.returns);
        Some(Some(GetResult {
            seq: entry.seq,
            message,
            redelivered: entry.redelivered,
            remaining: self.ready.len() as u32,
        }))
    }

    /// Acknowledges (`requeue` = None) or rejects the given deliveries of `channel`; rejected
    /// ones not requeued are dead-lettered when the queue says where.
    fn settle(&mut self, channel: ChannelId, seqs: &[MessageSeq], requeue: Option<bool>) {
        let Some(pending) = self.unacked.get_mut(&channel) else {
            return;
        };
        let mut back = Vec::new();
        let mut gone = Vec::new();
        for seq in seqs {
            let Some(unacked) = pending.remove(seq) else {
                continue;
            };
            self.unacked_count = self.unacked_count.saturating_sub(1);
            unacked.release(&mut self.consumers, channel);
            if requeue == Some(true) {
                back.push(unacked.into_ready(*seq));
            } else {
                self.tally.acked += u64::from(requeue.is_none());
                gone.push(unacked);
            }
        }
        if pending.is_empty() {
            self.unacked.remove(&channel);
        }
        for unacked in gone {
            if requeue == Some(false) {
                self.dead_letter(&unacked.message, Reason::Rejected);
            }
            self.forget(unacked.stored);
        }
        self.requeue(back);
    }

    fn requeue_channel(&mut self, channel: ChannelId) {
        let Some(pending) = self.unacked.remove(&channel) else {
            return;
        };
        self.unacked_count = self.unacked_count.saturating_sub(pending.len() as u64);
        let mut back = Vec::with_capacity(pending.len());
        for (seq, unacked) in pending {
            unacked.release(&mut self.consumers, channel);
            back.push(unacked.into_ready(seq));
        }
        self.requeue(back);
    }

    /// A message as the queue hands it out: a quorum queue tells how often it came back in
    /// `x-delivery-count` (absent on the first delivery).
    fn as_handed_out(&self, message: Arc<Message>, returns: u16) -> Arc<Message> {
        if returns == 0 || !self.handle.arguments().is_quorum() {
            return message;
        }
        let mut counted = Message::clone(&message);
        counted
            .properties
            .headers
            .get_or_insert_with(Default::default)
            .insert("x-delivery-count", FieldValue::I64(i64::from(returns)));
        Arc::new(counted)
    }

    /// Puts messages back in the ready list at their original positions; those that came
    /// back more often than a quorum queue's `x-delivery-limit` die instead.
    fn requeue(&mut self, mut back: Vec<Ready>) {
        if let Some(limit) = self.handle.arguments().delivery_limit {
            let (over, under): (Vec<Ready>, Vec<Ready>) = back
                .into_iter()
                .partition(|entry| u64::from(entry.returns) > limit);
            for entry in over {
                // Not yet counted in `loaded_bytes`: only its store record goes.
                if let Some(message) = entry.message() {
                    self.dead_letter(message, Reason::DeliveryLimit);
                }
                self.forget(entry.stored());
            }
            back = under;
        }
        if back.is_empty() {
            return;
        }
        self.loaded_bytes += back
            .iter()
            .filter_map(Ready::message)
            .map(|m| m.memory_size())
            .sum::<usize>();
        self.ready.requeue(back);
    }

    /// Hands ready messages to consumers with credit: the highest priority first,
    /// round-robin among equals; only the first consumer with a single active consumer.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let Some((index, permit)) = self.next_consumer_with_room() else {
                return;
            };
            let Some(entry) = self.pop_ready() else {
                // What was ready had expired: the credit taken goes back.
                self.give_back_credit(index);
                return;
            };
            self.next_consumer = index + 1;
            if let Err(entry) = self.deliver(index, entry, permit) {
                self.loaded_bytes += entry.message.memory_size();
                self.ready.push_front(entry.into_ready());
                self.drop_disconnected_consumers();
            }
        }
    }

    fn give_back_credit(&self, index: usize) {
        let consumer = &self.consumers[index];
        if !consumer.spec.no_ack
            && let Some(credit) = &consumer.spec.channel_credit
        {
            credit.release();
        }
    }

    /// Removes consumers whose connection has gone away and requeues what they held.
    fn drop_disconnected_consumers(&mut self) {
        let gone = self.remove_consumers_where(|c| c.spec.sink.is_closed());
        self.note_consumers_changed();
        for spec in gone {
            self.requeue_channel(spec.channel);
        }
    }

    /// The consumer to deliver to next, its channel credit and its room in the connection's
    /// delivery budget taken: among the consumers of the highest priority that have room, the
    /// next in turn.
    fn next_consumer_with_room(&mut self) -> Option<(usize, DeliveryPermit)> {
        let count = if self.handle.arguments().single_active_consumer {
            self.consumers.len().min(1)
        } else {
            self.consumers.len()
        };
        let mixed =
            count > 1 && self.consumers[0].spec.priority != self.consumers[count - 1].spec.priority;
        if !mixed {
            for offset in 0..count {
                let index = (self.next_consumer + offset) % count;
                if let Some(permit) = self.take_room(index) {
                    return Some((index, permit));
                }
            }
            return None;
        }
        // Consumers are sorted by priority, highest first: try each group in turn, each
        // resuming its own round-robin where it left off.
        let mut start = 0;
        while start < count {
            let priority = self.consumers[start].spec.priority;
            let end = start
                + self.consumers[start..count]
                    .iter()
                    .take_while(|c| c.spec.priority == priority)
                    .count();
            let group = end - start;
            let first = self.group_cursors.get(&priority).copied().unwrap_or(0);
            for offset in 0..group {
                let member = (first + offset) % group;
                if let Some(permit) = self.take_room(start + member) {
                    self.group_cursors.insert(priority, member + 1);
                    return Some((start + member, permit));
                }
            }
            start = end;
        }
        None
    }

    /// Whether consumer `index` may take a delivery now: its prefetch, its channel's credit
    /// (taken if so) and its connection's delivery budget (the permit). A spent budget
    /// registers the queue to be woken when the connection has written deliveries out.
    fn take_room(&self, index: usize) -> Option<DeliveryPermit> {
        let consumer = &self.consumers[index];
        if !consumer.has_room() {
            return None;
        }
        let permit = consumer.spec.sink.reserve(&self.handle)?;
        let credited = consumer.spec.no_ack
            || consumer
                .spec
                .channel_credit
                .as_ref()
                .is_none_or(|credit| credit.try_acquire());
        credited.then_some(permit)
    }

    fn deliver(
        &mut self,
        index: usize,
        entry: Loaded,
        mut permit: DeliveryPermit,
    ) -> Result<(), Loaded> {
        permit.grow(entry.message.memory_size());
        let message = self.as_handed_out(entry.message.clone(), entry.returns);
        let consumer = &mut self.consumers[index];
        let needs_ack = !consumer.spec.no_ack
            && (!consumer.spec.settles_transient || entry.message.properties.is_persistent());
        let delivery = Delivery {
            channel: consumer.spec.channel,
            consumer_tag: consumer.spec.tag.clone(),
            queue: self.handle.clone(),
            seq: entry.seq,
            message,
            redelivered: entry.redelivered,
            needs_ack,
            permit,
        };
        let sent = consumer
            .spec
            .sink
            .send(ConsumerEvent::Deliver(delivery))
            .is_ok();
        if !needs_ack
            && !consumer.spec.no_ack
            && let Some(credit) = &consumer.spec.channel_credit
        {
            // Taken for a delivery that turned out to need no acknowledgement.
            credit.release();
        }
        if !sent {
            if needs_ack && let Some(credit) = &consumer.spec.channel_credit {
                credit.release();
            }
            return Err(entry);
        }
        if needs_ack {
            self.tally.delivered_manual_ack += 1;
        } else {
            self.tally.delivered_auto_ack += 1;
        }
        self.tally.redelivered += u64::from(entry.redelivered);
        if !needs_ack {
            self.forget(entry.stored);
        } else {
            consumer.unacked += 1;
            let channel = consumer.spec.channel;
            let unacked = Unacked {
                message: entry.message,
                returns: entry.returns,
                stored: entry.stored,
                level: entry.level,
                expires_at: entry.expires_at,
                consumer: Some(consumer.spec.tag.clone()),
                credit: consumer.spec.channel_credit.clone(),
            };
            self.unacked
                .entry(channel)
                .or_default()
                .insert(entry.seq, unacked);
            self.unacked_count += 1;
        }
        Ok(())
    }

    fn check_delete(&self, if_unused: bool, if_empty: bool) -> CoreResult<u32> {
        let name = self.handle.name();
        let vhost = &self.handle.0.vhost;
        if if_unused && !self.consumers.is_empty() {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{vhost}' in use"
            )));
        }
        if if_empty && !self.ready.is_empty() {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{vhost}' is not empty"
            )));
        }
        Ok(self.ready.len() as u32)
    }

    /// Removes the queue's stored definition (when asked), after the delete's preconditions
    /// held and before the queue stops, so a refused delete never touches the record and a
    /// failed removal leaves the queue as it was.
    fn forget_record(&self, asked: bool) -> CoreResult<()> {
        match self.vhost.upgrade() {
            Some(vhost) if asked => vhost.delete_queue_record(self.handle.name()),
            _ => Ok(()),
        }
    }

    fn cancel_all_consumers(&mut self) {
        for spec in self.remove_consumers_where(|_| true) {
            let _ = spec.sink.send(ConsumerEvent::Cancelled {
                channel: spec.channel,
                consumer_tag: spec.tag.clone(),
            });
        }
    }

    fn should_auto_delete(&self) -> bool {
        self.handle.spec().auto_delete && self.had_consumers && self.consumers.is_empty()
    }

    fn auto_delete(&mut self) {
        tracing::debug!(queue = self.handle.name(), "auto-deleting queue");
        self.forget_everything();
        if let Some(vhost) = self.vhost.upgrade() {
            self.report();
            vhost.forget_queue(&self.handle);
        }
    }
}

/// Waits for the blocking job in `slot` and empties the slot; never resolves without one.
async fn finished<T>(slot: &mut Option<JoinHandle<T>>) -> Option<T> {
    let Some(job) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let result = job.await;
    *slot = None;
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(%error, "a queue's blocking job failed");
            None
        }
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads paged bodies back (on the blocking pool): from the message store or the overflow,
/// the overflow's in one call so it can read neighbours together.
fn read_back(
    store: Option<&dyn MessageStore>,
    overflow: Option<&dyn PageOverflow>,
    wanted: Vec<Wanted>,
) -> ReadBack {
    let places: Vec<_> = wanted
        .iter()
        .filter_map(|w| match w.place {
            Place::Paged(at) => Some(at),
            Place::Stored(_) => None,
        })
        .collect();
    let mut paged = match overflow {
        Some(overflow) if !places.is_empty() => overflow.read(&places),
        _ => Vec::new(),
    }
    .into_iter();
    wanted
        .into_iter()
        .map(|w| {
            let message = match w.place {
                Place::Stored(stored) => store.and_then(|store| store.read(stored.id, stored.at)),
                Place::Paged(_) => paged.next().flatten(),
            };
            (w, message)
        })
        .collect()
}
