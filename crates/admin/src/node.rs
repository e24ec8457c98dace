//! The node: overview, nodes, health checks, aliveness test, exchange types.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use junction_core::queue::{ConnectionId, QueueSpec};
use junction_core::{Message, Permission, Properties, Publication, ResourceKind};
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::stats_json;

/// The RabbitMQ management API version whose shapes Junction follows (clients gate features
/// on it).
pub const RABBITMQ_API_VERSION: &str = "4.0.0";

/// What the node's resources are now.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeResources {
    /// Resident memory in bytes.
    pub mem_used: u64,
    /// The memory watermark in bytes (0: unknown).
    pub mem_limit: u64,
    /// Free bytes on the data directory's file system.
    pub disk_free: u64,
    /// The disk free limit in bytes.
    pub disk_free_limit: u64,
    /// Open file descriptors.
    pub fd_used: u64,
    /// The open files limit.
    pub fd_total: u64,
}

/// Measures the node's resources when asked.
pub type ResourceProbe = Arc<dyn Fn() -> NodeResources + Send + Sync>;

impl Admin {
    pub(crate) fn resources(&self) -> NodeResources {
        self.probe.lock().as_ref().map(|p| p()).unwrap_or_default()
    }

    pub(crate) fn uptime_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(self.broker.started())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn listeners_json(&self) -> Vec<Value> {
        self.listeners
            .lock()
            .iter()
            .map(|l| {
                json!({
                    "node": self.node_name,
                    "protocol": l.protocol,
                    "ip_address": l.addr.ip().to_string(),
                    "port": l.addr.port(),
                })
            })
            .collect()
    }

    /// The node object of `/api/nodes`.
    fn node_json(&self) -> Value {
        let resources = self.resources();
        let alarms = self.broker.alarms();
        let raised = |resource: &str| alarms.iter().any(|(r, _)| *r == resource);
        let connections = self.broker.connections().len();
        let store = self
            .broker
            .message_store()
            .map(|s| s.stats())
            .unwrap_or_default();
        let per_fsync = if store.message_syncs == 0 {
            0.0
        } else {
            store.messages as f64 / store.message_syncs as f64
        };
        json!({
            "name": self.node_name,
            "message_store": {
                "messages_written": store.messages,
                "bytes_written": store.bytes,
                "fsyncs": store.syncs,
                "messages_per_fsync": per_fsync,
            },
            "type": "disc",
            "running": true,
            "being_drained": false,
            "os_pid": std::process::id().to_string(),
            "uptime": self.uptime_ms(),
            "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "mem_used": resources.mem_used,
            "mem_limit": resources.mem_limit,
            "mem_alarm": raised("memory"),
            "disk_free": resources.disk_free,
            "disk_free_limit": resources.disk_free_limit,
            "disk_free_alarm": raised("disk"),
            "fd_used": resources.fd_used,
            "fd_total": resources.fd_total,
            "sockets_used": connections,
            "sockets_total": resources.fd_total,
            "proc_used": 0,
            "proc_total": 0,
            "run_queue": 0,
            "exchange_types": self.exchange_types_json(),
            "partitions": [],
            "applications": [{"name": "junction", "description": "Junction message broker", "version": env!("CARGO_PKG_VERSION")}],
            "enabled_plugins": ["rabbitmq_management", "rabbitmq_mqtt", "rabbitmq_stomp", "rabbitmq_web_mqtt", "rabbitmq_web_stomp", "rabbitmq_prometheus"],
        })
    }

    fn exchange_types_json(&self) -> Vec<Value> {
        let mut names = self.broker.exchange_types().names();
        names.sort();
        names
            .into_iter()
            .map(|name| json!({"name": name, "description": "", "enabled": true}))
            .collect()
    }
}

/// GET /api/overview.
pub async fn overview(State(admin): State<Arc<Admin>>, caller: Caller) -> ApiResult<Response> {
    let mut body = Map::new();
    body.insert("management_version".into(), RABBITMQ_API_VERSION.into());
    body.insert("rabbitmq_version".into(), RABBITMQ_API_VERSION.into());
    body.insert("product_name".into(), "Junction".into());
    body.insert("product_version".into(), env!("CARGO_PKG_VERSION").into());
    body.insert("erlang_version".into(), "none".into());
    body.insert(
        "erlang_full_version".into(),
        "none (Junction is written in Rust)".into(),
    );
    body.insert("release_series_support_status".into(), "supported".into());
    body.insert("rates_mode".into(), "basic".into());
    body.insert("disable_stats".into(), false.into());
    body.insert("enable_queue_totals".into(), true.into());
    body.insert("cluster_name".into(), admin.node_name.clone().into());
    body.insert("node".into(), admin.node_name.clone().into());
    body.insert("statistics_db_event_queue".into(), 0.into());
    body.insert(
        "sample_retention_policies".into(),
        json!({"global": [600], "basic": [600], "detailed": [600]}),
    );
    body.insert("exchange_types".into(), admin.exchange_types_json().into());
    stats_json::node_stats(&admin, &mut body);
    let mut vhosts = Vec::new();
    for vhost in admin.broker.vhosts() {
        if caller.sees_vhost(&vhost.name).await {
            vhosts.push(vhost);
        }
    }
    let connections = admin.visible_connections(&caller, None);
    let channels: usize = connections.iter().map(|c| c.channels.len()).sum();
    let (mut queues, mut exchanges, mut consumers) = (0, 0, 0u64);
    for vhost in &vhosts {
        let listed = vhost.queues();
        consumers += listed.iter().map(|q| q.counters().consumers).sum::<u64>();
        queues += listed.len();
        exchanges += vhost.exchanges().len();
    }
    body.insert(
        "object_totals".into(),
        json!({
            "connections": connections.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        }),
    );
    let registry = admin.broker.connections();
    body.insert(
        "churn_rates".into(),
        json!({
            "connection_created": registry.opened_total(),
            "connection_created_details": {"rate": 0.0},
            "connection_closed": registry.closed_total(),
            "connection_closed_details": {"rate": 0.0},
        }),
    );
    body.insert("listeners".into(), admin.listeners_json().into());
    body.insert("contexts".into(), json!([]));
    Ok(Json(Value::Object(body)).into_response())
}

