//! The confirm class: publisher confirms. A confirming channel owes each publish an answer in
//! the core's durability ledger; confirms owed by a batch of publishes are sent as one
//! basic.ack with `multiple` when the batch ends, instead of one frame per message. A message
//! the store could not write, or a full queue refused, is nacked, never acked.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::basic::{AMQPMethod as Basic, Ack, Nack};
use amq_protocol::protocol::confirm::{AMQPMethod, SelectOk};

use junction_core::Ledger;
use junction_core::ledger::{Confirm, Seq};
use junction_core::persistence::Durability;

use crate::channel::Channel;
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
                channel.confirm = Some(Ledger::new());
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

/// Sends the confirms a channel may send now: each run of positive answers as one basic.ack
/// (with `multiple` when it covers more than one), each failure as a basic.nack. Called once
/// per read batch, so a batch of publishes costs one ack frame.
pub fn flush(session: &mut Session, channel: &mut Channel) {
    let number = channel.id.number;
    while let Some(confirm) = channel.confirm.as_mut().and_then(Ledger::next_confirm) {
        let method = match confirm {
            Confirm::Ack {
                upto,
                multiple,
                covered,
            } => {
                session.count_confirmed(covered);
                Basic::Ack(Ack {
                    delivery_tag: upto,
                    multiple,
                })
            }
            Confirm::Nack(seq) => Basic::Nack(Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            }),
        };
        session.send(number, AMQPClass::Basic(method));
    }
}

/// The message store reports on the persistent message published with confirm `seq`: on
/// disk, its confirm may go (once those before it have); failed, it is nacked, as RabbitMQ
/// nacks what it could not store (unless it was nacked already). Sent by [`flush`].
pub fn durable(channel: &mut Channel, seq: Seq, durability: Durability) {
    if let Some(confirms) = channel.confirm.as_mut() {
        confirms.settle(seq, durability);
    }
}
