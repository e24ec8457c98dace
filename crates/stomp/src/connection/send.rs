//! SEND: the destination decides exchange and routing key; headers become properties; a
//! `persistent:true` message reaching a durable queue is written to the message store and its
//! RECEIPT waits for the disk. A `reply-to: /temp-queue/N` creates the connection's temporary
//! queue N (once) and is rewritten to `/reply-queue/<its name>`, which any client can SEND to.
//! Permissions are RabbitMQ's STOMP plugin's: write on the exchange (never an internal one),
//! configure on a `/queue/` destination's queue and on a temporary queue (read too, which the
//! connection consumes from).

use crate::queue_headers::QueueHeaders;
use std::sync::Arc;

use junction_core::publish::Persisted;
use junction_core::{
    ConsumerSpec, Message, OnDurable, Permission, Publication, QueueSpec, ResourceKind,
};

use super::{AckMode, Connection, Refusal, Subscription};
use crate::codec::Frame;
use crate::destination::Destination;
use crate::headers;

impl Connection {
    /// Handles a SEND, or queues it in its transaction: then it returns true, and its receipt
    /// is owed when COMMIT applies it (as RabbitMQ answers it), not now.
    pub(super) async fn on_send(&mut self, frame: Frame) -> Result<bool, Refusal> {
        let Some(destination) = frame.get("destination") else {
            return Err(Refusal::missing_destination("SEND"));
        };
        if frame.get("message-id").is_some() {
            // The broker names messages; a client may not (RabbitMQ refuses it too).
            return Err(Refusal::new(
                "Invalid header",
                "'message-id' is not allowed on 'SEND'.\n",
            ));
        }
        let destination = Destination::parse(destination)?;
        if let Some(transaction) = frame.get("transaction") {
            let transaction = transaction.to_owned();
            let session = self.session_mut()?;
            let Some(pending) = session.transactions.get_mut(&transaction) else {
                return Err(Refusal::bad_transaction(&transaction));
            };
            pending.push(frame);
            return Ok(true);
        }
        self.publish(&destination, frame).await?;
        Ok(false)
    }

