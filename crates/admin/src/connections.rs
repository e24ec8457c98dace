//! Connections of every protocol, and AMQP's channels: listed, shown, closed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use junction_core::stats::ConnectionSnapshot;
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::table_to_json;
use crate::listing::ListQuery;

/// What a connection closed through the API is told, as RabbitMQ says it.
const DEFAULT_CLOSE_REASON: &str = "Closed via management plugin";

impl Admin {
    /// A connection as RabbitMQ's API shows it.
    fn connection_json(&self, connection: &ConnectionSnapshot) -> Value {
        let name = connection.name();
        let mut map = Map::new();
        map.insert("name".into(), name.clone().into());
        map.insert("node".into(), self.node_name.clone().into());
        map.insert("protocol".into(), connection.protocol.into());
        map.insert("type".into(), "network".into());
        map.insert("vhost".into(), connection.vhost.clone().into());
        map.insert("user".into(), connection.user.clone().into());
        map.insert("auth_mechanism".into(), connection.auth_mechanism.into());
        map.insert("ssl".into(), connection.tls.is_some().into());
        // RabbitMQ writes the version as Erlang's atom (`tlsv1.3`); the cipher suite is
        // rustls's (IANA's) name.
        map.insert(
            "ssl_protocol".into(),
            connection.tls.map(|tls| tls.version.to_lowercase()).into(),
        );
        map.insert(
            "ssl_cipher".into(),
            connection.tls.map(|tls| tls.cipher).into(),
        );
        map.insert(
            "peer_host".into(),
            connection.peer.map(|p| p.ip().to_string()).into(),
        );
        map.insert("peer_port".into(), connection.peer.map(|p| p.port()).into());
        map.insert("state".into(), connection.state.as_str().into());
        map.insert("channels".into(), connection.channels.len().into());
        map.insert("connected_at".into(), connection.connected_at_ms.into());
        let mut client_properties = table_to_json(&connection.client_properties);
        if let Some(client_id) = &connection.client_id {
            if let Value::Object(props) = &mut client_properties {
                props.insert("client_id".into(), client_id.clone().into());
            }
            map.insert("client_id".into(), client_id.clone().into());
        }
        let user_provided_name = connection
            .client_properties
            .get("connection_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        map.insert("user_provided_name".into(), user_provided_name.into());
        map.insert("client_properties".into(), client_properties);
        let traffic = connection.traffic;
        let [recv_rate, send_rate] = self
            .rates
            .observe(connection.id, [traffic.recv_oct, traffic.send_oct]);
        map.insert("recv_oct".into(), traffic.recv_oct.into());
        map.insert("recv_oct_details".into(), json!({ "rate": recv_rate }));
        map.insert("send_oct".into(), traffic.send_oct.into());
        map.insert("send_oct_details".into(), json!({ "rate": send_rate }));
        map.insert("recv_cnt".into(), traffic.recv_cnt.into());
        map.insert("send_cnt".into(), traffic.send_cnt.into());
        Value::Object(map)
    }

    /// The connections the caller may see: all for monitors, its own otherwise.
    pub(crate) fn visible_connections(
        &self,
        caller: &Caller,
        vhost: Option<&str>,
    ) -> Vec<ConnectionSnapshot> {
        self.broker
            .connections()
            .snapshots()
            .into_iter()
            .filter(|c| caller.is_monitor() || c.user == caller.name())
            .filter(|c| vhost.is_none_or(|v| c.vhost == v))
            .collect()
    }

    fn connection_or_404(&self, caller: &Caller, name: &str) -> ApiResult<ConnectionSnapshot> {
        self.broker
            .connections()
            .find(name)
            .filter(|c| caller.is_monitor() || c.user == caller.name())
            .ok_or_else(ApiError::not_found)
    }

    fn channels_json(&self, connection: &ConnectionSnapshot) -> Vec<Value> {
        let name = connection.name();
        connection
            .channels
            .iter()
            .map(|number| {
                json!({
                    "name": format!("{name} ({number})"),
                    "number": number,
                    "node": self.node_name,
                    "vhost": connection.vhost,
                    "user": connection.user,
                    "state": connection.state.as_str(),
                    "connection_details": {
                        "name": name,
                        "peer_host": connection.peer.map(|p| p.ip().to_string()),
                        "peer_port": connection.peer.map(|p| p.port()),
                    },
                })
            })
            .collect()
    }

    fn respond_connections(
        &self,
        connections: &[ConnectionSnapshot],
        query: &HashMap<String, String>,
        complete: bool,
    ) -> ApiResult<Response> {
        let query = ListQuery::parse(query)?;
        let items = connections
            .iter()
            .map(|c| self.connection_json(c))
            .collect();
        if complete {
            // The rates of connections no longer listed are forgotten.
            self.rates.keep_observed(connections.iter().map(|c| c.id));
        }
        query.respond(items)
    }
}

/// GET /api/connections.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let connections = admin.visible_connections(&caller, None);
    admin.respond_connections(&connections, &query, caller.is_monitor())
}

/// GET /api/vhosts/{vhost}/connections.
pub async fn list_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    admin.vhosts_for(&caller, Some(&vhost)).await?;
    let connections = admin.visible_connections(&caller, Some(&vhost));
    admin.respond_connections(&connections, &query, false)
}

/// GET /api/connections/username/{user}: the user's connections.
pub async fn of_user(
    State(admin): State<Arc<Admin>>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let connections: Vec<_> = admin
        .visible_connections(&caller, None)
        .into_iter()
        .filter(|c| c.user == user)
        .collect();
    admin.respond_connections(&connections, &query, false)
}

/// GET /api/connections/{name}.
pub async fn one(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let connection = admin.connection_or_404(&caller, &name)?;
    Ok(query.one(admin.connection_json(&connection)))
}

/// The reason in an `X-Reason` header, or RabbitMQ's default.
fn close_reason(headers: &HeaderMap) -> &str {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_CLOSE_REASON)
}

/// Refuses unless the caller may close `connection`: administrators close any, others their
/// own, as in RabbitMQ.
fn may_close(caller: &Caller, connection: &ConnectionSnapshot) -> ApiResult<()> {
    if caller.is_administrator() || connection.user == caller.name() {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not administrator user"))
    }
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
    let connection = admin.connection_or_404(&caller, &name)?;
    may_close(&caller, &connection)?;
    admin
        .broker
        .connections()
        .close(connection.id, close_reason(&headers));
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/connections/username/{user}: closes every connection the user logged in.
pub async fn close_of_user(
    State(admin): State<Arc<Admin>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let reason = close_reason(&headers);
    for connection in admin.visible_connections(&caller, None) {
        if connection.user == user {
            may_close(&caller, &connection)?;
            admin.broker.connections().close(connection.id, reason);
        }
    }
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
    let connection = admin.connection_or_404(&caller, &name)?;
    query.respond(admin.channels_json(&connection))
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
