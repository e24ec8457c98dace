//! Definitions in RabbitMQ's `definitions.json` format: exported by `GET /api/definitions`,
//! imported by `POST /api/definitions` and at start from a file (`[definitions] load`, as
//! RabbitMQ's `load_definitions`). Users (salted SHA-256 hashes, as RabbitMQ exports them),
//! vhosts, permissions, topic permissions, durable exchanges, queues and bindings. Policies,
//! parameters and limits are not applied (Junction has none yet): an import reports them in
//! the log. Importing is idempotent: what exists already and is equivalent is left as it is.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use junction_core::auth::{
    ARGON2_ALGORITHM, PasswordHash, SHA256_ALGORITHM, TopicPermission, UserRecord, VhostPermissions,
};
use junction_core::queue::{ConnectionId, QueueSpec};
use junction_core::{ExchangeSpec, VirtualHost};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::Admin;
use crate::access::{Tags, VhostMeta, permission_json, topic_permission_json, user_json};
use crate::auth::Caller;
use crate::bindings::vhost_bindings;
use crate::error::{ApiError, ApiResult};
use crate::json::{JsonBytes, json_to_table, table_to_json};

/// A definitions document: the parts Junction applies, and the rest kept to be reported.
#[derive(Debug, Default, Deserialize)]
pub struct Definitions {
    #[serde(default)]
    users: Vec<UserDef>,
    #[serde(default)]
    vhosts: Vec<VhostDef>,
    #[serde(default)]
    permissions: Vec<PermissionDef>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermissionDef>,
    #[serde(default)]
    exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    queues: Vec<QueueDef>,
    #[serde(default)]
    bindings: Vec<BindingDef>,
    #[serde(default)]
    policies: Vec<Value>,
    #[serde(default)]
    parameters: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct UserDef {
    name: String,
    #[serde(default)]
    password_hash: String,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Tags,
}

#[derive(Debug, Deserialize)]
struct VhostDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    default_queue_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PermissionDef {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

#[derive(Debug, Deserialize)]
struct TopicPermissionDef {
    user: String,
    vhost: String,
    exchange: String,
    write: String,
    read: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExchangeDef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct QueueDef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vhost: Option<String>,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BindingDef {
    source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// Why definitions could not be read or applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DefinitionsError(pub String);

fn fail(message: impl Into<String>) -> DefinitionsError {
    DefinitionsError(message.into())
}

impl Definitions {
    /// Reads a definitions file.
    pub fn read(path: &std::path::Path) -> Result<Self, DefinitionsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "cannot read definitions file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(text.as_bytes())
            .map_err(|e| fail(format!("{} is not a definitions file: {e}", path.display())))
    }

    /// Reads definitions from JSON.
    pub fn parse(json: &[u8]) -> Result<Self, DefinitionsError> {
        let value: Value = serde_json::from_slice(json).map_err(|e| fail(e.to_string()))?;
        if crate::json::depth(&value) > crate::json::MAX_BODY_DEPTH {
            return Err(fail("the definitions nest too deeply"));
        }
        serde_json::from_value(value).map_err(|e| fail(e.to_string()))
    }
}

fn vhost_of(object: &Option<String>, only: Option<&str>) -> Result<String, DefinitionsError> {
    match (only, object) {
        (Some(vhost), _) => Ok(vhost.to_owned()),
        (None, Some(vhost)) => Ok(vhost.clone()),
        (None, None) => Err(fail("an object names no vhost")),
    }
}

impl Admin {
    /// Applies `definitions`: everything, or into `only` one vhost (a per-vhost document,
    /// whose objects name none). With `persist`, users and vhosts are recorded as API
    /// changes are; a file loaded at start is applied again at each start instead.
    pub async fn import(
        &self,
        definitions: &Definitions,
        only: Option<&str>,
        persist: bool,
    ) -> Result<(), DefinitionsError> {
        if !definitions.policies.is_empty() || !definitions.parameters.is_empty() {
            tracing::warn!(
                policies = definitions.policies.len(),
                parameters = definitions.parameters.len(),
                "definitions: policies and parameters are not applied yet"
            );
        }
        if only.is_none() {
            for vhost in &definitions.vhosts {
                self.broker.add_vhost(&vhost.name);
                let meta = VhostMeta {
                    description: vhost.description.clone(),
                    tags: vhost.tags.to_vec(),
                    default_queue_type: vhost.default_queue_type.clone(),
                };
                if persist {
                    self.managed
                        .save_vhost(&vhost.name, Some(meta))
                        .await
                        .map_err(|e| fail(format!("{e:?}")))?;
                }
            }
            self.import_users(definitions, persist).await?;
        }
        let owner = ConnectionId(0);
        let vhost = |name: &str| -> Result<Arc<VirtualHost>, DefinitionsError> {
            self.broker
                .vhost(name)
                .map_err(|_| fail(format!("definitions: vhost '{name}' does not exist")))
        };
        for x in &definitions.exchanges {
            let name = vhost_of(&x.vhost, only)?;
            let mut spec = ExchangeSpec::new(&x.name, &x.kind);
            spec.durable = x.durable;
            spec.auto_delete = x.auto_delete;
            spec.internal = x.internal;
            spec.arguments = json_to_table(&x.arguments);
            vhost(&name)?.declare_exchange(spec, false).map_err(|e| {
                fail(format!(
                    "definitions: exchange '{}' in '{name}': {}",
                    x.name, e.message
                ))
            })?;
        }
        for q in &definitions.queues {
            let name = vhost_of(&q.vhost, only)?;
            let spec = QueueSpec {
                name: q.name.clone(),
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: json_to_table(&q.arguments),
            };
            vhost(&name)?
                .declare_queue(spec, false, false, owner)
                .await
                .map_err(|e| {
                    fail(format!(
                        "definitions: queue '{}' in '{name}': {}",
                        q.name, e.message
                    ))
                })?;
        }
        for b in &definitions.bindings {
            let name = vhost_of(&b.vhost, only)?;
            let host = vhost(&name)?;
            let arguments = json_to_table(&b.arguments);
            let bound = match b.destination_type.as_str() {
                "queue" => {
                    host.bind_queue(&b.destination, &b.source, &b.routing_key, arguments, owner)
                }
                "exchange" => {
                    host.bind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
                }
                other => {
                    return Err(fail(format!(
                        "definitions: unknown destination_type '{other}'"
                    )));
                }
            };
            bound.map_err(|e| {
                fail(format!(
                    "definitions: binding from '{}' to {} '{}' in '{name}': {}",
                    b.source, b.destination_type, b.destination, e.message
                ))
            })?;
        }
        tracing::info!(
            users = definitions.users.len(),
            vhosts = definitions.vhosts.len(),
            exchanges = definitions.exchanges.len(),
            queues = definitions.queues.len(),
            bindings = definitions.bindings.len(),
            "definitions imported"
        );
        Ok(())
    }

