//! MQTT's own objects, which RabbitMQ's API has no place for: sessions (connected or kept
//! for a device that is away) and retained messages. The MQTT adapter shows them through
//! [`MqttView`]; the endpoints are Junction's (`/api/mqtt/...`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// One MQTT session.
#[derive(Debug, Clone)]
pub struct MqttSession {
    /// Its vhost.
    pub vhost: String,
    /// Its client id.
    pub client_id: String,
    /// Whether a connection holds it now.
    pub connected: bool,
    /// Its filters, with the QoS granted when known.
    pub subscriptions: Vec<(String, Option<u8>)>,
}

/// One retained message.
#[derive(Debug, Clone)]
pub struct RetainedMessage {
    /// Its topic.
    pub topic: String,
    /// The QoS it was published with.
    pub qos: u8,
    /// Its payload.
    pub payload: Bytes,
}

/// What the MQTT adapter shows the management API.
pub trait MqttView: Send + Sync + 'static {
    /// Every session.
    fn sessions(&self) -> Vec<MqttSession>;
    /// The retained messages of `vhost`.
    fn retained(&self, vhost: &str) -> Vec<RetainedMessage>;
}

fn view(admin: &Admin) -> ApiResult<Arc<dyn MqttView>> {
    admin.mqtt.lock().clone().ok_or_else(ApiError::not_found)
}

/// GET /api/mqtt/sessions (monitors): every session, with its client id and filters.
pub async fn sessions(State(admin): State<Arc<Admin>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    let view = view(&admin)?;
    let mut out = Vec::new();
    for session in view.sessions() {
        if !caller.sees_vhost(&session.vhost).await {
            continue;
        }
        let subscriptions: Vec<Value> = session
            .subscriptions
            .iter()
            .map(|(filter, qos)| json!({"filter": filter, "qos": qos}))
            .collect();
        out.push(json!({
            "vhost": session.vhost,
            "client_id": session.client_id,
            "connected": session.connected,
            "subscriptions": subscriptions,
        }));
    }
    Ok(Json(out.into()))
}

/// GET /api/mqtt/retained/{vhost} (monitors): topic, QoS and payload (text when it is
/// UTF-8, else base64) of each retained message. Payloads are messages: only monitors, who
/// see every vhost's objects, read them here.
pub async fn retained(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    admin.vhosts_for(&caller, Some(&vhost)).await?;
    let view = view(&admin)?;
    let out: Vec<Value> = view
        .retained(&vhost)
        .into_iter()
        .map(|message| {
            let (payload, encoding) = match std::str::from_utf8(&message.payload) {
                Ok(text) => (text.to_owned(), "string"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&message.payload),
                    "base64",
                ),
            };
            json!({
                "topic": message.topic,
                "qos": message.qos,
                "payload": payload,
                "payload_encoding": encoding,
                "payload_bytes": message.payload.len(),
            })
        })
        .collect();
    Ok(Json(out.into()))
}
