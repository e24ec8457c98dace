//! The queue task. It owns the ready messages, the unacknowledged ones (per channel), the
//! consumers and their credit, and is the only place that decides who gets which message.
//! Commands arrive through a bounded mailbox and are handled in batches; after each batch the
//! queue dispatches as many ready messages as its consumers have credit for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{
    ChannelCredit, ChannelId, ConsumerEvent, ConsumerSpec, Delivery, GetResult, MessageSeq,
    QueueCommand, QueueHandle, QueueStats,
};
use crate::error::{CoreError, CoreResult};
use crate::message::Message;
use crate::persistence::{MessageStore, QueueKey, Recovered, StoredAt};
use crate::vhost::VirtualHost;

/// How many commands the queue handles before it dispatches.
const BATCH: usize = 256;

/// Where a persistent message of a durable queue lies in the message store.
#[derive(Clone, Copy)]
struct Stored {
    id: u64,
    at: StoredAt,
}

/// A message waiting for a consumer; its body may be paged out to the store.
struct Ready {
    seq: MessageSeq,
    /// None while paged out (then `stored` says where to read it).
    message: Option<Arc<Message>>,
    stored: Option<Stored>,
    redelivered: bool,
}

/// A ready message with its body in memory, on its way to a consumer.
struct Loaded {
    seq: MessageSeq,
    message: Arc<Message>,
    stored: Option<Stored>,
    redelivered: bool,
}

impl Loaded {
    fn into_ready(self) -> Ready {
        Ready {
            seq: self.seq,
            message: Some(self.message),
            stored: self.stored,
            redelivered: self.redelivered,
        }
    }
}

struct Unacked {
    message: Arc<Message>,
    stored: Option<Stored>,
    /// The consumer it was delivered to (None for basic.get).
    consumer: Option<Arc<str>>,
    /// The channel-wide credit it holds, released when it is settled.
    credit: Option<Arc<ChannelCredit>>,
}

impl Unacked {
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
    ready: VecDeque<Ready>,
    unacked: HashMap<ChannelId, HashMap<MessageSeq, Unacked>>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: MessageSeq,
    had_consumers: bool,
    /// The message store and this queue's key in it, for durable queues.
    store: Option<(Arc<dyn MessageStore>, QueueKey)>,
    /// Bytes of ready bodies held in memory.
    loaded_bytes: usize,
    /// Above this, persistent bodies are paged out to the store.
    max_loaded_bytes: usize,
}

/// Starts the task of a new queue and returns its handle.
/// `store` is given for durable queues: persistent messages leaving the queue for good are
/// removed from it. `recovered` are messages restored from it at start-up, oldest first; they
/// are delivered flagged redelivered.
pub(crate) fn spawn(
    spec: super::QueueSpec,
    owner: Option<super::ConnectionId>,
    vhost: &Arc<VirtualHost>,
    mailbox: usize,
    store: Option<Arc<dyn MessageStore>>,
    recovered: Vec<Recovered>,
    max_loaded_bytes: usize,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(mailbox);
    let store = store.map(|store| {
        let key = QueueKey {
            vhost: vhost.name.clone(),
            queue: spec.name.clone(),
        };
        (store, key)
    });
    let handle = QueueHandle::new(spec, owner, vhost.name.clone(), tx);
    let ready: VecDeque<Ready> = recovered
        .into_iter()
        .enumerate()
        .map(|(seq, recovered)| Ready {
            seq: seq as MessageSeq,
            message: None,
            stored: Some(Stored {
                id: recovered.id,
                at: recovered.at,
            }),
            redelivered: true,
        })
        .collect();
    let actor = QueueActor {
        handle: handle.clone(),
        vhost: Arc::downgrade(vhost),
        next_seq: ready.len() as MessageSeq,
        ready,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_consumer: 0,
        had_consumers: false,
        store,
        loaded_bytes: 0,
        max_loaded_bytes,
    };
    tokio::spawn(actor.run(rx));
    handle
}

/// What handling a command asks the loop to do next.
enum Flow {
    Continue,
    Stop,
}

impl QueueActor {
    async fn run(mut self, mut rx: mpsc::Receiver<QueueCommand>) {
        while let Some(command) = rx.recv().await {
            let mut flow = self.handle_command(command);
            let mut handled = 1;
            while matches!(flow, Flow::Continue) && handled < BATCH {
                match rx.try_recv() {
                    Ok(command) => flow = self.handle_command(command),
                    Err(_) => break,
                }
                handled += 1;
            }
            if matches!(flow, Flow::Stop) {
                break;
            }
            self.dispatch();
            if self.should_auto_delete() {
                self.auto_delete();
                break;
            }
        }
        tracing::debug!(queue = self.handle.name(), "queue task stopped");
    }