    async fn import_users(
        &self,
        definitions: &Definitions,
        persist: bool,
    ) -> Result<(), DefinitionsError> {
        let touches_users = !definitions.users.is_empty()
            || !definitions.permissions.is_empty()
            || !definitions.topic_permissions.is_empty();
        if !touches_users {
            return Ok(());
        }
        let users = self.managed.users().map_err(|_| {
            fail("definitions name users, but the internal auth backend is not enabled")
        })?;
        let mut changed = Vec::new();
        for user in &definitions.users {
            let hash = PasswordHash::from_definitions(
                user.hashing_algorithm.as_deref(),
                &user.password_hash,
            )
            .ok_or_else(|| {
                fail(format!(
                    "definitions: user '{}': invalid password_hash for hashing_algorithm {} (supported: {SHA256_ALGORITHM}, {ARGON2_ALGORITHM})",
                    user.name,
                    user.hashing_algorithm.as_deref().unwrap_or(SHA256_ALGORITHM)
                ))
            })?;
            // An imported user keeps the permissions it has here (the document's own
            // permissions follow), as RabbitMQ's import does.
            let mut record = UserRecord::new(hash, user.tags.to_vec());
            if let Some(existing) = users.user(&user.name) {
                record.permissions = existing.permissions;
                record.topic_permissions = existing.topic_permissions;
            }
            users.put_user(&user.name, record);
            changed.push(user.name.clone());
        }
        for p in &definitions.permissions {
            let compiled = VhostPermissions::new(&p.configure, &p.write, &p.read)
                .map_err(|e| fail(format!("definitions: permissions of '{}': {e}", p.user)))?;
            if !users.set_permissions(&p.user, &p.vhost, compiled) {
                return Err(fail(format!(
                    "definitions: permissions for unknown user '{}'",
                    p.user
                )));
            }
            changed.push(p.user.clone());
        }
        for t in &definitions.topic_permissions {
            let compiled =
                TopicPermission::new(&t.vhost, &t.exchange, &t.write, &t.read).map_err(|e| {
                    fail(format!(
                        "definitions: topic permissions of '{}': {e}",
                        t.user
                    ))
                })?;
            users.clear_topic_permissions(&t.user, &t.vhost, Some(&t.exchange));
            if !users.add_topic_permission(&t.user, compiled) {
                return Err(fail(format!(
                    "definitions: topic permissions for unknown user '{}'",
                    t.user
                )));
            }
            changed.push(t.user.clone());
        }
        if persist {
            changed.sort();
            changed.dedup();
            for name in changed {
                self.managed
                    .save_user(&name)
                    .await
                    .map_err(|e| fail(format!("{e:?}")))?;
            }
        }
        Ok(())
    }

