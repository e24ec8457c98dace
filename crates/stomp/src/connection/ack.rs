//! MESSAGE frames out and ACK/NACK in. In `client` mode an ACK settles every message of the
//! subscription up to and including the one named (cumulative); in `client-individual` mode
//! only that one. NACK requeues (RabbitMQ's default) unless it says `requeue:false`. STOMP 1.2
//! names a message by the MESSAGE's `ack` header (sent back as `id`); 1.0 and 1.1 by its
//! `message-id`.

use junction_core::Delivery;

use super::{AckMode, Connection, Handled, Refusal, Unacked};
use crate::codec::{self, Frame, Version};
use crate::destination::Destination;
use crate::headers;

impl Connection {
    pub(super) fn deliver(&mut self, delivery: Delivery) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let Some(subscription) = session.subscriptions.get(&delivery.consumer_tag) else {
            if delivery.needs_ack {
                self.queue_returns.push((delivery.queue, delivery.seq));
            }
            return;
        };
        session.next_message += 1;
        let number = session.next_message;
        let message = &delivery.message;
        let destination = if subscription.destination.starts_with("/temp-queue/") {
            subscription.destination.clone()
        } else {
            Destination::for_message(&message.exchange, &message.routing_key)
        };
        // RabbitMQ's headers, in its order (its tests match frames whole): `subscription`
        // when the client named it, `message-id` as `<consumer tag>@@<session>@@<n>`, and
        // `redelivered` always, false too.
        let mut frame = Frame::new("MESSAGE");
        if let Some(id) = &subscription.id {
            frame = frame.header("subscription", id.to_string());
        }
        let message_id = format!("{}{number}", subscription.message_id_prefix);
        frame = frame
            .header("destination", destination)
            .header("message-id", message_id.clone())
            .header(
                "redelivered",
                if delivery.redelivered {
                    "true"
                } else {
                    "false"
                },
            );
        if session.version == Version::V1_2 && subscription.ack != AckMode::Auto {
            frame = frame.header("ack", message_id);
        }
        frame = headers::add_property_headers(frame, &message.properties);
        frame.body = message.body.clone();
        if frame.body.is_empty() {
            frame = frame.header("content-length", "0");
        }
        codec::encode(&frame, Some(session.version), &mut self.out);
        if delivery.needs_ack {
            session.unacked.insert(
                number,
                Unacked {
                    subscription: delivery.consumer_tag,
                    queue: delivery.queue,
                    seq: delivery.seq,
                },
            );
        }
    }

    pub(super) async fn on_ack(&mut self, frame: &Frame, nack: bool) -> Handled {
        let command = if nack { "NACK" } else { "ACK" };
        let session = self.session_mut()?;
        // STOMP 1.2 names the message by `id` only (RabbitMQ refuses a 1.2 ACK without it);
        // 1.0 and 1.1 by `message-id`, and `id` is taken too.
        let named = match session.version {
            Version::V1_2 => frame.get("id"),
            _ => frame.get("message-id").or_else(|| frame.get("id")),
        };
        let Some(text) = named else {
            let header = if session.version == Version::V1_2 {
                "id"
            } else {
                "message-id"
            };
            return Err(Refusal::missing_header(command, header));
        };
        if let Some(transaction) = frame.get("transaction") {
            let Some(pending) = session.transactions.get_mut(transaction) else {
                return Err(Refusal::bad_transaction(transaction));
            };
            pending.push(frame.clone());
            return Ok(());
        }
        // The number after the last `@@` of a `message-id` (or the whole of a bare number).
        let number_text = text.rsplit("@@").next().unwrap_or(text);
        let Ok(number) = number_text.trim().parse::<u64>() else {
            return Err(Refusal::new(
                "Invalid message id",
                format!("'{text}' names no message of this connection"),
            ));
        };
        let Some(named) = session.unacked.get(&number) else {
            tracing::debug!(number, "{command} for a message not awaiting one; ignored");
            return Ok(());
        };
        let subscription = named.subscription.clone();
        let cumulative = session
            .subscriptions
            .get(&subscription)
            .is_some_and(|s| s.ack == AckMode::Client);
        let numbers: Vec<u64> = if cumulative {
            session
                .unacked
                .range(..=number)
                .filter(|(_, u)| u.subscription == subscription)
                .map(|(n, _)| *n)
                .collect()
        } else {
            vec![number]
        };
        let mut settled: Vec<Unacked> = numbers
            .iter()
            .filter_map(|n| session.unacked.remove(n))
            .collect();
        let requeue = frame.flag("requeue") != Some(false);
        let channel = session.channel;
        while let Some(first) = settled.first() {
            let queue = first.queue.clone();
            let (same, rest): (Vec<_>, Vec<_>) =
                settled.into_iter().partition(|u| u.queue.same(&queue));
            let seqs = same.into_iter().map(|u| u.seq).collect();
            if nack {
                queue.reject(channel, seqs, requeue).await;
            } else {
                queue.ack(channel, seqs).await;
            }
            settled = rest;
        }
        Ok(())
    }
}

/// The frame without its `transaction` header, as it is replayed on COMMIT.
pub(super) fn outside_transaction(mut frame: Frame) -> Frame {
    frame.headers.retain(|(name, _)| name != "transaction");
    frame
}
