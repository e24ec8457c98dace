//! Exchanges: list, show, declare, delete, and publish a message.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use junction_core::{
    Exchange, ExchangeSpec, Message, Permission, Properties, Publication, ResourceKind,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::Body;
use crate::json::{json_to_table, table_to_json};
use crate::listing::ListQuery;
use crate::stats_json;

impl Admin {
    fn exchange_json(&self, vhost: &str, exchange: &Exchange) -> Value {
        let spec = &exchange.spec;
        json!({
            "name": spec.name,
            "vhost": vhost,
            "type": spec.kind,
            "durable": spec.durable,
            "auto_delete": spec.auto_delete,
            "internal": spec.internal,
            "arguments": table_to_json(&spec.arguments),
            "user_who_performed_action": "",
            "message_stats": stats_json::exchange_stats(self, vhost, exchange),
        })
    }
}

/// GET /api/exchanges.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_exchanges(&admin, &caller, None, &query).await
}

/// GET /api/exchanges/{vhost}.
pub async fn list_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_exchanges(&admin, &caller, Some(&vhost), &query).await
}

async fn list_exchanges(
    admin: &Admin,
    caller: &Caller,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let query = ListQuery::parse(query)?;
    let mut items = Vec::new();
    for vhost in admin.vhosts_for(caller, vhost).await? {
        items.extend(
            vhost
                .exchanges()
                .iter()
                .map(|x| admin.exchange_json(&vhost.name, x)),
        );
    }
    query.respond(items)
}

/// The exchange named in a path: the default exchange is `amq.default` there.
pub(crate) fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

/// GET /api/exchanges/{vhost}/{name}.
pub async fn one(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let vhost = admin.vhosts_for(&caller, Some(&vhost)).await?.remove(0);
    let exchange = vhost
        .exchange(exchange_name(&name))
        .map_err(|_| ApiError::not_found())?;
    Ok(query.one(admin.exchange_json(&vhost.name, &exchange)))
}

/// The body of an exchange declaration.
#[derive(Debug, Deserialize)]
pub struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

/// PUT /api/exchanges/{vhost}/{name}: 201 when created, 204 when it existed.
pub async fn declare(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<ExchangeBody>,
) -> ApiResult<StatusCode> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    caller
        .require_permission(
            &vhost_name,
            ResourceKind::Exchange,
            &name,
            Permission::Configure,
        )
        .await?;
    let kind = body
        .kind
        .ok_or_else(|| ApiError::bad_request("an exchange needs a type"))?;
    if name.is_empty() || name == "amq.default" {
        return Err(ApiError::not_authorised(
            "the default exchange cannot be declared",
        ));
    }
    let arguments = body
        .arguments
        .as_ref()
        .map(json_to_table)
        .unwrap_or_default();
    caller
        .require_forwarding(
            &vhost_name,
            ResourceKind::Exchange,
            &name,
            &arguments,
            "alternate-exchange",
        )
        .await?;
    let existed = vhost.exchange(&name).is_ok();
    let mut spec = ExchangeSpec::new(&name, kind);
    spec.durable = body.durable.unwrap_or(true);
    spec.auto_delete = body.auto_delete;
    spec.internal = body.internal;
    spec.arguments = arguments;
    vhost.declare_exchange(spec, false)?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/exchanges/{vhost}/{name}, with `if-unused`.
pub async fn delete(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    let name = exchange_name(&name);
    caller
        .require_permission(
            &vhost_name,
            ResourceKind::Exchange,
            name,
            Permission::Configure,
        )
        .await?;
    vhost.exchange(name).map_err(|_| ApiError::not_found())?;
    let if_unused = query.get("if-unused").is_some_and(|v| v == "true");
    vhost.delete_exchange(name, if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a publish.
#[derive(Debug, Deserialize)]
pub struct PublishBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default = "string_encoding")]
    payload_encoding: String,
    #[serde(default)]
    properties: Map<String, Value>,
}

