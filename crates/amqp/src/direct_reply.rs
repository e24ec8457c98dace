//! RabbitMQ's direct reply-to: a client consumes from the pseudo-queue
//! `amq.rabbitmq.reply-to` (without acks) and publishes requests with that name as `reply_to`;
//! the broker rewrites it to an address unique to the channel, and replies published to the
//! default exchange with that address as routing key reach the consumer.
//!
//! Junction backs each such consumer with an exclusive, auto-delete queue named after the
//! address, so replies travel the ordinary default-exchange path and disappear with the
//! requester's connection.

use junction_core::vhost::generate_queue_name;
use junction_core::{Properties, QueueHandle, QueueSpec};

use crate::channel::Channel;
use crate::error::{AmqpError, AmqpResult, code};
use crate::session::Session;

/// The name clients consume from and put in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// The queue behind the channel's reply consumer, created on first use.
pub async fn reply_queue(
    session: &mut Session,
    channel: &mut Channel,
    no_ack: bool,
) -> AmqpResult<QueueHandle> {
    if !no_ack {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "reply consumer cannot acknowledge",
        ));
    }
    if channel.reply_queue.is_some() {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "reply consumer already set",
        ));
    }
    let vhost = session.vhost()?;
    let suffix = generate_queue_name();
    let name = format!("{PSEUDO_QUEUE}.{}", suffix.trim_start_matches("amq.gen-"));
    let spec = QueueSpec {
        name: name.clone(),
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let declared = vhost.declare_queue(spec, false, true, session.id).await?;
    channel.reply_queue = Some(name);
    Ok(declared.handle)
}

/// Rewrites `reply_to: amq.rabbitmq.reply-to` to this channel's reply address.
pub fn rewrite_reply_to(channel: &Channel, properties: &mut Properties) -> AmqpResult<()> {
    if properties.reply_to.as_deref() != Some(PSEUDO_QUEUE) {
        return Ok(());
    }
    match &channel.reply_queue {
        Some(address) => {
            properties.reply_to = Some(address.clone());
            Ok(())
        }
        None => Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "fast reply consumer does not exist",
        )),
    }
}
