//! Definitions loaded at start from a file in RabbitMQ's `definitions.json` format
//! (`[definitions] load`, as RabbitMQ's `load_definitions`): users (salted SHA-256 hashes, as
//! RabbitMQ exports them), vhosts, permissions, topic permissions, exchanges, queues and
//! bindings. Policies, parameters and limits are not applied yet and are reported in the log.
//! Loading is idempotent: what exists already and is equivalent is left as it is.

use std::path::Path;

use anyhow::Context;
use junction_core::auth::{
    InternalUsers, PasswordHash, TopicPermission, UserRecord, VhostPermissions,
};
use junction_core::queue::{ConnectionId, QueueSpec};
use junction_core::{Broker, ExchangeSpec, FieldTable, FieldValue};
use serde::Deserialize;

/// The parts of a definitions file Junction applies.
#[derive(Debug, Default, Deserialize)]
pub struct DefinitionsFile {
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
    policies: Vec<serde_json::Value>,
    #[serde(default)]
    parameters: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct UserDef {
    name: String,
    password_hash: String,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Tags,
}

/// RabbitMQ 3 writes tags as one comma-separated string, RabbitMQ 4 as a list.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Tags {
    #[default]
    None,
    Text(String),
    List(Vec<String>),
}

impl Tags {
    fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::None => Vec::new(),
            Tags::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            Tags::List(tags) => tags.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct VhostDef {
    name: String,
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

#[derive(Debug, Deserialize)]
struct ExchangeDef {
    name: String,
    vhost: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct QueueDef {
    name: String,
    vhost: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct BindingDef {
    source: String,
    vhost: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

/// A JSON value as a field value: strings, integers, floats, booleans, lists, objects, null.
fn field(value: &serde_json::Value) -> FieldValue {
    match value {
        serde_json::Value::Null => FieldValue::Void,
        serde_json::Value::Bool(b) => FieldValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => FieldValue::string(s.as_str()),
        serde_json::Value::Array(items) => FieldValue::Array(items.iter().map(field).collect()),
        serde_json::Value::Object(map) => FieldValue::Table(table(map)),
    }
}

fn table(map: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in map {
        table.insert(key.as_str(), field(value));
    }
    table
}

impl DefinitionsFile {
    /// Reads a definitions file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read definitions file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a definitions file", path.display()))
    }

    /// Adds the file's users, with their permissions and topic permissions, to `users`.
    pub fn add_users(&self, users: &InternalUsers) -> anyhow::Result<()> {
        for user in &self.users {
            let algorithm = user
                .hashing_algorithm
                .as_deref()
                .unwrap_or("rabbit_password_hashing_sha256");
            anyhow::ensure!(
                algorithm == "rabbit_password_hashing_sha256",
                "definitions: user '{}' has a {algorithm} hash; only rabbit_password_hashing_sha256 is supported",
                user.name
            );
            let hash = PasswordHash::from_base64(&user.password_hash).with_context(|| {
                format!("definitions: user '{}': invalid password_hash", user.name)
            })?;
            users.put_user(&user.name, UserRecord::new(hash, user.tags.to_vec()));
        }
        for p in &self.permissions {
            let compiled = VhostPermissions::new(&p.configure, &p.write, &p.read)
                .with_context(|| format!("definitions: permissions of '{}'", p.user))?;
            anyhow::ensure!(
                users.set_permissions(&p.user, &p.vhost, compiled),
                "definitions: permissions for unknown user '{}'",
                p.user
            );
        }
        for t in &self.topic_permissions {
            let compiled = TopicPermission::new(&t.vhost, &t.exchange, &t.write, &t.read)
                .with_context(|| format!("definitions: topic permissions of '{}'", t.user))?;
            anyhow::ensure!(
                users.add_topic_permission(&t.user, compiled),
                "definitions: topic permissions for unknown user '{}'",
                t.user
            );
        }
        Ok(())
    }

    /// Creates the file's vhosts, exchanges, queues and bindings in `broker`.
    pub async fn apply(&self, broker: &Broker) -> anyhow::Result<()> {
        if !self.policies.is_empty() || !self.parameters.is_empty() {
            tracing::warn!(
                policies = self.policies.len(),
                parameters = self.parameters.len(),
                "definitions: policies and parameters are not applied yet"
            );
        }
        for vhost in &self.vhosts {
            broker.add_vhost(&vhost.name);
        }
        let owner = ConnectionId(0);
        for x in &self.exchanges {
            let vhost = broker.vhost(&x.vhost)?;
            let mut spec = ExchangeSpec::new(&x.name, &x.kind);
            spec.durable = x.durable;
            spec.auto_delete = x.auto_delete;
            spec.internal = x.internal;
            spec.arguments = table(&x.arguments);
            vhost
                .declare_exchange(spec, false)
                .with_context(|| format!("definitions: exchange '{}' in '{}'", x.name, x.vhost))?;
        }
        for q in &self.queues {
            let vhost = broker.vhost(&q.vhost)?;
            let spec = QueueSpec {
                name: q.name.clone(),
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: table(&q.arguments),
            };
            vhost
                .declare_queue(spec, false, false, owner)
                .await
                .with_context(|| format!("definitions: queue '{}' in '{}'", q.name, q.vhost))?;
        }
        for b in &self.bindings {
            let vhost = broker.vhost(&b.vhost)?;
            let arguments = table(&b.arguments);
            let bound = match b.destination_type.as_str() {
                "queue" => {
                    vhost.bind_queue(&b.destination, &b.source, &b.routing_key, arguments, owner)
                }
                "exchange" => {
                    vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
                }
                other => anyhow::bail!("definitions: unknown destination_type '{other}'"),
            };
            bound.with_context(|| {
                format!(
                    "definitions: binding from '{}' to {} '{}' in '{}'",
                    b.source, b.destination_type, b.destination, b.vhost
                )
            })?;
        }
        tracing::info!(
            users = self.users.len(),
            vhosts = self.vhosts.len(),
            exchanges = self.exchanges.len(),
            queues = self.queues.len(),
            bindings = self.bindings.len(),
            "definitions loaded"
        );
        Ok(())
    }
}
