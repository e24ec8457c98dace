//! Bindings: queue and exchange-to-exchange, listed, created and deleted. The default
//! exchange's implicit binding of each queue is listed as RabbitMQ lists it, and cannot be
//! changed. A binding is named in paths by its properties key: the routing key
//! percent-encoded (`~` when empty), followed by `~` and a hash of the arguments when it has
//! any.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use junction_core::{BindingTarget, FieldTable, Permission, ResourceKind, VirtualHost};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::exchanges::exchange_name;
use crate::json::Body;
use crate::json::{json_to_table, table_to_json};
use crate::listing::ListQuery;

/// One binding, by names.
#[derive(Debug, Clone)]
pub struct BindingView {
    /// The source exchange ("" for the default one).
    pub source: String,
    /// The destination's name.
    pub destination: String,
    /// Whether the destination is an exchange.
    pub to_exchange: bool,
    /// The binding key.
    pub routing_key: String,
    /// The arguments.
    pub arguments: FieldTable,
}

impl BindingView {
    /// Its properties key.
    pub fn properties_key(&self) -> String {
        let key = if self.routing_key.is_empty() {
            "~".to_owned()
        } else {
            percent_encode(&self.routing_key)
        };
        if self.arguments.is_empty() {
            return key;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        table_to_json(&self.arguments).to_string().hash(&mut hasher);
        format!("{key}~{:x}", hasher.finish())
    }

    /// Whether a path names this binding (by its properties key, or its routing key when it
    /// has no arguments and the client sent the key decoded).
    fn is_named(&self, props: &str) -> bool {
        props == self.properties_key()
            || (self.arguments.is_empty()
                && (props == self.routing_key || (props == "~" && self.routing_key.is_empty())))
    }

    /// The binding as RabbitMQ's API shows it.
    pub fn to_json(&self, vhost: &str) -> Value {
        json!({
            "source": self.source,
            "vhost": vhost,
            "destination": self.destination,
            "destination_type": if self.to_exchange { "exchange" } else { "queue" },
            "routing_key": self.routing_key,
            "arguments": table_to_json(&self.arguments),
            "properties_key": self.properties_key(),
        })
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every binding of `vhost`: the default exchange's implicit ones first, then each
/// exchange's.
pub fn vhost_bindings(vhost: &VirtualHost, with_default: bool) -> Vec<BindingView> {
    let mut out = Vec::new();
    if with_default {
        let mut queues = vhost.queues();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        out.extend(queues.iter().map(|queue| BindingView {
            source: String::new(),
            destination: queue.name().to_owned(),
            to_exchange: false,
            routing_key: queue.name().to_owned(),
            arguments: FieldTable::new(),
        }));
    }
    let mut exchanges = vhost.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for exchange in exchanges {
        for binding in exchange.bindings() {
            out.push(BindingView {
                source: exchange.name.clone(),
                destination: binding.target.name().to_owned(),
                to_exchange: matches!(binding.target, BindingTarget::Exchange(_)),
                routing_key: binding.routing_key.clone(),
                arguments: binding.arguments.clone(),
            });
        }
    }
    out
}

async fn respond(
    admin: &Admin,
    caller: &Caller,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
    keep: impl Fn(&BindingView) -> bool,
) -> ApiResult<Response> {
    let mut query = ListQuery::parse(query)?;
    query.default_sort("source");
    let mut items = Vec::new();
    for vhost in admin.vhosts_for(caller, vhost).await? {
        items.extend(
            vhost_bindings(&vhost, true)
                .iter()
                .filter(|b| keep(b))
                .map(|b| b.to_json(&vhost.name)),
        );
    }
    query.respond(items)
}

/// GET /api/bindings.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    respond(&admin, &caller, None, &query, |_| true).await
}

/// GET /api/bindings/{vhost}.
pub async fn list_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    respond(&admin, &caller, Some(&vhost), &query, |_| true).await
}

/// GET /api/queues/{vhost}/{name}/bindings.
pub async fn to_queue(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    admin
        .vhost_or_404(&vhost)?
        .queue(&name)
        .ok_or_else(ApiError::not_found)?;
    respond(&admin, &caller, Some(&vhost), &query, |b| {
        !b.to_exchange && b.destination == name
    })
    .await
}

/// GET /api/exchanges/{vhost}/{name}/bindings/source.
pub async fn from_exchange(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let name = exchange_name(&name).to_owned();
    admin
        .vhost_or_404(&vhost)?
        .exchange(&name)
        .map_err(|_| ApiError::not_found())?;
    respond(&admin, &caller, Some(&vhost), &query, |b| b.source == name).await
}

/// GET /api/exchanges/{vhost}/{name}/bindings/destination.
pub async fn to_exchange(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let name = exchange_name(&name).to_owned();
    admin
        .vhost_or_404(&vhost)?
        .exchange(&name)
        .map_err(|_| ApiError::not_found())?;
    respond(&admin, &caller, Some(&vhost), &query, |b| {
        b.to_exchange && b.destination == name
    })
    .await
}

/// Whether the path's kind segment names a queue (`q`) or an exchange (`e`).
fn to_exchange_kind(kind: &str) -> ApiResult<bool> {
    match kind {
        "q" => Ok(false),
        "e" => Ok(true),
        _ => Err(ApiError::not_found()),
    }
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}.
pub async fn between(
    State(admin): State<Arc<Admin>>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let to_exchange = to_exchange_kind(&kind)?;
    let source = exchange_name(&source).to_owned();
    respond(&admin, &caller, Some(&vhost), &query, |b| {
        b.source == source && b.to_exchange == to_exchange && b.destination == destination
    })
    .await
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}.
pub async fn one(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, source, kind, destination, props)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let to_exchange = to_exchange_kind(&kind)?;
    let vhost = admin
        .vhosts_for(&caller, Some(&vhost_name))
        .await?
        .remove(0);
    let source = exchange_name(&source);
    vhost_bindings(&vhost, true)
        .into_iter()
        .find(|b| {
            b.source == source
                && b.to_exchange == to_exchange
                && b.destination == destination
                && b.is_named(&props)
        })
        .map(|b| Json(b.to_json(&vhost.name)))
        .ok_or_else(ApiError::not_found)
}

