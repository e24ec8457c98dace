//! Publishing a whole message in one call, for adapters whose publish is simple (MQTT, STOMP):
//! route it, write it to the message store when it is persistent and reached a durable queue,
//! and hand it to every queue. AMQP does these steps itself, interleaved with confirms,
//! mandatory returns and transactions.

use std::sync::Arc;

use crate::exchange::Exchange;
use crate::message::Message;
use crate::persistence::{OnDurable, QueueKey};
use crate::queue::QueueHandle;
use crate::vhost::VirtualHost;

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// How many queues took it.
    pub queues: usize,
    /// Whether it was written to the message store (then `on_durable` runs once it is on
    /// disk; otherwise `on_durable` was dropped unrun).
    pub stored: bool,
    /// Whether a full queue refused it (`x-overflow` reject-publish).
    pub refused: bool,
}

/// Whether a queue keeps persistent messages in the message store.
pub fn is_durable(queue: &QueueHandle) -> bool {
    queue.spec().durable && !queue.spec().exclusive
}

impl VirtualHost {
    /// Routes `message` through `exchange` and delivers it. A persistent message that reaches
    /// a durable queue is written to the message store first; `on_durable` runs once it is on
    /// disk.
    pub async fn publish(
        &self,
        exchange: &Exchange,
        message: Message,
        on_durable: Option<OnDurable>,
    ) -> Published {
        let mut queues = Vec::new();
        self.route(exchange, &message, &mut queues);
        self.deliver(queues, message, on_durable).await
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
        self.route(&exchange, &message, &mut queues);
        queues.retain(|queue| !crate::queue::is_dead_letter_cycle(&message, queue.name()));
        self.deliver(queues, message, None).await;
    }

    /// Hands `message` to those of `queues` that take it, writing it to the message store
    /// first when it is persistent and one of them is durable.
    async fn deliver(
        &self,
        queues: Vec<QueueHandle>,
        mut message: Message,
        on_durable: Option<OnDurable>,
    ) -> Published {
        let admitted = crate::queue::admit(queues, &message).await;
        let (queues, refused) = (admitted.queues, admitted.refused);
        let mut stored = None;
        if let Some(store) = &self.storage().messages
            && message.properties.is_persistent()
        {
            let durable: Vec<QueueKey> = queues
                .iter()
                .filter(|q| is_durable(q))
                .map(|q| QueueKey {
                    vhost: self.name.clone(),
                    queue: q.name().to_owned(),
                })
                .collect();
            if !durable.is_empty() {
                let id = store.next_id();
                message.store_id = Some(id);
                stored = store.publish(id, &durable, &message, on_durable);
            }
        }
        let message = Arc::new(message);
        let mut taken = 0;
        for queue in &queues {
            let accepted = match stored {
                Some(at) if is_durable(queue) => queue.publish_stored(message.clone(), at).await,
                _ => queue.publish(message.clone()).await,
            };
            if accepted.is_ok() {
                taken += 1;
            }
        }
        Published {
            queues: taken,
            stored: stored.is_some(),
            refused,
        }
    }
}