/// GET /api/cluster-name.
pub async fn cluster_name(State(admin): State<Arc<Admin>>, _caller: Caller) -> Json<Value> {
    Json(json!({ "name": admin.node_name }))
}

/// GET /api/nodes.
pub async fn nodes(State(admin): State<Arc<Admin>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    Ok(Json(json!([admin.node_json()])))
}

/// GET /api/nodes/{name}.
pub async fn node(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    if name != admin.node_name {
        return Err(ApiError::not_found());
    }
    Ok(Json(admin.node_json()))
}

/// GET /api/exchange-types.
pub async fn exchange_types(State(admin): State<Arc<Admin>>, _caller: Caller) -> Json<Value> {
    Json(admin.exchange_types_json().into())
}

/// GET /api/extensions: the management UI's extensions (none).
pub async fn extensions(_caller: Caller) -> Json<Value> {
    Json(json!([]))
}

/// Lists of what Junction does not have (policies, parameters, limits, feature flags):
/// always empty, as RabbitMQ's answer for a broker that has none.
pub async fn empty_list(_caller: Caller) -> Json<Value> {
    Json(json!([]))
}

/// Any other path under /api.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

fn health(failed: Option<Value>) -> Response {
    match failed {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(mut body) => {
            if let Value::Object(map) = &mut body {
                map.insert("status".into(), "failed".into());
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// GET /api/health/checks/alarms (and local-alarms: one node is the cluster).
pub async fn alarms(State(admin): State<Arc<Admin>>, _caller: Caller) -> Response {
    let alarms = admin.broker.alarms();
    if alarms.is_empty() {
        return health(None);
    }
    let listed: Vec<Value> = alarms
        .iter()
        .map(|(resource, reason)| {
            json!({"node": admin.node_name, "resource": resource, "reason": reason})
        })
        .collect();
    health(Some(json!({
        "reason": "resource alarm(s) in effect in the cluster",
        "alarms": listed,
    })))
}

/// GET /api/health/checks/virtual-hosts: every vhost is running (they cannot stop alone).
pub async fn virtual_hosts(_caller: Caller) -> Response {
    health(None)
}

/// GET /api/health/checks/port-listener/{port}.
pub async fn port_listener(
    State(admin): State<Arc<Admin>>,
    Path(port): Path<String>,
    _caller: Caller,
) -> ApiResult<Response> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid port '{port}'")))?;
    let listening = admin.listeners.lock().iter().any(|l| l.addr.port() == port);
    Ok(if listening {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        let ports: Vec<u16> = admin
            .listeners
            .lock()
            .iter()
            .map(|l| l.addr.port())
            .collect();
        health(Some(json!({
            "reason": format!("No active listener on port {port}"),
            "missing": port,
            "ports": ports,
        })))
    })
}

/// GET /api/health/checks/protocol-listener/{protocol}.
pub async fn protocol_listener(
    State(admin): State<Arc<Admin>>,
    Path(protocol): Path<String>,
    _caller: Caller,
) -> Response {
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
        other => other,
    };
    let listening = admin.listeners.lock().iter().any(|l| l.protocol == wanted);
    if listening {
        Json(json!({"status": "ok", "protocol": protocol})).into_response()
    } else {
        health(Some(json!({
            "reason": format!("No active listener for protocol {protocol}"),
            "missing": protocol,
        })))
    }
}

/// GET /api/aliveness-test/{vhost}: declares the `aliveness-test` queue, publishes a
/// message to it and gets it back, as RabbitMQ does.
pub async fn aliveness(
    State(admin): State<Arc<Admin>>,
    Path(vhost_name): Path<String>,
    caller: Caller,
) -> ApiResult<Response> {
    const QUEUE: &str = "aliveness-test";
    for permission in [Permission::Configure, Permission::Write, Permission::Read] {
        caller
            .require_permission(&vhost_name, ResourceKind::Queue, QUEUE, permission)
            .await?;
    }
    let vhost = admin
        .broker
        .vhost(&vhost_name)
        .map_err(|_| ApiError::not_found())?;
    let spec = QueueSpec {
        name: QUEUE.to_owned(),
        ..QueueSpec::default()
    };
    let owner = ConnectionId(0);
    vhost.declare_queue(spec, false, false, owner).await?;
    let exchange = vhost.exchange("")?;
    let message = Message::new("", QUEUE, Properties::default(), "test_message".into());
    vhost.publish(Publication::new(&exchange, message)).await;
    let queue = vhost
        .queue(QUEUE)
        .ok_or_else(|| ApiError::internal("aliveness-test queue vanished"))?;
    let channel = junction_core::ChannelId {
        connection: owner,
        number: 0,
        generation: 0,
    };
    match queue.get(channel, true).await? {
        Some(got) if got.message.body.as_ref() == b"test_message" => {
            Ok(Json(json!({"status": "ok"})).into_response())
        }
        _ => Ok(health(Some(json!({"reason": "aliveness test failed"})))),
    }
}