/// The body of a binding's creation.
#[derive(Debug, Deserialize)]
pub struct BindingBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

/// Refuses unless the caller may bind `source` to `destination`: read on the source
/// exchange, write on the destination, as RabbitMQ asks.
async fn may_bind(
    caller: &Caller,
    vhost: &str,
    source: &str,
    destination: &str,
    to_exchange: bool,
) -> ApiResult<()> {
    let kind = if to_exchange {
        ResourceKind::Exchange
    } else {
        ResourceKind::Queue
    };
    caller
        .require_permission(vhost, kind, destination, Permission::Write)
        .await?;
    caller
        .require_permission(vhost, ResourceKind::Exchange, source, Permission::Read)
        .await
}

/// POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}: 201, with the new binding's
/// properties key in `Location`.
pub async fn create(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, source, kind, destination)): Path<(String, String, String, String)>,
    caller: Caller,
    Body(body): Body<BindingBody>,
) -> ApiResult<Response> {
    let to_exchange = to_exchange_kind(&kind)?;
    let vhost = admin.vhost_or_404(&vhost_name)?;
    let source = exchange_name(&source);
    may_bind(&caller, &vhost_name, source, &destination, to_exchange).await?;
    let arguments = body
        .arguments
        .as_ref()
        .map(json_to_table)
        .unwrap_or_default();
    if source.is_empty() {
        return Err(ApiError::not_authorised(
            "operation not permitted on the default exchange",
        ));
    }
    // Topic permissions limit binding keys on topic exchanges (read), as for AMQP.
    if let Ok(exchange) = vhost.exchange(source)
        && !caller
            .principal
            .check_topic(
                &vhost_name,
                &exchange,
                &body.routing_key,
                Permission::Read,
                None,
            )
            .await
    {
        return Err(ApiError::not_authorised(format!(
            "read access to topic '{}' in exchange '{source}' in vhost '{vhost_name}' refused for user '{}'",
            body.routing_key,
            caller.name()
        )));
    }
    if to_exchange {
        vhost.bind_exchange(&destination, source, &body.routing_key, arguments.clone())?;
    } else {
        vhost.bind_queue(
            &destination,
            source,
            &body.routing_key,
            arguments.clone(),
            admin.api_connection(),
        )?;
    }
    let view = BindingView {
        source: source.to_owned(),
        destination,
        to_exchange,
        routing_key: body.routing_key,
        arguments,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, view.properties_key())],
    )
        .into_response())
}

/// DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}.
pub async fn delete(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, source, kind, destination, props)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let to_exchange = to_exchange_kind(&kind)?;
    let vhost = admin.vhost_or_404(&vhost_name)?;
    let source = exchange_name(&source);
    may_bind(&caller, &vhost_name, source, &destination, to_exchange).await?;
    let binding = vhost_bindings(&vhost, false)
        .into_iter()
        .find(|b| {
            b.source == source
                && b.to_exchange == to_exchange
                && b.destination == destination
                && b.is_named(&props)
        })
        .ok_or_else(ApiError::not_found)?;
    if to_exchange {
        vhost.unbind_exchange(
            &destination,
            source,
            &binding.routing_key,
            binding.arguments,
        )?;
    } else {
        vhost.unbind_queue(
            &destination,
            source,
            &binding.routing_key,
            binding.arguments,
            admin.api_connection(),
        )?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_are_url_safe_and_tell_arguments_apart() {
        let mut view = BindingView {
            source: "x".into(),
            destination: "q".into(),
            to_exchange: false,
            routing_key: "a.b/c d".into(),
            arguments: FieldTable::new(),
        };
        assert_eq!(view.properties_key(), "a.b%2Fc%20d");
        assert!(view.is_named("a.b/c d"));
        view.routing_key.clear();
        assert_eq!(view.properties_key(), "~");
        view.arguments
            .insert("x-match", junction_core::FieldValue::string("all"));
        let with_arguments = view.properties_key();
        assert!(with_arguments.starts_with("~~"));
        assert!(!view.is_named("~"), "arguments make a different binding");
    }
}