    fn handle_command(&mut self, command: QueueCommand) -> Flow {
        match command {
            QueueCommand::Publish(message, at) => self.enqueue(message, at),
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
                let _ = reply.send(self.get(channel, no_ack));
            }
            QueueCommand::Purge(reply) => {
                let purged = self.ready.len() as u32;
                for entry in std::mem::take(&mut self.ready) {
                    self.forget(entry.stored);
                }
                self.loaded_bytes = 0;
                let _ = reply.send(purged);
            }
            QueueCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            QueueCommand::ChannelClosed(channel) => {
                self.consumers.retain(|c| c.spec.channel != channel);
                self.requeue_channel(channel);
            }
            QueueCommand::Recover(channel) => self.requeue_channel(channel),
            QueueCommand::Wake => {}
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let outcome = self.check_delete(if_unused, if_empty);
                let stop = outcome.is_ok();
                if stop {
                    self.cancel_all_consumers();
                    self.forget_everything();
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

    fn enqueue(&mut self, message: Arc<Message>, at: Option<StoredAt>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let stored = match (&self.store, message.store_id, at) {
            (Some(_), Some(id), Some(at)) => Some(Stored { id, at }),
            _ => None,
        };
        let size = message.body.len();
        let page_out = stored.is_some() && self.loaded_bytes + size > self.max_loaded_bytes;
        let message = if page_out {
            None
        } else {
            self.loaded_bytes += size;
            Some(message)
        };
        self.ready.push_back(Ready {
            seq,
            message,
            stored,
            redelivered: false,
        });
    }

    /// Takes the first ready message, reading its body back from the store if it was paged
    /// out. A message that cannot be read back is reported and dropped.
    fn pop_ready(&mut self) -> Option<Loaded> {
        loop {
            let entry = self.ready.pop_front()?;
            let message = match entry.message {
                Some(message) => {
                    self.loaded_bytes = self.loaded_bytes.saturating_sub(message.body.len());
                    message
                }
                None => {
                    let read = match (&self.store, entry.stored) {
                        (Some((store, _)), Some(stored)) => store.read(stored.at),
                        _ => None,
                    };
                    match read {
                        Some(message) => Arc::new(message),
                        None => {
                            tracing::error!(
                                queue = self.handle.name(),
                                "a stored message could not be read back; dropped"
                            );
                            self.forget(entry.stored);
                            continue;
                        }
                    }
                }
            };
            return Some(Loaded {
                seq: entry.seq,
                message,
                stored: entry.stored,
                redelivered: entry.redelivered,
            });
        }
    }

    /// The queue is going away: every persistent message it holds leaves the store.
    fn forget_everything(&mut self) {
        for entry in std::mem::take(&mut self.ready) {
            self.forget(entry.stored);
        }
        self.loaded_bytes = 0;
        for (_, pending) in std::mem::take(&mut self.unacked) {
            for unacked in pending.into_values() {
                self.forget(unacked.stored);
            }
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.len() as u32,
            unacked: self.unacked.values().map(|m| m.len() as u32).sum(),
            consumers: self.consumers.len() as u32,
        }
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
        self.consumers.push(Consumer { spec, unacked: 0 });
        Ok(())
    }

    fn remove_consumer(&mut self, channel: ChannelId, tag: &str) -> bool {
        let before = self.consumers.len();
        self.consumers
            .retain(|c| !(c.spec.channel == channel && &*c.spec.tag == tag));
        before != self.consumers.len()
    }

    fn get(&mut self, channel: ChannelId, no_ack: bool) -> Option<GetResult> {
        let entry = self.pop_ready()?;
        if no_ack {
            self.forget(entry.stored);
        } else {
            self.unacked.entry(channel).or_default().insert(
                entry.seq,
                Unacked {
                    message: entry.message.clone(),
                    stored: entry.stored,
                    consumer: None,
                    credit: None,
                },
            );
        }
        Some(GetResult {
            seq: entry.seq,
            message: entry.message,
            redelivered: entry.redelivered,
            remaining: self.ready.len() as u32,
        })
    }

    /// Acknowledges (`requeue` = None) or rejects the given deliveries of `channel`.
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
            unacked.release(&mut self.consumers, channel);
            if requeue == Some(true) {
                back.push(Ready {
                    seq: *seq,
                    message: Some(unacked.message),
                    stored: unacked.stored,
                    redelivered: true,
                });
            } else {
                gone.push(unacked.stored);
            }
        }
        if pending.is_empty() {
            self.unacked.remove(&channel);
        }
        for stored in gone {
            self.forget(stored);
        }
        self.requeue(back);
    }

