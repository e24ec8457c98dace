//! Queues: list, show, declare, delete, purge, get messages; and their consumers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use junction_core::queue::QueueSpec;
use junction_core::{ChannelId, Message, Permission, QueueHandle, ResourceKind, VirtualHost};
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
    /// The vhost called `name`, or 404.
    pub(crate) fn vhost_or_404(&self, name: &str) -> ApiResult<Arc<VirtualHost>> {
        self.broker.vhost(name).map_err(|_| ApiError::not_found())
    }

    /// A queue as RabbitMQ's API shows it.
    pub(crate) fn queue_json(&self, queue: &QueueHandle) -> Value {
        let spec = queue.spec();
        let t = queue.counters();
        let mut map = Map::new();
        map.insert("name".into(), spec.name.clone().into());
        map.insert("vhost".into(), queue.vhost_name().into());
        map.insert("durable".into(), spec.durable.into());
        map.insert("auto_delete".into(), spec.auto_delete.into());
        map.insert("exclusive".into(), spec.exclusive.into());
        map.insert("arguments".into(), table_to_json(&spec.arguments));
        let kind = if queue.arguments().is_quorum() {
            "quorum"
        } else {
            "classic"
        };
        map.insert("type".into(), kind.into());
        map.insert("state".into(), "running".into());
        map.insert("node".into(), self.node_name.clone().into());
        map.insert("consumers".into(), t.consumers.into());
        map.insert("message_bytes".into(), t.ready_bytes.into());
        map.insert("message_bytes_ready".into(), t.ready_bytes.into());
        map.insert("messages_paged_out".into(), t.paged.into());
        map.insert(
            "messages_ram".into(),
            (t.ready - t.paged.min(t.ready)).into(),
        );
        if let Some(owner) = queue.owner().filter(|_| spec.exclusive)
            && let Some(connection) = self.broker.connections().snapshot(owner)
        {
            map.insert(
                "owner_pid_details".into(),
                json!({"name": connection.name(), "peer_host": connection.peer.map(|p| p.ip().to_string())}),
            );
        }
        stats_json::queue_stats(self, &stats_json::queue_key(queue), &t, &mut map);
        Value::Object(map)
    }

    async fn visible_vhosts(&self, caller: &Caller) -> Vec<Arc<VirtualHost>> {
        let mut visible = Vec::new();
        for vhost in self.broker.vhosts() {
            if caller.sees_vhost(&vhost.name).await {
                visible.push(vhost);
            }
        }
        visible
    }

    /// The vhosts a list covers: all the caller sees, or the one named (404 if missing,
    /// refused if not visible).
    pub(crate) async fn vhosts_for(
        &self,
        caller: &Caller,
        vhost: Option<&str>,
    ) -> ApiResult<Vec<Arc<VirtualHost>>> {
        match vhost {
            None => Ok(self.visible_vhosts(caller).await),
            Some(name) => {
                let vhost = self.vhost_or_404(name)?;
                if !caller.sees_vhost(name).await {
                    return Err(ApiError::not_authorised(format!(
                        "access to vhost '{name}' refused for user '{}'",
                        caller.name()
                    )));
                }
                Ok(vec![vhost])
            }
        }
    }

    /// Queue `name`, or 404.
    fn queue_or_404(&self, vhost: &VirtualHost, name: &str) -> ApiResult<QueueHandle> {
        vhost.queue(name).ok_or_else(ApiError::not_found)
    }

    /// Queue `name` to take messages from: not another connection's exclusive queue
    /// (RabbitMQ's resource-locked refusal, as for a client's basic.get or purge).
    fn usable_queue(&self, vhost: &VirtualHost, name: &str) -> ApiResult<QueueHandle> {
        self.queue_or_404(vhost, name)?;
        Ok(vhost.queue_for(name, self.api_connection())?)
    }
}

/// GET /api/queues.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_queues(&admin, &caller, None, &query).await
}

/// GET /api/queues/{vhost}.
pub async fn list_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_queues(&admin, &caller, Some(&vhost), &query).await
}

