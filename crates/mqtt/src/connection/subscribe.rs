//! SUBSCRIBE and UNSUBSCRIBE. Every filter of a session is a binding of the session's one
//! queue to the MQTT exchange, so a message matching several filters is queued (and
//! delivered) once; the session remembers the QoS granted per filter. A filter that is invalid
//! or not permitted gets the failure code 0x80 in the SUBACK, and the others are still granted.
//! Retained messages matching a new subscription follow its SUBACK. Permissions are RabbitMQ's
//! MQTT plugin's: adding or removing a binding needs write on the queue and read on the
//! exchange; the queue itself needs configure when it is declared and read to consume.

use junction_core::{FieldTable, Permission, ResourceKind};

use super::{Connection, Handled, Next, Session, Violation};
use crate::codec::{self, Packet, QoS};
use crate::topic;

/// The SUBACK code for a refused filter.
const SUBSCRIPTION_FAILURE: u8 = 0x80;

impl Connection {
    pub(super) async fn on_subscribe(
        &mut self,
        packet_id: u16,
        filters: Vec<(String, QoS)>,
    ) -> Handled {
        let mut codes = Vec::with_capacity(filters.len());
        let mut granted = Vec::new();
        for (filter, qos) in filters {
            match self.subscribe(&filter, qos).await {
                Ok(()) => {
                    codes.push(qos as u8);
                    granted.push((filter, qos));
                }
                Err(reason) => {
                    let filter = topic::shortened(&filter);
                    tracing::info!(filter, %reason, "subscription refused");
                    codes.push(SUBSCRIPTION_FAILURE);
                }
            }
        }
        let Some(session) = self.session.as_mut() else {
            return Err(Violation("SUBSCRIBE before CONNECT".into()));
        };
        if !session.clean
            && let Some(flow) = &session.flow
        {
            self.mqtt.sessions.persist(&session.claim.key, &flow.state);
        }
        codec::encode(&Packet::SubAck { packet_id, codes }, &mut self.out);
        let vhost = session.vhost.name.clone();
        for (filter, qos) in granted {
            let retained = self.mqtt.retained.matching(&vhost, &filter);
            for (topic, message) in retained {
                let qos = qos.min(message.qos);
                self.send_retained(&topic, qos, &message.payload);
            }
        }
        Ok(Next::Continue)
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        if !topic::valid_filter(filter) {
            return Err("invalid topic filter".into());
        }
        let id = self.id;
        {
            let Some(session) = self.session.as_mut() else {
                return Err("no session".into());
            };
            session.may_bind().await?;
            let key = topic::filter_to_binding_key(filter);
            session.topic_allowed(&key, Permission::Read).await?;
        }
        // Declares the queue (configure, when it is made) and consumes from it (read).
        let queue = self.session_queue().await.map_err(|e| e.to_string())?;
        let Some(session) = self.session.as_mut() else {
            return Err("no session".into());
        };
        session
            .vhost
            .bind_queue(
                queue.name(),
                &session.exchange.name,
                &topic::filter_to_binding_key(filter),
                FieldTable::new(),
                id,
            )
            .map_err(|e| e.to_string())?;
        session
            .flow()
            .state
            .subscriptions
            .insert(filter.to_owned(), qos as u8);
        Ok(())
    }

    pub(super) async fn on_unsubscribe(&mut self, packet_id: u16, filters: Vec<String>) -> Handled {
        let id = self.id;
        let Some(session) = self.session.as_mut() else {
            return Err(Violation("UNSUBSCRIBE before CONNECT".into()));
        };
        // Removing a binding needs what adding it did (MQTT 3.1.1's UNSUBACK has no failure
        // code: a refused filter stays subscribed).
        let permitted = session.may_bind().await;
        for filter in filters {
            if let Err(reason) = &permitted {
                if session.flow().state.subscriptions.contains_key(&filter) {
                    tracing::info!(filter, %reason, "unsubscription refused");
                }
                continue;
            }
            if session.flow().state.subscriptions.remove(&filter).is_none() {
                continue;
            }
            // Two filters can map to one binding key only if they are equal, so the binding
            // goes with the filter.
            if let Some(queue) = &session.queue
                && let Err(error) = session.vhost.unbind_queue(
                    queue.name(),
                    &session.exchange.name,
                    &topic::filter_to_binding_key(&filter),
                    FieldTable::new(),
                    id,
                )
            {
                tracing::warn!(filter, %error, "cannot remove the subscription's binding");
            }
        }
        if !session.clean
            && let Some(flow) = &session.flow
        {
            self.mqtt.sessions.persist(&session.claim.key, &flow.state);
        }
        codec::encode(&Packet::UnsubAck(packet_id), &mut self.out);
        Ok(Next::Continue)
    }
}

impl Session {
    /// Whether the session may bind its queue to (or unbind it from) its exchange: write on
    /// the queue and read on the exchange, as `queue.bind` needs.
    async fn may_bind(&mut self) -> Result<(), String> {
        let queue = self.claim.key.queue_name();
        let exchange = self.exchange.clone();
        let checks = [
            (ResourceKind::Queue, queue.as_str(), Permission::Write),
            (ResourceKind::Exchange, &*exchange.name, Permission::Read),
        ];
        for (kind, name, permission) in checks {
            if !self.allowed(kind, name, permission).await {
                return Err(format!(
                    "{} access to {} '{name}' in vhost '{}' refused for user '{}'",
                    permission.as_str(),
                    kind.as_str(),
                    self.vhost.name,
                    self.principal.user.name
                ));
            }
        }
        Ok(())
    }
}