    /// Publishes a SEND frame to `destination`. A persistent one takes a place in the
    /// receipts' ledger, so receipts after it wait until it is on disk.
    pub(super) async fn publish(
        &mut self,
        destination: &Destination,
        frame: Frame,
    ) -> Result<(), Refusal> {
        let Some((exchange_name, key)) = destination.publish_target() else {
            return Err(Refusal::new(
                "Invalid destination",
                "a /temp-queue/ destination is for reply-to headers and subscriptions",
            ));
        };
        if let Destination::Queue(name) = destination {
            self.declare_named_queue(name, &QueueHeaders::from_frame(&frame))
                .await?;
        }
        let mut properties = headers::properties_from_send(&frame);
        if let Some(reply_to) = properties.reply_to.clone()
            && let Ok(Destination::TempQueue(temp)) = Destination::parse(&reply_to)
        {
            let queue = self.temp_queue(&temp, None).await?;
            properties.reply_to = Some(format!("/reply-queue/{queue}"));
        }
        let persistent = properties.is_persistent();
        let durable = &mut self.durable;
        let registration = self.registration.as_ref();
        let Some(session) = self.session.as_mut() else {
            return Err(Refusal::new("Not connected", "CONNECT first"));
        };
        session
            .authorize(ResourceKind::Exchange, exchange_name, Permission::Write)
            .await?;
        let exchange = session
            .vhost
            .exchange(exchange_name)
            .map_err(Refusal::from)?;
        if exchange.spec.internal {
            // As AMQP's basic.publish (403): an internal exchange takes messages only from
            // other exchanges.
            return Err(junction_core::CoreError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, session.vhost.name
            ))
            .into());
        }
        session
            .authorize_topic(&exchange, key, Permission::Write)
            .await?;
        let size = frame.body.len();
        let message = Message::new(exchange_name, key, properties, frame.body);
        let mut publication = Publication::new(&exchange, message);
        if let Some(registration) = registration {
            publication = publication.counted(registration.messages());
        }
        let seq = persistent.then(|| session.receipts.owe(None));
        let mut on_durable;
        if let Some(seq) = seq {
            on_durable = move || -> OnDurable {
                let tx = durable.sender();
                Box::new(move |durability| {
                    let _ = tx.send((seq, durability));
                })
            };
            publication = publication.on_durable(&mut on_durable);
        }
        let published = session.vhost.publish(publication).await;
        published.hold(&mut self.flow);
        if let Some(slot) = &mut session.limit_slot {
            slot.charge_publish(size, &mut self.flow);
        }
        match (published.stored, seq) {
            (Persisted::Pending, _) | (_, None) => Ok(()),
            (Persisted::Unneeded, Some(seq)) => {
                session.receipts.ready(seq);
                Ok(())
            }
            (Persisted::Refused, Some(seq)) => {
                // The ERROR frame that closes the connection says so: its place in the
                // ledger has nothing more to say.
                session.receipts.ready(seq);
                Err(super::not_stored())
            }
        }
    }

    /// Declares queue `name` for `/queue/` destinations (durable, as RabbitMQ does), unless it
    /// exists already. As in RabbitMQ, a `/queue/` destination is a declaration and needs
    /// configure on the queue even when it exists (`/amq/queue/` is the one that does not).
    pub(super) async fn declare_named_queue(
        &mut self,
        name: &str,
        headers: &QueueHeaders,
    ) -> Result<junction_core::QueueHandle, Refusal> {
        let id = self.id;
        let session = self.session_mut()?;
        session
            .authorize(ResourceKind::Queue, name, Permission::Configure)
            .await?;
        // A frame that says nothing about the queue takes it as it is; one with queue
        // headers declares it, so different ones are refused as an AMQP redeclaration is.
        if headers.is_empty()
            && let Some(queue) = session.vhost.queue(name)
        {
            return Ok(queue);
        }
        let spec = QueueSpec {
            name: name.to_owned(),
            durable: headers.durable.unwrap_or(true),
            exclusive: headers.exclusive.unwrap_or(false),
            auto_delete: headers.auto_delete.unwrap_or(false),
            arguments: headers.arguments.clone(),
        };
        let declared = session.vhost.declare_queue(spec, false, false, id).await?;
        Ok(declared.handle)
    }

    /// The name of the connection's temporary queue `temp`, declared and consumed from on
    /// first use. Its messages arrive with `subscription: /temp-queue/<temp>`, or with the id
    /// of an explicit SUBSCRIBE to the temporary queue (`subscription`), which replaces the
    /// implicit consumer.
    pub(super) async fn temp_queue(
        &mut self,
        temp: &str,
        subscription: Option<Arc<str>>,
    ) -> Result<String, Refusal> {
        let id = self.id;
        let sink = self.consumer_sink();
        let session = self.session_mut()?;
        let destination = format!("/temp-queue/{temp}");
        let existing = session.temp_queues.get(temp).cloned();
        if let Some(queue) = &existing
            && subscription.is_none()
        {
            return Ok(queue.name().to_owned());
        }
        let queue = match existing {
            Some(queue) => queue,
            None => {
                // RabbitMQ's name for it, so permission patterns written for RabbitMQ match;
                // declaring it needs configure, consuming from it read.
                let name = format!(
                    "stomp.gen-{}",
                    junction_core::vhost::generate_queue_name().trim_start_matches("amq.gen-")
                );
                session
                    .authorize(ResourceKind::Queue, &name, Permission::Configure)
                    .await?;
                session
                    .authorize(ResourceKind::Queue, &name, Permission::Read)
                    .await?;
                let spec = QueueSpec {
                    name,
                    durable: false,
                    exclusive: true,
                    auto_delete: true,
                    arguments: Default::default(),
                };
                let queue = session
                    .vhost
                    .declare_queue(spec, false, false, id)
                    .await?
                    .handle;
                session.temp_queues.insert(temp.to_owned(), queue.clone());
                queue
            }
        };
        let tag: Arc<str> = subscription.unwrap_or_else(|| destination.as_str().into());
        let replaced: Vec<Arc<str>> = session
            .subscriptions
            .iter()
            .filter(|(t, s)| s.destination == destination && **t != tag)
            .map(|(t, _)| t.clone())
            .collect();
        queue
            .consume(ConsumerSpec {
                tag: tag.clone(),
                channel: session.channel,
                no_ack: true,
                settles_transient: false,
                exclusive: false,
                prefetch: 0,
                channel_credit: None,
                sink,
                priority: 0,
            })
            .await?;
        session.subscriptions.insert(
            tag.clone(),
            Subscription {
                queue: queue.clone(),
                ack: AckMode::Auto,
                destination,
                message_id_prefix: format!("T_{tag}@@session-{}@@", id.0),
                id: Some(tag),
            },
        );
        // The new consumer is in place before the old one goes, so the auto-delete queue
        // never loses its last consumer.
        for old in replaced {
            session.subscriptions.remove(&old);
            queue.cancel(session.channel, old).await;
        }
        Ok(queue.name().to_owned())
    }

    /// Where this connection's subscriptions send their deliveries (made on first use).
    pub(super) fn consumer_sink(&mut self) -> junction_core::ConsumerSink {
        let budget = self.broker.config().delivery_budget;
        junction_core::ConsumerSink::shared(
            &mut self.consumer_sink,
            || self.events.sender(),
            budget,
        )
    }

    pub(super) fn session_mut(&mut self) -> Result<&mut super::Session, Refusal> {
        self.session
            .as_mut()
            .ok_or_else(|| Refusal::new("Not connected", "CONNECT first"))
    }
}
