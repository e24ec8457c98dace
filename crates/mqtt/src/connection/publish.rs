//! PUBLISH from the client: topic checks, write permission (asked once per connection),
//! QoS 2 duplicate suppression, retained messages, routing through the session's exchange, and
//! the acknowledgements, which go out in order and only once a persistent message is on disk.
//! The will is published through the same path.

use std::sync::LazyLock;

use bytes::Bytes;
use junction_core::ledger::Seq;
use junction_core::persistence::Durability;
use junction_core::publish::Persisted;
use junction_core::stats::{Family, MessageCounters};
use junction_core::{
    FieldTable, FieldValue, Message, OnDurable, Permission, Properties, Publication, ResourceKind,
};
use junction_transport::LazyChannel;

use super::{Connection, Handled, Next, OwedAck, Session, Violation};
use crate::codec::{LastWill, Publish, QoS};
use crate::topic;

/// The header that carries the QoS a message was published with, as in RabbitMQ.
pub(super) const PUBLISH_QOS_HEADER: &str = "x-mqtt-publish-qos";

/// The headers of a message published with each QoS, built once: every message shares its
/// QoS's table instead of allocating its own.
static PUBLISH_QOS_HEADERS: LazyLock<[FieldTable; 3]> = LazyLock::new(|| {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].map(|qos| {
        FieldTable::from_iter([(PUBLISH_QOS_HEADER.to_owned(), FieldValue::I8(qos as i8))])
    })
});

impl Connection {
    pub(super) async fn on_publish(&mut self, publish: Publish) -> Handled {
        if !topic::valid_topic_name(&publish.topic) {
            return Err(Violation(format!(
                "invalid topic name '{}' in PUBLISH",
                topic::shortened(&publish.topic)
            )));
        }
        let mqtt = self.mqtt.clone();
        let durable = &mut self.durable;
        let counters = Some(mqtt.broker.connections().messages(Family::Mqtt));
        let Some(session) = self.session.as_mut() else {
            return Err(Violation("PUBLISH before CONNECT".into()));
        };
        // As RabbitMQ's MQTT plugin for 3.1.1: a PUBLISH the permissions refuse (write on the
        // exchange, or the topic permissions) closes the connection.
        let routing_key = topic::topic_to_routing_key(&publish.topic);
        session.may_publish(&routing_key).await?;
        self.has_published = true;
        if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id)
            && !session.flow().state.incoming.insert(id)
        {
            // A resent QoS 2 publication we already routed: acknowledge it again only.
            session.flow().acks.owe_now(OwedAck::Pubrec(id));
            return self.released();
        }
        if publish.retain {
            mqtt.retained.set(
                &session.vhost.name,
                &publish.topic,
                publish.qos,
                publish.payload.clone(),
            );
        }
        let ack = match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Some(OwedAck::Puback(id)),
            (QoS::ExactlyOnce, Some(id)) => Some(OwedAck::Pubrec(id)),
            _ => None,
        };
        // The acknowledgement is owed in PUBLISH order, waiting until the publication says
        // whether its message goes to disk.
        let seq = ack.map(|ack| session.flow().acks.owe(ack));
        let size = publish.payload.len();
        let published = route(
            session,
            counters,
            routing_key,
            publish.qos,
            publish.payload,
            seq.map(|seq| (seq, durable)),
        )
        .await;
        published.hold(&mut self.flow);
        if let Some(slot) = &mut session.limit_slot {
            slot.charge_publish(size, &mut self.flow);
        }
        match (published.stored, seq) {
            (Persisted::Pending, _) | (_, None) => {}
            // Not written: it goes as soon as those before it have.
            (Persisted::Unneeded, Some(seq)) => session.flow().acks.ready(seq),
            // MQTT 3.1.1 has no negative acknowledgement: the client gets no PUBACK/PUBREC,
            // and the connection closes so it resends once the broker can store again (a
            // QoS 2 resend must be routed then, not taken for a duplicate).
            (Persisted::Refused, Some(seq)) => {
                session.flow().acks.fail(seq);
                if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
                    session.flow().state.incoming.remove(&id);
                }
                return Err(Violation(super::NOT_STORED.into()));
            }
        }
        self.released()
    }

    /// Writes the acknowledgements that may go now; a failed write closes the connection.
    fn released(&mut self) -> Handled {
        if self.release_acks() {
            return Ok(Next::Close { graceful: false });
        }
        Ok(Next::Continue)
    }

    /// Publishes the will of a connection that ended without DISCONNECT.
    pub(super) async fn publish_will(&self, session: &Session, will: LastWill) {
        let principal = &session.principal;
        let vhost = &session.vhost.name;
        let exchange = &session.exchange;
        let may_write = principal
            .check_resource(
                vhost,
                ResourceKind::Exchange,
                &exchange.name,
                Permission::Write,
            )
            .await;
        let routing_key = topic::topic_to_routing_key(&will.topic);
        let may_use_topic = principal
            .check_topic(
                vhost,
                exchange,
                &routing_key,
                Permission::Write,
                Some(&session.claim.key.client_id),
            )
            .await;
        if !may_write || !may_use_topic {
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
        let counters = Some(self.mqtt.broker.connections().messages(Family::Mqtt));
        route(session, counters, routing_key, will.qos, will.payload, None).await;
    }
}