async fn list_queues(
    admin: &Admin,
    caller: &Caller,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let query = ListQuery::parse(query)?;
    let mut items = Vec::new();
    for vhost in admin.vhosts_for(caller, vhost).await? {
        items.extend(vhost.queues().iter().map(|q| admin.queue_json(q)));
    }
    query.respond(items)
}

/// GET /api/queues/{vhost}/{name}.
pub async fn one(
    State(admin): State<Arc<Admin>>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let vhost = admin.vhosts_for(&caller, Some(&vhost)).await?.remove(0);
    let queue = admin.queue_or_404(&vhost, &name)?;
    let mut item = admin.queue_json(&queue);
    if let Value::Object(map) = &mut item {
        map.insert(
            "consumer_details".into(),
            consumers_json(&admin, &queue).await.into(),
        );
    }
    Ok(query.one(item))
}

/// The body of a queue declaration.
#[derive(Debug, Deserialize)]
pub struct QueueBody {
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

/// PUT /api/queues/{vhost}/{name}: 201 when created, 204 when it existed (and is
/// equivalent).
pub async fn declare(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<QueueBody>,
) -> ApiResult<StatusCode> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    caller
        .require_permission(
            &vhost_name,
            ResourceKind::Queue,
            &name,
            Permission::Configure,
        )
        .await?;
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "a queue declared over HTTP needs a name",
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
            ResourceKind::Queue,
            &name,
            &arguments,
            "x-dead-letter-exchange",
        )
        .await?;
    let existed = vhost.queue(&name).is_some();
    let spec = QueueSpec {
        name,
        durable: body.durable.unwrap_or(true),
        exclusive: false,
        auto_delete: body.auto_delete,
        arguments,
    };
    vhost
        .declare_queue(spec, false, false, admin.api_connection())
        .await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/queues/{vhost}/{name}, with `if-unused` and `if-empty`.
