//! SUBSCRIBE and UNSUBSCRIBE. A subscription is a consumer (tagged with the subscription id)
//! on the queue its destination names: the queue itself for `/queue/` and `/amq/queue/`, a
//! private queue bound to the exchange for `/topic/` and `/exchange/` (exclusive and
//! auto-delete, or durable and named `stomp-subscription-<id>` with `durable:true`).
//! Permissions are RabbitMQ's: configure on a queue the subscription declares, write on it
//! and read on the exchange to bind it, read on the queue to consume; UNSUBSCRIBE with
//! `durable:true` deletes only the subscription's own durable queue, with configure on it.

use crate::queue_headers::QueueHeaders;
use std::sync::Arc;

use junction_core::{ConsumerSpec, FieldTable, Permission, QueueHandle, QueueSpec, ResourceKind};

use super::{AckMode, Connection, Handled, Refusal, Subscription};
use crate::codec::Frame;
use crate::destination::Destination;

impl Connection {
    pub(super) async fn on_subscribe(&mut self, frame: &Frame) -> Handled {
        let Some(destination_text) = frame.get("destination") else {
            return Err(Refusal::missing_destination("SUBSCRIBE"));
        };
        let destination = Destination::parse(destination_text)?;
        // Without an id (any version, as RabbitMQ allows), the destination names the
        // subscription.
        let id: Arc<str> = frame.get("id").unwrap_or(destination_text).into();
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return Err(Refusal::new(
                    "Invalid ack mode",
                    format!("'{other}' is not auto, client or client-individual"),
                ));
            }
        };
        let prefetch = match frame.get("prefetch-count") {
            None => 0,
            Some(text) => text.trim().parse::<u32>().map_err(|_| {
                Refusal::new("Invalid prefetch-count", format!("'{text}' is not a count"))
            })?,
        };
        let durable = asks_durable(frame);
        let queue_headers = QueueHeaders::from_frame(frame);
        if durable && frame.get("id").is_none() {
            // The durable queue is named after the subscription: it needs a name the client
            // chose, in STOMP 1.0 too (RabbitMQ refuses it the same way).
            return Err(Refusal::new(
                "Missing Header",
                "Header 'id' is required for durable subscriptions",
            ));
        }
        if self.session_mut()?.subscriptions.contains_key(&id) {
            return Err(Refusal::new(
                "Duplicated subscription identifier",
                format!(
                    "A subscription identified by '{}' already exists.",
                    consumer_tag(frame)
                ),
            ));
        }
        let queue = match &destination {
            Destination::Queue(name) => self.declare_named_queue(name, &queue_headers).await?,
            Destination::AmqQueue(name) => {
                let id = self.id;
                self.session_mut()?
                    .vhost
                    .queue_for(name, id)
                    .map_err(Refusal::from)?
            }
            Destination::Topic(key) => {
                self.private_queue("amq.topic", key, durable.then_some(&*id), &queue_headers)
                    .await?
            }
            Destination::Exchange { exchange, key } => {
                let exchange = exchange.clone();
                self.private_queue(&exchange, key, durable.then_some(&*id), &queue_headers)
                    .await?
            }
            Destination::TempQueue(temp) => {
                self.temp_queue(temp, Some(id)).await?;
                return Ok(());
            }
            Destination::ReplyQueue(_) => {
                return Err(Refusal::new(
                    "Invalid destination",
                    "a /reply-queue/ destination can only be sent to",
                ));
            }
        };
        let sink = self.consumer_sink();
        let message_id_prefix = format!("{}@@session-{}@@", consumer_tag(frame), self.id.0);
        let session = self.session_mut()?;
        session
            .authorize(ResourceKind::Queue, queue.name(), Permission::Read)
            .await?;
        queue
            .consume(ConsumerSpec {
                tag: id.clone(),
                channel: session.channel,
                no_ack: ack == AckMode::Auto,
                settles_transient: false,
                exclusive: false,
                prefetch,
                channel_credit: None,
                sink,
                priority: 0,
            })
            .await?;
        session.subscriptions.insert(
            id,
            Subscription {
                queue,
                ack,
                destination: destination_text.to_owned(),
                id: frame.get("id").map(Arc::from),
                message_id_prefix,
            },
        );
        Ok(())
    }

    /// A queue of the connection's own bound to `exchange` with `key`; durable and named
    /// after the subscription when `durable_id` is given. The frame's queue headers name it
    /// (`x-queue-name`), set `auto-delete` and `exclusive`, and give its arguments.
    async fn private_queue(
        &mut self,
        exchange: &str,
        key: &str,
        durable_id: Option<&str>,
        headers: &QueueHeaders,
    ) -> Result<QueueHandle, Refusal> {
        let id = self.id;
        let session = self.session_mut()?;
        session.vhost.exchange(exchange).map_err(Refusal::from)?;
        let mut spec = match durable_id {
            Some(subscription) => QueueSpec {
                name: format!("stomp-subscription-{subscription}"),
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            },
            None => {
                let random: [u8; 12] = rand::random();
                let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
                QueueSpec {
                    name: format!("stomp-subscription-{hex}"),
                    durable: false,
                    exclusive: true,
                    auto_delete: true,
                    arguments: Default::default(),
                }
            }
        };
        if let Some(name) = &headers.name {
            spec.name.clone_from(name);
        }
        spec.exclusive = headers.exclusive.unwrap_or(spec.exclusive);
        spec.auto_delete = headers.auto_delete.unwrap_or(spec.auto_delete);
        spec.arguments = headers.arguments.clone();
        session
            .authorize(ResourceKind::Queue, &spec.name, Permission::Configure)
            .await?;
        session
            .authorize(ResourceKind::Queue, &spec.name, Permission::Write)
            .await?;
        session
            .authorize(ResourceKind::Exchange, exchange, Permission::Read)
            .await?;
        if let Ok(source) = session.vhost.exchange(exchange) {
            session
                .authorize_topic(&source, key, Permission::Read)
                .await?;
        }
        let queue = session
            .vhost
            .declare_queue(spec, false, false, id)
            .await?
            .handle;
        session
            .vhost
            .bind_queue(queue.name(), exchange, key, FieldTable::new(), id)
            .map_err(Refusal::from)?;
        Ok(queue)
    }

    pub(super) async fn on_unsubscribe(&mut self, frame: &Frame) -> Handled {
        let id = self.id;
        let session = self.session_mut()?;
        let (subscription_id, description) = match (frame.get("id"), frame.get("destination")) {
            (Some(id), _) => (id, format!("id='{id}'")),
            (None, Some(destination)) => (destination, format!("destination='{destination}'")),
            (None, None) => {
                return Err(Refusal::new(
                    "Missing destination or id",
                    "UNSUBSCRIBE must include a 'destination' or 'id' header",
                ));
            }
        };
        let tag: Arc<str> = subscription_id.into();
        let Some(subscription) = session.subscriptions.get(&tag) else {
            return Err(Refusal::new(
                "No subscription found",
                format!(
                    "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"{description}\" not found.\n"
                ),
            ));
        };
        // `durable:true` ends a durable subscription: its own queue goes, never a queue the
        // destination names (`/queue/`, `/amq/queue/`), and only with configure on it, as
        // RabbitMQ does. The queue is the subscription's, never one the frame names.
        let asked = asks_durable(frame);
        let forget = asked
            && subscription.queue.spec().durable
            && has_private_queue(&subscription.destination);
        if forget {
            let name = subscription.queue.name().to_owned();
            session
                .authorize(ResourceKind::Queue, &name, Permission::Configure)
                .await?;
        }
        let Some(subscription) = session.subscriptions.remove(&tag) else {
            return Ok(());
        };
        subscription
            .queue
            .cancel(session.channel, tag.clone())
            .await;
        if forget {
            session
                .vhost
                .delete_queue(subscription.queue.name(), false, false, id)
                .await?;
        }
        Ok(())
    }
}

/// Whether the frame asks for a durable subscription (`durable:true`, or `persistent:true`,
/// which RabbitMQ reads too), on SUBSCRIBE and on the UNSUBSCRIBE that ends one.
fn asks_durable(frame: &Frame) -> bool {
    frame.flag("durable") == Some(true) || frame.flag("persistent") == Some(true)
}

/// RabbitMQ's consumer tag for a SUBSCRIBE: `T_<id>`, or `Q_<destination>` for one without an
/// id. Its errors and MESSAGE ids name subscriptions by it.
fn consumer_tag(frame: &Frame) -> String {
    match frame.get("id") {
        Some(id) => format!("T_{id}"),
        None => format!("Q_{}", frame.get("destination").unwrap_or_default()),
    }
}

/// Whether a subscription to `destination` reads from a queue made for it (`/topic/`,
/// `/exchange/`) rather than from a queue the destination names.
fn has_private_queue(destination: &str) -> bool {
    matches!(
        Destination::parse(destination),
        Ok(Destination::Topic(_) | Destination::Exchange { .. })
    )
}
