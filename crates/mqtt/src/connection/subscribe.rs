//! SUBSCRIBE and UNSUBSCRIBE. Every filter of a session is a binding of the session's one
//! queue to the MQTT exchange, so a message matching several filters is queued (and
//! delivered) once; the session remembers the QoS granted per filter. A filter that is invalid
//! or not permitted gets the failure code 0x80 in the SUBACK, and the others are still granted.
//! Retained messages matching a new subscription follow its SUBACK.

use junction_core::{FieldTable, Permission, ResourceKind};

use super::{Connection, Handled, Next, Violation};
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
            let Some(session) = self.session.as_ref() else {
                return Err("no session".into());
            };
            let queue = session.claim.key.queue_name();
            let permitted = session.allowed(ResourceKind::Queue, &queue, Permission::Configure)
                && session.allowed(ResourceKind::Queue, &queue, Permission::Write)
                && session.allowed(ResourceKind::Queue, &queue, Permission::Read)
                && session.allowed(
                    ResourceKind::Exchange,
                    &session.exchange.name,
                    Permission::Read,
                );
            if !permitted {
                return Err(format!(
                    "user '{}' may not subscribe through queue '{queue}'",
                    session.principal.user.name
                ));
            }
        }
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
        for filter in filters {
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
