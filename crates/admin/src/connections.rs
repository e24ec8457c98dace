//! Connections of every protocol, and AMQP's channels: listed, shown, closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use junction_core::stats::ConnectionInfo;
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::table_to_json;
use crate::listing::ListQuery;
use crate::stats_json;

/// What a connection closed through the API is told, as RabbitMQ says it.
const DEFAULT_CLOSE_REASON: &str = "Closed via management plugin";

impl Admin {
    fn connection_json(&self, info: &ConnectionInfo) -> Value {
        let details = &info.details;
        let mut map = Map::new();
        map.insert("name".into(), info.name.clone().into());
        map.insert("node".into(), self.node_name.clone().into());
        map.insert("protocol".into(), details.protocol.into());
        map.insert("type".into(), "network".into());
        map.insert("vhost".into(), details.vhost.clone().into());
        map.insert("user".into(), details.user.clone().into());
        map.insert("auth_mechanism".into(), "PLAIN".into());
        map.insert("ssl".into(), false.into());
        map.insert(
            "peer_host".into(),
            details.peer.map(|p| p.ip().to_string()).into(),
        );
        map.insert("peer_port".into(), details.peer.map(|p| p.port()).into());
        map.insert("state".into(), info.counters.state().as_str().into());
        map.insert("channels".into(), info.counters.channels().into());
        let connected_at = info
            .connected_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        map.insert("connected_at".into(), connected_at.into());
        let mut client_properties = table_to_json(&details.client_properties);
        if let (Some(client_id), Value::Object(props)) =
            (&details.client_id, &mut client_properties)
        {
            props.insert("client_id".into(), client_id.clone().into());
        }
        if let Some(client_id) = &details.client_id {
            map.insert("client_id".into(), client_id.clone().into());
        }
        let user_provided_name = details
            .client_properties
            .get("connection_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        map.insert("user_provided_name".into(), user_provided_name.into());
        map.insert("client_properties".into(), client_properties);
        stats_json::connection_stats(self, &info.name, &info.counters.totals(), &mut map);
        Value::Object(map)
    }

    /// The connections the caller may see: all for monitors, its own otherwise.
    fn visible_connections(
        &self,
        caller: &Caller,
        vhost: Option<&str>,
    ) -> Vec<Arc<ConnectionInfo>> {
        self.broker
            .connections()
            .list()
            .into_iter()
            .filter(|c| caller.is_monitor() || c.details.user == caller.name())
            .filter(|c| vhost.is_none_or(|v| c.details.vhost == v))
            .collect()
    }

    fn connection_or_404(&self, caller: &Caller, name: &str) -> ApiResult<Arc<ConnectionInfo>> {
        self.broker
            .connections()
            .find(name)
            .filter(|c| caller.is_monitor() || c.details.user == caller.name())
            .ok_or_else(ApiError::not_found)
    }

    fn channels_json(&self, info: &ConnectionInfo) -> Vec<Value> {
        info.channel_numbers()
            .into_iter()
            .map(|number| {
                json!({
                    "name": format!("{} ({number})", info.name),
                    "number": number,
                    "node": self.node_name,
                    "vhost": info.details.vhost,
                    "user": info.details.user,
                    "state": info.counters.state().as_str(),
                    "connection_details": {
                        "name": info.name,
                        "peer_host": info.details.peer.map(|p| p.ip().to_string()),
                        "peer_port": info.details.peer.map(|p| p.port()),
                    },
                })
            })
            .collect()
    }
}

/// GET /api/connections.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let items = admin
        .visible_connections(&caller, None)
        .iter()
        .map(|c| admin.connection_json(c))
        .collect();
    query.respond(items)
}

/// GET /api/vhosts/{vhost}/connections.
pub async fn list_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    admin.vhosts_for(&caller, Some(&vhost)).await?;
    let items = admin
        .visible_connections(&caller, Some(&vhost))
        .iter()
        .map(|c| admin.connection_json(c))
        .collect();
    query.respond(items)
}

/// GET /api/connections/{name}.
pub async fn one(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let info = admin.connection_or_404(&caller, &name)?;
    Ok(query.one(admin.connection_json(&info)))
}

/// DELETE /api/connections/{name}: closes it, telling the client the `X-Reason` header's
/// text (AMQP: connection.close 320; STOMP: an ERROR frame; MQTT: the socket closes and the
/// will is published).
pub async fn close(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let info = admin.connection_or_404(&caller, &name)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_CLOSE_REASON);
    info.close(&format!("CONNECTION_FORCED - {reason}"));
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/connections/{name}/channels.
pub async fn channels_of(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let info = admin.connection_or_404(&caller, &name)?;
    query.respond(admin.channels_json(&info))
}

/// GET /api/channels.
pub async fn channels(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let items = admin
        .visible_connections(&caller, None)
        .iter()
        .flat_map(|c| admin.channels_json(c))
        .collect();
    query.respond(items)
}

/// GET /api/vhosts/{vhost}/channels.
pub async fn channels_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    admin.vhosts_for(&caller, Some(&vhost)).await?;
    let items = admin
        .visible_connections(&caller, Some(&vhost))
        .iter()
        .flat_map(|c| admin.channels_json(c))
        .collect();
    query.respond(items)
}

/// GET /api/connections/username/{user}: the user's connections.
pub async fn of_user(
    State(admin): State<Arc<Admin>>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let items = admin
        .visible_connections(&caller, None)
        .iter()
        .filter(|c| c.details.user == user)
        .map(|c| admin.connection_json(c))
        .collect();
    query.respond(items)
}

/// DELETE /api/connections/username/{user}: closes every connection the user logged in.
pub async fn close_of_user(
    State(admin): State<Arc<Admin>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_CLOSE_REASON);
    for info in admin.visible_connections(&caller, None) {
        if info.details.user == user {
            info.close(&format!("CONNECTION_FORCED - {reason}"));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
