//! The basic class: publishing (through the core's publish pipeline, with mandatory returns
//! and confirms), consuming, basic.get, acknowledgements, prefetch and recovery, as core calls;
//! and the encoding of deliveries.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::basic::{
    AMQPMethod, CancelOk, ConsumeOk, Deliver, GetEmpty, GetOk, QosOk, RecoverOk, Return,
};
use junction_core::publish::Persisted;
use junction_core::{
    ConsumerSpec, Delivery, Exchange, Message, OnDurable, Permission, Publication, QueueHandle,
    ResourceKind,
};

use crate::channel::{BodyParts, Channel, ChannelConsumer, PendingPublish, Unacked, by_queue};
use crate::direct_reply;
use crate::error::{AmqpError, AmqpResult, code};
use crate::properties::{properties_to_wire, table_from_wire};
use crate::session::Session;
use crate::tx::Unwritten;

/// Handles one basic-class method (content, if any, arrives in later frames).
pub async fn handle(
    session: &mut Session,
    channel: &mut Channel,
    method: AMQPMethod,
) -> AmqpResult<()> {
    let number = channel.id.number;
    match method {
        AMQPMethod::Publish(m) => {
            if m.immediate {
                return Err(AmqpError::connection(
                    code::NOT_IMPLEMENTED,
                    "immediate=true",
                ));
            }
            session.has_published = true;
            channel.pending = Some(PendingPublish {
                exchange: m.exchange.as_str().to_owned(),
                routing_key: m.routing_key.as_str().to_owned(),
                mandatory: m.mandatory,
                properties: None,
                body_size: 0,
                body: BodyParts::Empty,
            });
        }
        AMQPMethod::Qos(m) => {
            let count = u32::from(m.prefetch_count);
            if m.global {
                channel.credit.set_limit(count);
                wake_consumed_queues(channel).await;
            } else {
                channel.consumer_prefetch = count;
            }
            session.send(number, AMQPClass::Basic(AMQPMethod::QosOk(QosOk {})));
        }
        AMQPMethod::Consume(m) => {
            let vhost = session.vhost()?;
            let most = session.settings.consumer_max_per_channel;
            if most > 0 && channel.consumers.len() >= most {
                tracing::info!(peer = ?session.peer, most, "consumer refused: per-channel limit");
                return Err(AmqpError::connection(
                    code::NOT_ALLOWED,
                    format!("reached maximum ({most}) of consumers per channel"),
                ));
            }
            let queue = if m.queue.as_str() == direct_reply::PSEUDO_QUEUE {
                direct_reply::reply_queue(session, channel, m.no_ack).await?
            } else {
                let name = channel.queue_name(m.queue.as_str())?;
                session
                    .authorize(ResourceKind::Queue, &name, Permission::Read)
                    .await?;
                vhost.queue_for(&name, session.id)?
            };
            if queue.arguments().is_quorum() && channel.credit.limit() > 0 {
                return Err(AmqpError::connection(
                    code::NOT_IMPLEMENTED,
                    format!(
                        "queue '{}' in vhost '{}' does not support global qos",
                        queue.name(),
                        vhost.name
                    ),
                ));
            }
            let priority =
                junction_core::queue::arguments::consumer_priority(&table_from_wire(&m.arguments))
                    .map_err(|error| {
                        AmqpError::channel(
                            code::PRECONDITION_FAILED,
                            error.message(queue.name(), &vhost.name),
                        )
                    })?;
            let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
                generate_consumer_tag().into()
            } else {
                m.consumer_tag.as_str().into()
            };
            if channel.consumers.contains_key(&tag) {
                return Err(AmqpError::connection(
                    code::NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
            let spec = ConsumerSpec {
                tag: tag.clone(),
                channel: channel.id,
                no_ack: m.no_ack,
                settles_transient: false,
                exclusive: m.exclusive,
                prefetch: channel.consumer_prefetch,
                channel_credit: Some(channel.credit.clone()),
                sink: session.consumer_sink(),
                priority,
            };
            queue.consume(spec).await?;
            channel
                .consumers
                .insert(tag.clone(), ChannelConsumer { queue });
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Basic(AMQPMethod::ConsumeOk(ConsumeOk {
                        consumer_tag: tag.as_ref().into(),
                    })),
                );
            }
        }
        AMQPMethod::Cancel(m) => {
            let tag: Arc<str> = m.consumer_tag.as_str().into();
            if let Some(consumer) = channel.consumers.remove(&tag) {
                consumer.queue.cancel(channel.id, tag.clone()).await;
            }
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Basic(AMQPMethod::CancelOk(CancelOk {
                        consumer_tag: tag.as_ref().into(),
                    })),
                );
            }
        }
        AMQPMethod::Get(m) => {
            let vhost = session.vhost()?;
            let name = channel.queue_name(m.queue.as_str())?;
            session
                .authorize(ResourceKind::Queue, &name, Permission::Read)
                .await?;
            let queue = vhost.queue_for(&name, session.id)?;
            match queue.get(channel.id, m.no_ack).await? {
                None => session.send(number, AMQPClass::Basic(AMQPMethod::GetEmpty(GetEmpty {}))),
                Some(got) => {
                    let delivery_tag = channel.next_delivery_tag();
                    if !m.no_ack {
                        channel.unacked.insert(
                            delivery_tag,
                            Unacked {
                                queue: queue.clone(),
                                seq: got.seq,
                            },
                        );
                    }
                    session.send(
                        number,
                        AMQPClass::Basic(AMQPMethod::GetOk(GetOk {
                            delivery_tag,
                            redelivered: got.redelivered,
                            exchange: got.message.exchange.as_str().into(),
                            routing_key: got.message.routing_key.as_str().into(),
                            message_count: got.remaining,
                        })),
                    );
                    write_content(session, number, &got.message);
                }
            }
        }
        AMQPMethod::Ack(m) => settle(channel, m.delivery_tag, m.multiple, None).await?,
        AMQPMethod::Nack(m) => settle(channel, m.delivery_tag, m.multiple, Some(m.requeue)).await?,
        AMQPMethod::Reject(m) => settle(channel, m.delivery_tag, false, Some(m.requeue)).await?,
        AMQPMethod::Recover(m) => {
            recover(channel, m.requeue).await?;
            session.send(
                number,
                AMQPClass::Basic(AMQPMethod::RecoverOk(RecoverOk {})),
            );
        }
        AMQPMethod::RecoverAsync(m) => recover(channel, m.requeue).await?,
        other => return Err(crate::connection::server_only(&AMQPClass::Basic(other))),
    }
    Ok(())
}