fn string_encoding() -> String {
    "string".to_owned()
}

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routed": bool}`.
pub async fn publish(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<PublishBody>,
) -> ApiResult<Json<Value>> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    let name = exchange_name(&name);
    caller
        .require_permission(&vhost_name, ResourceKind::Exchange, name, Permission::Write)
        .await?;
    let exchange = vhost.exchange(name).map_err(|_| ApiError::not_found())?;
    if exchange.spec.internal {
        return Err(ApiError::not_authorised(format!(
            "cannot publish to internal exchange '{name}' in vhost '{vhost_name}'"
        )));
    }
    let topic_ok = caller
        .principal
        .check_topic(
            &vhost_name,
            &exchange,
            &body.routing_key,
            Permission::Write,
            None,
        )
        .await;
    if !topic_ok {
        return Err(ApiError::not_authorised(format!(
            "write access to topic '{}' in exchange '{name}' in vhost '{vhost_name}' refused for user '{}'",
            body.routing_key,
            caller.name()
        )));
    }
    let payload = match body.payload_encoding.as_str() {
        "string" => Bytes::from(body.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown payload_encoding '{other}'"
            )));
        }
    };
    let properties = properties_from_json(&body.properties)?;
    // As AMQP's basic.publish: a message may not claim another user.
    if let Some(claimed) = &properties.user_id
        && claimed != caller.name()
    {
        return Err(ApiError::bad_request(format!(
            "user_id property set to '{claimed}' but authenticated user was '{}'",
            caller.name()
        )));
    }
    let message = Message::new(name, body.routing_key, properties, payload);
    let published = vhost.publish(Publication::new(&exchange, message)).await;
    Ok(Json(json!({ "routed": published.routed > 0 })))
}

/// Message properties as RabbitMQ's API shows them.
pub fn properties_json(p: &Properties) -> Value {
    let mut map = Map::new();
    let mut text = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            map.insert(key.to_owned(), value.clone().into());
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(mode) = p.delivery_mode {
        map.insert("delivery_mode".into(), mode.into());
    }
    if let Some(priority) = p.priority {
        map.insert("priority".into(), priority.into());
    }
    if let Some(timestamp) = p.timestamp {
        map.insert("timestamp".into(), timestamp.into());
    }
    if let Some(headers) = &p.headers {
        map.insert("headers".into(), table_to_json(headers));
    }
    Value::Object(map)
}

/// Message properties from the API's JSON; unknown keys are refused, as RabbitMQ does.
pub fn properties_from_json(map: &Map<String, Value>) -> ApiResult<Properties> {
    let mut p = Properties::default();
    for (key, value) in map {
        let text = || -> ApiResult<Option<String>> {
            value
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| ApiError::bad_request(format!("property {key} must be a string")))
        };
        let small = |max: u64| -> ApiResult<Option<u8>> {
            value
                .as_u64()
                .filter(|v| *v <= max)
                .map(|v| Some(v as u8))
                .ok_or_else(|| ApiError::bad_request(format!("property {key} must be 0 to {max}")))
        };
        match key.as_str() {
            "content_type" => p.content_type = text()?,
            "content_encoding" => p.content_encoding = text()?,
            "correlation_id" => p.correlation_id = text()?,
            "reply_to" => p.reply_to = text()?,
            "expiration" => p.expiration = text()?,
            "message_id" => p.message_id = text()?,
            "type" => p.kind = text()?,
            "user_id" => p.user_id = text()?,
            "app_id" => p.app_id = text()?,
            "cluster_id" => p.cluster_id = text()?,
            "delivery_mode" => p.delivery_mode = small(2)?,
            "priority" => p.priority = small(255)?,
            "timestamp" => {
                p.timestamp =
                    Some(value.as_u64().ok_or_else(|| {
                        ApiError::bad_request("property timestamp must be a number")
                    })?)
            }
            "headers" => {
                let headers = value
                    .as_object()
                    .ok_or_else(|| ApiError::bad_request("property headers must be an object"))?;
                p.headers = Some(json_to_table(headers));
            }
            other => {
                return Err(ApiError::bad_request(format!("unknown property '{other}'")));
            }
        }
    }
    Ok(p)
}
