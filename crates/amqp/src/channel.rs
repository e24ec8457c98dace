//! The state of one AMQP channel: the message being assembled from method, header and body
//! frames, consumers, unacknowledged deliveries by delivery tag, prefetch, confirm (the core's
//! durability ledger) and transaction modes, and flow control.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{AmqpError, AmqpResult, code};
use bytes::{Bytes, BytesMut};
use junction_core::queue::MessageSeq;
use junction_core::{ChannelCredit, ChannelId, Delivery, Ledger, Message, Properties, QueueHandle};

/// Where the channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Open and usable.
    Open,
    /// The server sent channel.close and waits for close-ok; other frames are dropped.
    Closing,
}

/// A basic.publish whose content is still arriving.
#[derive(Debug)]
pub struct PendingPublish {
    /// Exchange name.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Return the message if it reaches no queue.
    pub mandatory: bool,
    /// Properties, once the content header arrived.
    pub properties: Option<Properties>,
    /// Declared body size, once the content header arrived.
    pub body_size: u64,
    /// Body frames received so far.
    pub body: BodyParts,
}

/// The body of a message arriving in one or more frames; one frame needs no copy.
#[derive(Debug, Default)]
pub enum BodyParts {
    /// Nothing yet.
    #[default]
    Empty,
    /// One frame's payload, shared with the read buffer.
    One(Bytes),
    /// Several frames, copied together.
    Many(BytesMut),
}

impl BodyParts {
    /// Bytes received so far.
    pub fn len(&self) -> usize {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len(),
            BodyParts::Many(b) => b.len(),
        }
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a body frame.
    pub fn push(&mut self, part: Bytes) {
        *self = match std::mem::take(self) {
            BodyParts::Empty => BodyParts::One(part),
            BodyParts::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + part.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&part);
                BodyParts::Many(many)
            }
            BodyParts::Many(mut many) => {
                many.extend_from_slice(&part);
                BodyParts::Many(many)
            }
        };
    }

    /// The whole body.
    pub fn finish(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Many(b) => b.freeze(),
        }
    }
}

/// A consumer of this channel.
#[derive(Debug, Clone)]
pub struct ChannelConsumer {
    /// The queue it consumes from.
    pub queue: QueueHandle,
}

/// An unacknowledged delivery: where to send its acknowledgement.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// The queue it came from.
    pub queue: QueueHandle,
    /// Its position in that queue.
    pub seq: MessageSeq,
}

/// Work deferred until tx.commit.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Messages to publish, with their mandatory flag.
    pub publishes: Vec<(Message, bool)>,
    /// Settlements: (delivery tag, delivery, requeue) where requeue None means ack.
    pub settlements: Vec<(u64, Unacked, Option<bool>)>,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// The core's identity of this channel.
    pub id: ChannelId,
    /// Open or closing.
    pub state: ChannelState,
    /// A publish waiting for its header or body.
    pub pending: Option<PendingPublish>,
    /// Consumers by tag.
    pub consumers: HashMap<Arc<str>, ChannelConsumer>,
    /// Unacknowledged deliveries by delivery tag.
    pub unacked: BTreeMap<u64, Unacked>,
    /// The last delivery tag handed out.
    pub last_delivery_tag: u64,
    /// Per-consumer prefetch for consumers created from now on (basic.qos global=false).
    pub consumer_prefetch: u32,
    /// Channel-wide prefetch shared by all its consumers (basic.qos global=true).
    pub credit: Arc<ChannelCredit>,
    /// Publisher confirms, once confirm.select was received: the confirms owed, in publish
    /// order, by sequence number (the ledger's).
    pub confirm: Option<Ledger<()>>,
    /// The transaction, in tx mode.
    pub tx: Option<Transaction>,
    /// Whether deliveries may flow (channel.flow).
    pub flow_active: bool,
    /// Deliveries held back while flow is off.
    pub held: VecDeque<Delivery>,
    /// The queue behind this channel's direct reply-to consumer, if it has one.
    pub reply_queue: Option<String>,
    /// The last queue declared on this channel: an empty queue name stands for it.
    pub last_queue: Option<String>,
}

impl Channel {
    /// A new open channel.
    pub fn new(id: ChannelId) -> Self {
        Self {
            id,
            state: ChannelState::Open,
            pending: None,
            consumers: HashMap::new(),
            unacked: BTreeMap::new(),
            last_delivery_tag: 0,
            consumer_prefetch: 0,
            credit: Arc::new(ChannelCredit::new(0)),
            confirm: None,
            tx: None,
            flow_active: true,
            held: VecDeque::new(),
            reply_queue: None,
            last_queue: None,
        }
    }

    /// Expands RabbitMQ's shortcut: an empty queue name means the last queue declared here.
    pub fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(code::NOT_FOUND, "no previously declared queue"))
    }

    /// Hands out the next delivery tag.
    pub fn next_delivery_tag(&mut self) -> u64 {
        self.last_delivery_tag += 1;
        self.last_delivery_tag
    }

    /// Takes the deliveries named by an ack, nack or reject: `tag` alone, or with `multiple`
    /// every tag up to it (all of them when `tag` is 0). None when a named tag is unknown.
    pub fn take_unacked(&mut self, tag: u64, multiple: bool) -> Option<Vec<(u64, Unacked)>> {
        if multiple {
            // The named tag itself must be outstanding (0 means "all of them").
            if tag != 0 && !self.unacked.contains_key(&tag) {
                return None;
            }
            let limit = if tag == 0 { u64::MAX } else { tag };
            let rest = match limit.checked_add(1) {
                Some(after) => self.unacked.split_off(&after),
                None => BTreeMap::new(),
            };
            let taken = std::mem::replace(&mut self.unacked, rest);
            Some(taken.into_iter().collect())
        } else {
            self.unacked.remove(&tag).map(|u| vec![(tag, u)])
        }
    }

    /// Every queue this channel has consumers on or unacknowledged messages from, once each.
    pub fn queues_touched(&self) -> Vec<QueueHandle> {
        let mut queues: Vec<QueueHandle> = Vec::new();
        let all = self
            .consumers
            .values()
            .map(|c| &c.queue)
            .chain(self.unacked.values().map(|u| &u.queue));
        for queue in all {
            if !queues.iter().any(|q| q.same(queue)) {
                queues.push(queue.clone());
            }
        }
        queues
    }
}

/// Groups settled deliveries by queue, keeping each queue's sequence numbers in order.
pub fn by_queue(deliveries: Vec<Unacked>) -> Vec<(QueueHandle, Vec<MessageSeq>)> {
    let mut groups: Vec<(QueueHandle, Vec<MessageSeq>)> = Vec::new();
    for delivery in deliveries {
        match groups.iter_mut().find(|(q, _)| q.same(&delivery.queue)) {
            Some((_, seqs)) => seqs.push(delivery.seq),
            None => groups.push((delivery.queue, vec![delivery.seq])),
        }
    }
    groups
}