    fn requeue_channel(&mut self, channel: ChannelId) {
        let Some(pending) = self.unacked.remove(&channel) else {
            return;
        };
        let mut back = Vec::with_capacity(pending.len());
        for (seq, unacked) in pending {
            unacked.release(&mut self.consumers, channel);
            back.push(Ready {
                seq,
                message: Some(unacked.message),
                stored: unacked.stored,
                redelivered: true,
            });
        }
        self.requeue(back);
    }

    /// Puts messages back in the ready list at their original positions.
    fn requeue(&mut self, mut back: Vec<Ready>) {
        if back.is_empty() {
            return;
        }
        back.sort_by_key(|r| r.seq);
        self.loaded_bytes += back
            .iter()
            .filter_map(|r| r.message.as_ref())
            .map(|m| m.body.len())
            .sum::<usize>();
        let fits_in_front = match (self.ready.front(), back.last()) {
            (Some(first), Some(last)) => last.seq < first.seq,
            _ => true,
        };
        if fits_in_front {
            for entry in back.into_iter().rev() {
                self.ready.push_front(entry);
            }
            return;
        }
        let mut merged = VecDeque::with_capacity(self.ready.len() + back.len());
        let mut old = std::mem::take(&mut self.ready).into_iter().peekable();
        let mut new = back.into_iter().peekable();
        loop {
            let take_new = match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => n.seq < o.seq,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            let next = if take_new { new.next() } else { old.next() };
            merged.extend(next);
        }
        self.ready = merged;
    }

    /// Hands ready messages to consumers with credit, round-robin.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let Some(index) = self.next_consumer_with_room() else {
                return;
            };
            let Some(entry) = self.pop_ready() else {
                return;
            };
            self.next_consumer = index + 1;
            if let Err(entry) = self.deliver(index, entry) {
                self.loaded_bytes += entry.message.body.len();
                self.ready.push_front(entry.into_ready());
                self.drop_disconnected_consumers();
            }
        }
    }

    /// Removes consumers whose connection has gone away and requeues what they held.
    fn drop_disconnected_consumers(&mut self) {
        let mut gone = Vec::new();
        self.consumers.retain(|c| {
            let closed = c.spec.sink.is_closed();
            if closed {
                gone.push(c.spec.channel);
            }
            !closed
        });
        for channel in gone {
            self.requeue_channel(channel);
        }
    }

    fn next_consumer_with_room(&mut self) -> Option<usize> {
        let count = self.consumers.len();
        for offset in 0..count {
            let index = (self.next_consumer + offset) % count;
            let consumer = &self.consumers[index];
            if !consumer.has_room() {
                continue;
            }
            let credit_ok = consumer.spec.no_ack
                || consumer
                    .spec
                    .channel_credit
                    .as_ref()
                    .is_none_or(|credit| credit.try_acquire());
            if credit_ok {
                return Some(index);
            }
        }
        None
    }

    fn deliver(&mut self, index: usize, entry: Loaded) -> Result<(), Loaded> {
        let consumer = &mut self.consumers[index];
        let delivery = Delivery {
            channel: consumer.spec.channel,
            consumer_tag: consumer.spec.tag.clone(),
            queue: self.handle.clone(),
            seq: entry.seq,
            message: entry.message.clone(),
            redelivered: entry.redelivered,
            needs_ack: !consumer.spec.no_ack,
        };
        if consumer
            .spec
            .sink
            .send(ConsumerEvent::Deliver(delivery))
            .is_err()
        {
            if !consumer.spec.no_ack
                && let Some(credit) = &consumer.spec.channel_credit
            {
                credit.release();
            }
            return Err(entry);
        }
        if consumer.spec.no_ack {
            self.forget(entry.stored);
        } else {
            consumer.unacked += 1;
            let channel = consumer.spec.channel;
            let unacked = Unacked {
                message: entry.message,
                stored: entry.stored,
                consumer: Some(consumer.spec.tag.clone()),
                credit: consumer.spec.channel_credit.clone(),
            };
            self.unacked
                .entry(channel)
                .or_default()
                .insert(entry.seq, unacked);
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

    fn cancel_all_consumers(&mut self) {
        for consumer in self.consumers.drain(..) {
            let _ = consumer.spec.sink.send(ConsumerEvent::Cancelled {
                channel: consumer.spec.channel,
                consumer_tag: consumer.spec.tag.clone(),
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
            vhost.forget_queue(&self.handle);
        }
    }
}