    /// Exports the definitions: everything, or the objects of one vhost (then without users,
    /// vhosts, permissions, and without a `vhost` key in each object, as RabbitMQ does).
    pub fn export(&self, only: Option<&str>) -> ApiResult<Value> {
        let vhosts = match only {
            Some(name) => vec![self.vhost_or_404(name)?],
            None => self.broker.vhosts(),
        };
        let tag = |vhost: &str| only.is_none().then(|| vhost.to_owned());
        let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
        for vhost in &vhosts {
            let mut listed = vhost.exchanges();
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            for x in listed {
                let spec = &x.spec;
                if !spec.durable || spec.name.is_empty() || spec.name.starts_with("amq.") {
                    continue;
                }
                exchanges.push(ExchangeDef {
                    name: spec.name.clone(),
                    vhost: tag(&vhost.name),
                    kind: spec.kind.clone(),
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    internal: spec.internal,
                    arguments: as_map(table_to_json(&spec.arguments)),
                });
            }
            let mut listed = vhost.queues();
            listed.sort_by(|a, b| a.name().cmp(b.name()));
            for q in listed {
                let spec = q.spec();
                if !spec.durable || spec.exclusive {
                    continue;
                }
                queues.push(QueueDef {
                    name: spec.name.clone(),
                    vhost: tag(&vhost.name),
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    arguments: as_map(table_to_json(&spec.arguments)),
                });
            }
            let durable: HashMap<String, bool> = vhost
                .exchanges()
                .iter()
                .map(|x| (x.name.clone(), x.spec.durable))
                .collect();
            for b in vhost_bindings(vhost, false) {
                let source_durable = durable.get(&b.source).copied().unwrap_or(false);
                let destination_durable = if b.to_exchange {
                    durable.get(&b.destination).copied().unwrap_or(false)
                } else {
                    vhost
                        .queue(&b.destination)
                        .is_some_and(|q| q.spec().durable && !q.spec().exclusive)
                };
                if !source_durable || !destination_durable {
                    continue;
                }
                bindings.push(BindingDef {
                    source: b.source.clone(),
                    vhost: tag(&vhost.name),
                    destination: b.destination.clone(),
                    destination_type: if b.to_exchange { "exchange" } else { "queue" }.into(),
                    routing_key: b.routing_key.clone(),
                    arguments: as_map(table_to_json(&b.arguments)),
                });
            }
        }
        let mut out = Map::new();
        out.insert(
            "rabbit_version".into(),
            crate::node::RABBITMQ_API_VERSION.into(),
        );
        out.insert(
            "rabbitmq_version".into(),
            crate::node::RABBITMQ_API_VERSION.into(),
        );
        out.insert("product_name".into(), "Junction".into());
        out.insert("product_version".into(), env!("CARGO_PKG_VERSION").into());
        if only.is_none() {
            self.export_access(&vhosts, &mut out);
        }
        out.insert("parameters".into(), json!([]));
        out.insert("policies".into(), json!([]));
        if only.is_none() {
            out.insert("global_parameters".into(), json!([]));
        }
        out.insert(
            "queues".into(),
            serde_json::to_value(queues).unwrap_or_default(),
        );
        out.insert(
            "exchanges".into(),
            serde_json::to_value(exchanges).unwrap_or_default(),
        );
        out.insert(
            "bindings".into(),
            serde_json::to_value(bindings).unwrap_or_default(),
        );
        Ok(Value::Object(out))
    }