pub async fn delete(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    caller
        .require_permission(
            &vhost_name,
            ResourceKind::Queue,
            &name,
            Permission::Configure,
        )
        .await?;
    let queue = admin.queue_or_404(&vhost, &name)?;
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true");
    vhost
        .delete_queue(
            &name,
            flag("if-unused"),
            flag("if-empty"),
            // An operator may delete another connection's exclusive queue, as in RabbitMQ's UI.
            queue.owner().unwrap_or(admin.api_connection()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/queues/{vhost}/{name}/contents: purges the queue.
pub async fn purge(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    let vhost = admin.vhost_or_404(&vhost_name)?;
    caller
        .require_permission(&vhost_name, ResourceKind::Queue, &name, Permission::Read)
        .await?;
    let queue = admin.usable_queue(&vhost, &name)?;
    queue.purge().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a get.
#[derive(Debug, Deserialize)]
pub struct GetBody {
    #[serde(default = "one_message")]
    count: u32,
    #[serde(default = "requeue")]
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    #[serde(default)]
    truncate: Option<usize>,
}

fn one_message() -> u32 {
    1
}

fn requeue() -> String {
    "ack_requeue_true".to_owned()
}

fn auto() -> String {
    "auto".to_owned()
}

/// The most messages one get returns.
const MAX_GET: u32 = 10_000;

/// POST /api/queues/{vhost}/{name}/get: takes up to `count` messages and acknowledges or
/// requeues them as `ackmode` says (`ack_requeue_true`, `ack_requeue_false`,
/// `reject_requeue_true`, `reject_requeue_false`).
pub async fn get(
    State(admin): State<Arc<Admin>>,
    Path((vhost_name, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<GetBody>,
) -> ApiResult<Json<Value>> {
    let (requeue, reject) = match body.ackmode.as_str() {
        "ack_requeue_true" => (true, false),
        "ack_requeue_false" => (false, false),
        "reject_requeue_true" => (true, true),
        "reject_requeue_false" => (false, true),
        other => return Err(ApiError::bad_request(format!("unknown ackmode '{other}'"))),
    };
    let base64 = match body.encoding.as_str() {
        "auto" => false,
        "base64" => true,
        other => return Err(ApiError::bad_request(format!("unknown encoding '{other}'"))),
    };
    if body.count > MAX_GET {
        return Err(ApiError::bad_request(format!(
            "count must be at most {MAX_GET}"
        )));
    }
    let vhost = admin.vhost_or_404(&vhost_name)?;
    caller
        .require_permission(&vhost_name, ResourceKind::Queue, &name, Permission::Read)
        .await?;
    let queue = admin.usable_queue(&vhost, &name)?;
    // The messages are taken on a channel of their own, then settled all at once: requeued
    // ones go back to their places, marked redelivered, as RabbitMQ does. The work runs in a
    // task of its own, so a client that goes away midway cannot leave messages taken.
    let channel = ChannelId {
        connection: admin.broker.next_connection_id(),
        number: 1,
        generation: 0,
    };
    let work = async move {
        let mut taken = Vec::new();
        let mut shown = Vec::new();
        let mut failed = None;
        for _ in 0..body.count {
            match queue.get(channel, false).await {
                Ok(Some(got)) => {
                    shown.push(message_json(
                        &got.message,
                        got.redelivered,
                        got.remaining,
                        base64,
                        body.truncate,
                    ));
                    taken.push(got.seq);
                }
                Ok(None) => break,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if reject || requeue {
            queue.reject(channel, taken, requeue).await;
        } else {
            queue.ack(channel, taken).await;
        }
        queue.channel_closed(channel).await;
        match failed {
            Some(error) => Err(ApiError::from(error)),
            None => Ok(Json(Value::Array(shown))),
        }
    };
    tokio::spawn(work)
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
}

/// A message as the get endpoint shows it.
fn message_json(
    message: &Message,
    redelivered: bool,
    remaining: u32,
    base64: bool,
    truncate: Option<usize>,
) -> Value {
    let body = &message.body;
    let shown = &body[..truncate.unwrap_or(body.len()).min(body.len())];
    let (payload, encoding) = match (base64, std::str::from_utf8(shown)) {
        (false, Ok(text)) => (text.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "payload_bytes": body.len(),
        "redelivered": redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": remaining,
        "properties": crate::exchanges::properties_json(&message.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// The consumers of `queue`, as `/api/consumers` lists them.
async fn consumers_json(admin: &Admin, queue: &QueueHandle) -> Vec<Value> {
    let Ok(consumers) = queue.consumers().await else {
        return Vec::new();
    };
    consumers
        .into_iter()
        .map(|c| {
            let connection = admin.broker.connections().snapshot(c.channel.connection);
            let (connection_name, peer, user) = match &connection {
                Some(connection) => (connection.name(), connection.peer, connection.user.clone()),
                None => (String::new(), None, String::new()),
            };
            json!({
                "queue": {"name": queue.name(), "vhost": queue.vhost_name()},
                "consumer_tag": &*c.tag,
                "exclusive": c.exclusive,
                "ack_required": c.ack_required,
                "prefetch_count": c.prefetch,
                "priority": c.priority,
                "active": c.active,
                "activity_status": if c.active { "up" } else { "waiting" },
                "arguments": {},
                "channel_details": {
                    "connection_name": connection_name,
                    "name": format!("{connection_name} ({})", c.channel.number),
                    "number": c.channel.number,
                    "node": admin.node_name,
                    "peer_host": peer.map(|p| p.ip().to_string()),
                    "peer_port": peer.map(|p| p.port()),
                    "user": user,
                },
            })
        })
        .collect()
}

/// GET /api/consumers.
pub async fn consumers(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_consumers(&admin, &caller, None, &query).await
}

/// GET /api/consumers/{vhost}.
pub async fn consumers_in_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    list_consumers(&admin, &caller, Some(&vhost), &query).await
}

async fn list_consumers(
    admin: &Admin,
    caller: &Caller,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let mut query = ListQuery::parse(query)?;
    query.default_sort("consumer_tag");
    let mut items = Vec::new();
    for vhost in admin.vhosts_for(caller, vhost).await? {
        for queue in vhost.queues() {
            if queue.counters().consumers > 0 {
                items.extend(consumers_json(admin, &queue).await);
            }
        }
    }
    Ok(query.respond(items)?.into_response())
}
