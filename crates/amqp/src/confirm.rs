//! The confirm class: publisher confirms. Confirms owed by a batch of publishes are sent as one
//! basic.ack with `multiple` when the batch ends, instead of one frame per message. A message
//! the store could not write is nacked, never acked.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::basic::{AMQPMethod as Basic, Ack, Nack};
use amq_protocol::protocol::confirm::{AMQPMethod, SelectOk};

use junction_core::persistence::Durability;

use crate::channel::{Channel, Confirms};
use crate::error::{AmqpError, AmqpResult, code};
use crate::session::Session;

/// Handles confirm.select.
pub fn handle(session: &mut Session, channel: &mut Channel, method: AMQPMethod) -> AmqpResult<()> {
    match method {
        AMQPMethod::Select(m) => {
            if channel.tx.is_some() {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    "cannot switch from tx to confirm mode",
                ));
            }
            if channel.confirm.is_none() {
                channel.confirm = Some(Confirms::default());
            }
            if !m.nowait {
                session.send(
                    channel.id.number,
                    AMQPClass::Confirm(AMQPMethod::SelectOk(SelectOk {})),
                );
            }
            Ok(())
        }
        other => Err(crate::connection::server_only(&AMQPClass::Confirm(other))),
    }
}

/// Sends the confirms a channel owes, as one basic.ack covering all of them (two around a
/// nack).
pub fn flush(session: &mut Session, channel: &mut Channel) {
    while let Some((delivery_tag, multiple)) = channel.confirm.as_mut().and_then(Confirms::due) {
        session.send(
            channel.id.number,
            AMQPClass::Basic(Basic::Ack(Ack {
                delivery_tag,
                multiple,
            })),
        );
    }
}

/// A persistent message is on disk: its confirm may go out. Or its write failed: it is
/// nacked (after the acks owed before it), as RabbitMQ nacks what it could not store.
pub fn durable(session: &mut Session, channel: &mut Channel, seq: u64, durability: Durability) {
    match durability {
        Durability::OnDisk => {
            if let Some(confirms) = channel.confirm.as_mut() {
                confirms.waiting.remove(&seq);
            }
            flush(session, channel);
        }
        Durability::Failed => {
            // A message nacked already (a full queue refused it, or its queues vanished) is
            // not nacked twice: only one still waiting for the disk is.
            if channel
                .confirm
                .as_ref()
                .is_some_and(|confirms| confirms.waiting.contains(&seq))
            {
                nack(session, channel, seq);
            }
        }
    }
}

/// Nacks publish `seq` (a full queue refused it, or the store could not write it), after the
/// acks owed for earlier messages.
pub fn nack(session: &mut Session, channel: &mut Channel, seq: u64) {
    if let Some(confirms) = channel.confirm.as_mut() {
        confirms.waiting.remove(&seq);
        confirms.nacked.insert(seq);
    }
    flush(session, channel);
    session.send(
        channel.id.number,
        AMQPClass::Basic(Basic::Nack(Nack {
            delivery_tag: seq,
            multiple: false,
            requeue: false,
        })),
    );
}