    fn export_access(&self, vhosts: &[Arc<VirtualHost>], out: &mut Map<String, Value>) {
        let vhosts_json: Vec<Value> = vhosts
            .iter()
            .map(|v| {
                let meta = self.managed.vhost_meta(&v.name);
                json!({
                    "name": v.name,
                    "description": meta.description,
                    "tags": meta.tags,
                    "metadata": {"description": meta.description, "tags": meta.tags},
                    "limits": [],
                })
            })
            .collect();
        out.insert("vhosts".into(), vhosts_json.into());
        let (mut users, mut permissions, mut topic_permissions) =
            (Vec::new(), Vec::new(), Vec::new());
        if let Ok(database) = self.managed.users() {
            for (name, record) in database.users() {
                users.push(user_json(&name, &record));
                let mut vhosts: Vec<_> = record.permissions.iter().collect();
                vhosts.sort_by(|a, b| a.0.cmp(b.0));
                for (vhost, p) in vhosts {
                    permissions.push(permission_json(&name, vhost, p));
                }
                for t in &record.topic_permissions {
                    topic_permissions.push(topic_permission_json(&name, t));
                }
            }
        }
        out.insert("users".into(), users.into());
        out.insert("permissions".into(), permissions.into());
        out.insert("topic_permissions".into(), topic_permissions.into());
    }
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// GET /api/definitions (administrators).
pub async fn export(State(admin): State<Arc<Admin>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    Ok(Json(admin.export(None)?))
}

/// GET /api/definitions/{vhost}.
pub async fn export_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    Ok(Json(admin.export(Some(&vhost))?))
}

/// POST /api/definitions (administrators): 204 once applied.
pub async fn import(
    State(admin): State<Arc<Admin>>,
    caller: Caller,
    JsonBytes(body): JsonBytes,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    let definitions = Definitions::parse(&body).map_err(|e| ApiError::bad_request(e.0))?;
    admin
        .import(&definitions, None, true)
        .await
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /api/definitions/{vhost}.
pub async fn import_vhost(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    caller: Caller,
    JsonBytes(body): JsonBytes,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    admin.vhost_or_404(&vhost)?;
    let definitions = Definitions::parse(&body).map_err(|e| ApiError::bad_request(e.0))?;
    admin
        .import(&definitions, Some(&vhost), true)
        .await
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_files_parse_with_tags_as_text_or_list_and_deep_ones_are_refused() {
        let text = br#"{"users":[{"name":"a","password_hash":"","tags":"administrator,monitoring"},
            {"name":"b","password_hash":"","tags":["management"]}],
            "queues":[{"name":"q","vhost":"/","durable":true,"auto_delete":false,"arguments":{"x-queue-type":"quorum"}}]}"#;
        let parsed = Definitions::parse(text).expect("parses");
        assert_eq!(
            parsed.users[0].tags.to_vec(),
            ["administrator", "monitoring"]
        );
        assert_eq!(parsed.users[1].tags.to_vec(), ["management"]);
        assert_eq!(parsed.queues.len(), 1);
        let deep = format!("{{\"queues\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(Definitions::parse(deep.as_bytes()).is_err());
    }
}
