//! Deliveries to the client and the client's acknowledgements of them.
//!
//! A message from the session's queue goes out at the lower of the QoS it was published with
//! and the highest QoS granted to a matching filter; one that matches no filter under MQTT's
//! rules (a `$` topic reached through a leading wildcard, say) is settled without being sent.
//! QoS 0 deliveries are settled at once; QoS 1 ones on PUBACK; QoS 2 ones on PUBREC, after
//! which only the PUBREL/PUBCOMP exchange remains, so the client receives the message exactly
//! once. A delivery the queue resends after a reconnect keeps its packet identifier and is
//! flagged DUP.

use junction_core::Delivery;

use super::publish::PUBLISH_QOS_HEADER;
use super::{Connection, Handled, Inflight, Next, Session, session_channel};
use crate::codec::{self, Packet, QoS};
use crate::topic;

impl Connection {
    pub(super) fn deliver(&mut self, delivery: Delivery) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if delivery.channel != session_channel(self.id) {
            return;
        }
        let topic = topic::routing_key_to_topic(&delivery.message.routing_key);
        let Some(granted) = session.flow().state.granted_qos(&topic) else {
            if delivery.needs_ack {
                session.flow().queue_acks.push(delivery.seq);
            }
            return;
        };
        let qos = published_qos(&delivery.message).min(granted);
        let body = &delivery.message.body;
        if qos == QoS::AtMostOnce {
            codec::encode_publish_parts(&mut self.out, &topic, body, qos, None, false, false);
            if delivery.needs_ack {
                session.flow().queue_acks.push(delivery.seq);
            }
            return;
        }
        let resent = delivery
            .redelivered
            .then(|| session.flow().state.outbound.get(&delivery.seq).copied())
            .flatten();
        let id = match resent {
            Some(id) => id,
            None => session.allocate_packet_id(),
        };
        session.flow().inflight.insert(
            id,
            Inflight {
                seq: delivery.needs_ack.then_some(delivery.seq),
                exactly_once: qos == QoS::ExactlyOnce,
            },
        );
        session.flow().state.outbound.insert(delivery.seq, id);
        codec::encode_publish_parts(
            &mut self.out,
            &topic,
            body,
            qos,
            Some(id),
            delivery.redelivered,
            false,
        );
    }

    /// Sends a retained message to a new subscription.
    pub(super) fn send_retained(&mut self, topic: &str, qos: QoS, payload: &[u8]) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let id = (qos != QoS::AtMostOnce).then(|| {
            let id = session.allocate_packet_id();
            session.flow().inflight.insert(
                id,
                Inflight {
                    seq: None,
                    exactly_once: qos == QoS::ExactlyOnce,
                },
            );
            id
        });
        codec::encode_publish_parts(&mut self.out, topic, payload, qos, id, false, true);
    }

    pub(super) fn on_puback(&mut self, id: u16) -> Handled {
        if let Some(session) = self.session.as_mut()
            && session
                .flow()
                .inflight
                .get(&id)
                .is_some_and(|inflight| !inflight.exactly_once)
        {
            session.settle(id);
        }
        Ok(Next::Continue)
    }

    pub(super) fn on_pubrec(&mut self, id: u16) -> Handled {
        if let Some(session) = self.session.as_mut() {
            if session
                .flow()
                .inflight
                .get(&id)
                .is_some_and(|inflight| inflight.exactly_once)
            {
                session.settle(id);
                session.flow().state.released.insert(id);
            }
            codec::encode(&Packet::PubRel(id), &mut self.out);
        }
        Ok(Next::Continue)
    }

    pub(super) fn on_pubcomp(&mut self, id: u16) -> Handled {
        if let Some(session) = self.session.as_mut() {
            session.flow().state.released.remove(&id);
        }
        Ok(Next::Continue)
    }

    /// PUBREL for a QoS 2 publication from the client: the exchange is complete.
    pub(super) fn on_pubrel(&mut self, id: u16) -> Handled {
        if let Some(session) = self.session.as_mut() {
            session.flow().state.incoming.remove(&id);
            session.flow().acks.owe_now(super::OwedAck::Pubcomp(id));
        }
        if self.release_acks() {
            return Ok(Next::Close { graceful: false });
        }
        Ok(Next::Continue)
    }
}

impl Session {
    /// The client has the delivery with packet identifier `id`: the queue may forget it.
    fn settle(&mut self, id: u16) {
        let flow = self.flow();
        if let Some(inflight) = flow.inflight.remove(&id)
            && let Some(seq) = inflight.seq
        {
            flow.state.outbound.remove(&seq);
            flow.queue_acks.push(seq);
        }
    }

    /// A packet identifier not in use by any delivery or QoS 2 exchange of the session.
    fn allocate_packet_id(&mut self) -> u16 {
        let flow = self.flow();
        for _ in 0..u16::MAX {
            flow.next_packet_id = flow.next_packet_id.checked_add(1).unwrap_or(1);
            let id = flow.next_packet_id;
            let in_use = flow.inflight.contains_key(&id)
                || flow.state.released.contains(&id)
                || flow.state.outbound.values().any(|&used| used == id);
            if !in_use {
                return id;
            }
        }
        flow.next_packet_id
    }
}

/// The QoS a message was published with: the MQTT header if an MQTT client published it,
/// otherwise 1 for persistent messages and 0 for transient ones.
fn published_qos(message: &junction_core::Message) -> QoS {
    let from_header = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get(PUBLISH_QOS_HEADER))
        .and_then(|v| v.as_i64())
        .and_then(|q| u8::try_from(q).ok())
        .and_then(QoS::from_u8);
    from_header.unwrap_or(if message.properties.is_persistent() {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    })
}