/// A consumer tag in RabbitMQ's style for consumers that did not name themselves.
fn generate_consumer_tag() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.ctag-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// basic.recover: every unacknowledged delivery of the channel goes back to its queue.
async fn recover(channel: &mut Channel, requeue: bool) -> AmqpResult<()> {
    if !requeue {
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            "requeue=false",
        ));
    }
    let queues = channel.queues_touched();
    channel.unacked.clear();
    for queue in queues {
        queue.recover(channel.id).await;
    }
    Ok(())
}

/// Acks (`requeue` None), nacks or rejects deliveries by tag.
async fn settle(
    channel: &mut Channel,
    tag: u64,
    multiple: bool,
    requeue: Option<bool>,
) -> AmqpResult<()> {
    let Some(deliveries) = channel.take_unacked(tag, multiple) else {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("unknown delivery tag {tag}"),
        ));
    };
    if let Some(tx) = channel.tx.as_mut() {
        tx.settlements
            .extend(deliveries.into_iter().map(|(tag, d)| (tag, d, requeue)));
        return Ok(());
    }
    let deliveries = deliveries.into_iter().map(|(_, d)| d).collect();
    apply_settlements(channel, deliveries, requeue).await;
    Ok(())
}

/// Sends settlements to their queues, grouped per queue.
pub async fn apply_settlements(channel: &Channel, deliveries: Vec<Unacked>, requeue: Option<bool>) {
    for (queue, seqs) in by_queue(deliveries) {
        match requeue {
            None => queue.ack(channel.id, seqs).await,
            Some(requeue) => queue.reject(channel.id, seqs, requeue).await,
        }
    }
    if channel.credit.limit() > 0 {
        wake_consumed_queues(channel).await;
    }
}

/// Lets every queue this channel consumes from know that channel-wide credit may be free.
async fn wake_consumed_queues(channel: &Channel) {
    let mut woken: Vec<&QueueHandle> = Vec::new();
    for consumer in channel.consumers.values() {
        if !woken.iter().any(|q| q.same(&consumer.queue)) {
            consumer.queue.wake().await;
            woken.push(&consumer.queue);
        }
    }
}

/// Completes a publish whose body has fully arrived: routes it, or holds it for tx.commit.
pub async fn publish(
    session: &mut Session,
    channel: &mut Channel,
    pending: PendingPublish,
) -> AmqpResult<()> {
    let vhost = session.vhost()?;
    session
        .authorize(ResourceKind::Exchange, &pending.exchange, Permission::Write)
        .await?;
    let exchange = vhost.exchange(&pending.exchange)?;
    if exchange.spec.internal {
        return Err(AmqpError::channel(
            code::ACCESS_REFUSED,
            format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, vhost.name
            ),
        ));
    }
    session
        .authorize_topic(&exchange, &pending.routing_key, Permission::Write)
        .await?;
    let mut properties = pending.properties.unwrap_or_default();
    check_expiration(&properties)?;
    direct_reply::rewrite_reply_to(channel, &mut properties)?;
    if let (Some(claimed), Some(principal)) = (&properties.user_id, &session.principal)
        && *claimed != principal.user.name
    {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!(
                "user_id property set to '{claimed}' but authenticated user was '{}'",
                principal.user.name
            ),
        ));
    }
    let message = Message::new(
        pending.exchange,
        pending.routing_key,
        properties,
        pending.body.finish(),
    );
    if let Some(tx) = channel.tx.as_mut() {
        tx.publishes.push((message, pending.mandatory));
        return Ok(());
    }
    publish_message(
        session,
        channel,
        &exchange,
        message,
        pending.mandatory,
        None,
    )
    .await
}

