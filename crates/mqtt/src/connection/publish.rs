//! PUBLISH from the client: topic checks, write permission (asked once per connection),
//! QoS 2 duplicate suppression, retained messages, routing through the session's exchange, and
//! the acknowledgements, which go out in order and only once a persistent message is on disk.
//! The will is published through the same path.

use bytes::Bytes;
use junction_core::persistence::Durability;
use junction_core::publish::Persisted;
use junction_core::{FieldTable, FieldValue, Message, Permission, Properties, ResourceKind};
use tokio::sync::mpsc;

use super::{Connection, Handled, Next, Session, Violation};
use crate::codec::{LastWill, Packet, Publish, QoS};
use crate::topic;

/// The header that carries the QoS a message was published with, as in RabbitMQ.
pub(super) const PUBLISH_QOS_HEADER: &str = "x-mqtt-publish-qos";

impl Connection {
    pub(super) async fn on_publish(&mut self, publish: Publish) -> Handled {
        if !topic::valid_topic_name(&publish.topic) {
            return Err(Violation(format!(
                "invalid topic name '{}' in PUBLISH",
                topic::shortened(&publish.topic)
            )));
        }
        let mqtt = self.mqtt.clone();
        let durable = (publish.qos != QoS::AtMostOnce).then(|| self.durable.sender());
        let Some(session) = self.session.as_mut() else {
            return Err(Violation("PUBLISH before CONNECT".into()));
        };
        let allowed = match session.may_publish {
            Some(allowed) => allowed,
            None => {
                let allowed = session.allowed(
                    ResourceKind::Exchange,
                    &session.exchange.name,
                    Permission::Write,
                );
                session.may_publish = Some(allowed);
                allowed
            }
        };
        if !allowed {
            return Err(Violation(format!(
                "user '{}' may not publish to exchange '{}'",
                session.principal.user.name, session.exchange.name
            )));
        }
        self.has_published = true;
        if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id)
            && !session.flow().state.incoming.insert(id)
        {
            // A resent QoS 2 publication we already routed: acknowledge it again only.
            session.flow().acks.queue.push_back((Packet::PubRec(id), 0));
            session.flow().acks.flush(&mut self.out);
            return Ok(Next::Continue);
        }
        if publish.retain {
            mqtt.retained.set(
                &session.vhost.name,
                &publish.topic,
                publish.qos,
                publish.payload.clone(),
            );
        }
        let wants_ack = publish.qos != QoS::AtMostOnce;
        let ticket = wants_ack.then(|| session.flow().acks.next_ticket());
        let published = route(
            session,
            &publish.topic,
            publish.qos,
            publish.payload,
            ticket.zip(durable),
        )
        .await;
        published.hold(&mut self.flow);
        let written = match published.stored {
            Persisted::Pending => true,
            Persisted::Unneeded => false,
            // MQTT 3.1.1 has no negative acknowledgement: the client gets no PUBACK/PUBREC,
            // and the connection closes so it resends once the broker can store again (a
            // QoS 2 resend must be routed then, not taken for a duplicate).
            Persisted::Refused => {
                if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
                    session.flow().state.incoming.remove(&id);
                }
                return Err(Violation(super::NOT_STORED.into()));
            }
        };
        if let (Some(id), Some(ticket)) = (publish.packet_id, ticket) {
            let ack = match publish.qos {
                QoS::ExactlyOnce => Packet::PubRec(id),
                _ => Packet::PubAck(id),
            };
            // Acks of messages not written to disk go as soon as those before them have.
            let gate = if written { ticket } else { 0 };
            session.flow().acks.queue.push_back((ack, gate));
            session.flow().acks.flush(&mut self.out);
        }
        Ok(Next::Continue)
    }

    /// Publishes the will of a connection that ended without DISCONNECT.
    pub(super) async fn publish_will(&self, session: &Session, will: LastWill) {
        if !session.allowed(
            ResourceKind::Exchange,
            &session.exchange.name,
            Permission::Write,
        ) {
            tracing::info!(client_id = %session.claim.key.client_id, "will not published: no write permission");
            return;
        }
        tracing::debug!(client_id = %session.claim.key.client_id, topic = will.topic, "publishing will");
        if will.retain {
            self.mqtt.retained.set(
                &session.vhost.name,
                &will.topic,
                will.qos,
                will.payload.clone(),
            );
        }
        route(session, &will.topic, will.qos, will.payload, None).await;
    }
}

/// Routes one publication; QoS 1 and 2 messages are persistent. With `notify`, a message
/// written to the message store reports its ticket there once on disk ([`super::STORE_FAILED`]
/// if its write failed). Returns what became of it: whether it is being written (so its
/// acknowledgement must wait) or was refused by the store, and a queue that fell behind.
async fn route(
    session: &Session,
    topic_name: &str,
    qos: QoS,
    payload: Bytes,
    notify: Option<(u64, mpsc::UnboundedSender<u64>)>,
) -> junction_core::Published {
    let mut headers = FieldTable::new();
    headers.insert(PUBLISH_QOS_HEADER, FieldValue::I8(qos as i8));
    let persistent = qos != QoS::AtMostOnce;
    let message = Message::new(
        session.exchange.name.clone(),
        topic::topic_to_routing_key(topic_name),
        Properties {
            headers: Some(headers),
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        },
        payload,
    );
    let on_durable: Option<junction_core::OnDurable> = notify.map(|(ticket, tx)| {
        Box::new(move |durability| {
            let _ = tx.send(match durability {
                Durability::OnDisk => ticket,
                Durability::Failed => super::STORE_FAILED,
            });
        }) as junction_core::OnDurable
    });
    session
        .vhost
        .publish(&session.exchange, message, on_durable)
        .await
}