/// Routes one publication; QoS 1 and 2 messages are persistent. With `notify`, a message
/// written to the message store reports there, under its acknowledgement's place in the
/// ledger, once on disk (or failed). Returns what became of it: whether it is being written
/// (so its acknowledgement must wait) or was refused by the store, and a queue that fell
/// behind (credit flow). `routing_key` is the topic in AMQP form.
async fn route(
    session: &Session,
    counters: Option<&MessageCounters>,
    routing_key: String,
    qos: QoS,
    payload: Bytes,
    notify: Option<(Seq, &mut LazyChannel<(Seq, Durability)>)>,
) -> junction_core::Published {
    let headers = PUBLISH_QOS_HEADERS[qos as usize].clone();
    let persistent = qos != QoS::AtMostOnce;
    let mut properties = Properties::default();
    properties.headers = Some(headers);
    properties.delivery_mode = Some(if persistent { 2 } else { 1 });
    let message = Message::new(
        session.exchange.name.clone(),
        routing_key,
        properties,
        payload,
    );
    let mut publication = Publication::new(&session.exchange, message);
    if let Some(counters) = counters {
        publication = publication.counted(counters);
    }
    let mut on_durable;
    if let Some((seq, durable)) = notify {
        on_durable = move || -> OnDurable {
            let tx = durable.sender();
            Box::new(move |durability| {
                let _ = tx.send((seq, durability));
            })
        };
        publication = publication.on_durable(&mut on_durable);
    }
    session.vhost.publish(publication).await
}

impl Session {
    /// Whether the session may publish with `routing_key`: write on its exchange and the topic
    /// permissions. The last allowed key is remembered for the authoriser's TTL, so a device
    /// that keeps publishing to one topic costs a clock read and a comparison per message.
    async fn may_publish(&mut self, routing_key: &str) -> Result<(), Violation> {
        let now = std::time::Instant::now();
        if let Some((key, until)) = &self.last_publish
            && *until > now
            && **key == *routing_key
        {
            return Ok(());
        }
        let exchange = self.exchange.clone();
        if !self
            .allowed(ResourceKind::Exchange, &exchange.name, Permission::Write)
            .await
        {
            return Err(Violation(format!(
                "user '{}' may not publish to exchange '{}'",
                self.principal.user.name, exchange.name
            )));
        }
        self.topic_allowed(routing_key, Permission::Write)
            .await
            .map_err(Violation)?;
        self.last_publish = Some((routing_key.into(), now + self.principal.ttl()));
        Ok(())
    }
}