/// Publishes a message through the core's publish pipeline, which routes it, lets full queues
/// refuse it and writes it to the message store before any queue sees it; then returns it to
/// its publisher when mandatory and unroutable, and owes its confirm in the channel's
/// durability ledger (waiting for the disk when it was written). A message published by
/// tx.commit reports a failed write to `unwritten`.
pub async fn publish_message(
    session: &mut Session,
    channel: &mut Channel,
    exchange: &Exchange,
    message: Message,
    mandatory: bool,
    unwritten: Option<&Unwritten>,
) -> AmqpResult<()> {
    let vhost = session.vhost()?;
    let seq = channel.confirm.as_mut().map(|confirms| confirms.owe(()));
    let id = channel.id;
    let durable = &mut session.durable;
    let size = message.body.len();
    let mut publication = Publication::new(exchange, message).mandatory(mandatory);
    if let Some(registration) = &session.registration {
        publication = publication.counted(registration.messages());
    }
    let (mut confirm_on_disk, mut commit_on_disk);
    if let Some(seq) = seq {
        confirm_on_disk = move || -> OnDurable {
            let notify = durable.sender();
            Box::new(move |durability| {
                let _ = notify.send((id, seq, durability));
            })
        };
        publication = publication.on_durable(&mut confirm_on_disk);
    } else if let Some(unwritten) = unwritten {
        commit_on_disk = || unwritten.completion();
        publication = publication.on_durable(&mut commit_on_disk);
    }
    let published = vhost.publish(publication).await;
    published.hold(&mut session.flow);
    if let Some(slot) = &mut session.limit_slot {
        slot.charge_publish(size, &mut session.flow);
    }
    if let Some(returned) = &published.returned {
        let number = channel.id.number;
        session.send(
            number,
            AMQPClass::Basic(AMQPMethod::Return(Return {
                reply_code: code::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: returned.exchange.as_str().into(),
                routing_key: returned.routing_key.as_str().into(),
            })),
        );
        write_content(session, number, returned);
    }
    if let (Some(seq), Some(confirms)) = (seq, channel.confirm.as_mut()) {
        if published.is_lost() {
            // A full queue refused it, the store could not write it (RabbitMQ does not
            // enqueue what it could not store), or every queue it was routed to vanished
            // before taking it: nack it now, after the acks owed for earlier messages.
            confirms.fail(seq);
            crate::confirm::flush(session, channel);
        } else if published.stored != Persisted::Pending {
            confirms.ready(seq);
        }
    } else if published.stored == Persisted::Refused {
        if unwritten.is_some() {
            return Err(AmqpError::connection(
                code::INTERNAL_ERROR,
                "the message store could not write a persistent message of the transaction",
            ));
        }
        // Logged at debug: the writer logs the failure itself, once per failed batch.
        tracing::debug!(exchange = %exchange.name, "persistent message dropped: the message store cannot write");
    }
    Ok(())
}

/// Writes a content header and body frames for `message`.
pub fn write_content(session: &mut Session, channel: u16, message: &Message) {
    let properties = properties_to_wire(&message.properties);
    let frame_max = session.frame_max;
    session
        .out
        .content(channel, &properties, &message.body, frame_max);
}

/// Writes a delivery to a consumer and records it as unacknowledged when it needs an ack.
pub fn deliver(session: &mut Session, channel: &mut Channel, delivery: Delivery) {
    let delivery_tag = channel.next_delivery_tag();
    let number = channel.id.number;
    session.send(
        number,
        AMQPClass::Basic(AMQPMethod::Deliver(Deliver {
            consumer_tag: delivery.consumer_tag.as_ref().into(),
            delivery_tag,
            redelivered: delivery.redelivered,
            exchange: delivery.message.exchange.as_str().into(),
            routing_key: delivery.message.routing_key.as_str().into(),
        })),
    );
    write_content(session, number, &delivery.message);
    if delivery.needs_ack {
        channel.unacked.insert(
            delivery_tag,
            Unacked {
                queue: delivery.queue,
                seq: delivery.seq,
            },
        );
    }
}

/// A per-message TTL must be a non-negative integer number of milliseconds (406 otherwise).
fn check_expiration(properties: &junction_core::Properties) -> AmqpResult<()> {
    let Some(expiration) = &properties.expiration else {
        return Ok(());
    };
    match expiration.parse::<i64>() {
        Ok(ms) if ms >= 0 => Ok(()),
        Ok(_) => Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("invalid expiration '{expiration}': negative"),
        )),
        Err(_) => Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("invalid expiration '{expiration}': no_integer"),
        )),
    }
}
