//! Users, vhosts, permissions and topic permissions, managed through the API (administrators
//! only) and kept across restarts.
//!
//! What the API changes is recorded in the broker's adapter state (tables
//! `management.users` and `management.vhosts`, one JSON record per name; a deletion is a
//! record too, so a user or vhost of the configuration that an operator deleted stays
//! deleted) and applied over the configuration at start ([`ManagedState::restore`]), as
//! RabbitMQ's own database outlives its configuration file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use junction_core::auth::{
    ARGON2_ALGORITHM, InternalUsers, PasswordHash, SHA256_ALGORITHM, TopicPermission, UserRecord,
    VhostPermissions,
};
use junction_core::{AdapterStateStore, Broker};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Admin;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::Body;
use crate::listing::ListQuery;
use crate::stats_json;

const USERS_TABLE: &str = "management.users";
const VHOSTS_TABLE: &str = "management.vhosts";

/// A user as it is stored and exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUser {
    /// Base64 of salt and hash ("" for none).
    pub password_hash: String,
    /// The tags.
    pub tags: Vec<String>,
    /// Permissions per vhost.
    pub permissions: BTreeMap<String, [String; 3]>,
    /// Topic permissions: vhost, exchange, write, read.
    pub topic_permissions: Vec<[String; 4]>,
}

impl StoredUser {
    /// The record of `user` as the database holds it.
    pub fn of(record: &UserRecord) -> Self {
        Self {
            password_hash: record.password.encoded(),
            tags: record.tags.clone(),
            permissions: record
                .permissions
                .iter()
                .map(|(vhost, p)| {
                    (
                        vhost.clone(),
                        [
                            p.configure_pattern().to_owned(),
                            p.write_pattern().to_owned(),
                            p.read_pattern().to_owned(),
                        ],
                    )
                })
                .collect(),
            topic_permissions: record
                .topic_permissions
                .iter()
                .map(|t| {
                    [
                        t.vhost().to_owned(),
                        t.exchange().to_owned(),
                        t.write_pattern().to_owned(),
                        t.read_pattern().to_owned(),
                    ]
                })
                .collect(),
        }
    }

    /// The database record.
    pub fn to_record(&self) -> Result<UserRecord, String> {
        let password = PasswordHash::from_encoded(&self.password_hash)
            .ok_or_else(|| "invalid password_hash".to_owned())?;
        let mut record = UserRecord::new(password, self.tags.clone());
        for (vhost, [configure, write, read]) in &self.permissions {
            let compiled =
                VhostPermissions::new(configure, write, read).map_err(|e| e.to_string())?;
            record.permissions.insert(vhost.clone(), compiled);
        }
        for [vhost, exchange, write, read] in &self.topic_permissions {
            let compiled =
                TopicPermission::new(vhost, exchange, write, read).map_err(|e| e.to_string())?;
            record.topic_permissions.push(Arc::new(compiled));
        }
        Ok(record)
    }
}

/// A vhost's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VhostMeta {
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The queue type of queues declared without one.
    #[serde(default)]
    pub default_queue_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record<T> {
    Present(T),
    Deleted,
}

/// Users, permissions and vhosts as the API manages them, and where the changes are kept.
pub struct ManagedState {
    users: Option<Arc<InternalUsers>>,
    store: Option<Arc<dyn AdapterStateStore>>,
    vhost_meta: Mutex<HashMap<String, VhostMeta>>,
}

impl ManagedState {
    /// Management of `users` (the internal database, when enabled), keeping changes in
    /// `store`.
    pub fn new(
        users: Option<Arc<InternalUsers>>,
        store: Option<Arc<dyn AdapterStateStore>>,
    ) -> Self {
        Self {
            users,
            store,
            vhost_meta: Mutex::new(HashMap::new()),
        }
    }

    /// The internal user database, or a refusal when it is not enabled.
    pub fn users(&self) -> ApiResult<&Arc<InternalUsers>> {
        self.users.as_ref().ok_or_else(|| {
            ApiError::bad_request("users are managed by the internal auth backend, which is not enabled ([auth] backends)")
        })
    }

    /// The metadata of vhost `name`.
    pub fn vhost_meta(&self, name: &str) -> VhostMeta {
        self.vhost_meta
            .lock()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Applies what was recorded before the last stop.
    pub async fn restore(&self, broker: &Broker) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for (name, bytes) in store.load_state(VHOSTS_TABLE).map_err(|e| e.to_string())? {
            match serde_json::from_slice::<Record<VhostMeta>>(&bytes) {
                Ok(Record::Present(meta)) => {
                    broker.add_vhost(&name);
                    self.vhost_meta.lock().insert(name, meta);
                }
                Ok(Record::Deleted) => {
                    broker
                        .delete_vhost(&name)
                        .await
                        .map_err(|e| format!("vhost '{name}': {}", e.message))?;
                }
                Err(error) => {
                    tracing::warn!(vhost = name, %error, "unreadable vhost record skipped")
                }
            }
        }
        let Some(users) = &self.users else {
            return Ok(());
        };
        for (name, bytes) in store.load_state(USERS_TABLE).map_err(|e| e.to_string())? {
            match serde_json::from_slice::<Record<StoredUser>>(&bytes) {
                Ok(Record::Present(user)) => match user.to_record() {
                    Ok(record) => users.put_user(&name, record),
                    Err(error) => {
                        tracing::warn!(user = name, %error, "unreadable user record skipped")
                    }
                },
                Ok(Record::Deleted) => {
                    users.delete_user(&name);
                }
                Err(error) => tracing::warn!(user = name, %error, "unreadable user record skipped"),
            }
        }
        Ok(())
    }

    async fn write(&self, table: &'static str, key: &str, value: Vec<u8>) -> ApiResult<()> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || store.put_state(table, &key, &value))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Records user `name` as the database holds it now (or deleted).
    pub async fn save_user(&self, name: &str) -> ApiResult<()> {
        let users = self.users()?;
        let record = match users.user(name) {
            Some(record) => Record::Present(StoredUser::of(&record)),
            None => Record::Deleted,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        self.write(USERS_TABLE, name, bytes).await
    }

    /// Records vhost `name` (with `meta`) or its deletion.
    pub async fn save_vhost(&self, name: &str, meta: Option<VhostMeta>) -> ApiResult<()> {
        let record = match meta {
            Some(meta) => {
                self.vhost_meta.lock().insert(name.to_owned(), meta.clone());
                Record::Present(meta)
            }
            None => {
                self.vhost_meta.lock().remove(name);
                Record::Deleted
            }
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        self.write(VHOSTS_TABLE, name, bytes).await
    }
}

/// Tags as RabbitMQ accepts them: a comma-separated string or a list.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    /// None given.
    #[default]
    None,
    /// `"administrator,monitoring"`.
    Text(String),
    /// `["administrator"]`.
    List(Vec<String>),
}

impl Tags {
    /// The tags as a list.
    pub fn to_vec(&self) -> Vec<String> {
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

pub(crate) fn user_json(name: &str, record: &UserRecord) -> Value {
    json!({
        "name": name,
        "password_hash": record.password.encoded(),
        "hashing_algorithm": record.password.algorithm(),
        "tags": record.tags,
        "limits": {},
    })
}

pub(crate) fn permission_json(user: &str, vhost: &str, p: &VhostPermissions) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure_pattern(),
        "write": p.write_pattern(),
        "read": p.read_pattern(),
    })
}

pub(crate) fn topic_permission_json(user: &str, t: &TopicPermission) -> Value {
    json!({
        "user": user,
        "vhost": t.vhost(),
        "exchange": t.exchange(),
        "write": t.write_pattern(),
        "read": t.read_pattern(),
    })
}

/// GET /api/whoami.
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.name(), "tags": caller.tags()}))
}

impl Admin {
    fn vhost_json(&self, name: &str) -> Value {
        let meta = self.managed.vhost_meta(name);
        let mut map = serde_json::Map::new();
        map.insert("name".into(), name.into());
        map.insert("description".into(), meta.description.clone().into());
        map.insert("tags".into(), meta.tags.clone().into());
        map.insert(
            "default_queue_type".into(),
            meta.default_queue_type
                .clone()
                .unwrap_or_else(|| "classic".into())
                .into(),
        );
        map.insert("tracing".into(), false.into());
        map.insert(
            "metadata".into(),
            json!({"description": meta.description, "tags": meta.tags}),
        );
        map.insert(
            "cluster_state".into(),
            json!({ self.node_name.clone(): "running" }),
        );
        if let Ok(vhost) = self.broker.vhost(name) {
            stats_json::queue_stats(
                self,
                &stats_json::vhost_key(name),
                &vhost.queue_totals(),
                &mut map,
            );
        }
        Value::Object(map)
    }
}

/// GET /api/vhosts.
pub async fn vhosts(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    let mut items = Vec::new();
    for vhost in admin.vhosts_for(&caller, None).await? {
        items.push(admin.vhost_json(&vhost.name));
    }
    query.respond(items)
}

/// GET /api/vhosts/{vhost}.
pub async fn vhost(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    let query = ListQuery::parse(&query)?;
    admin.vhosts_for(&caller, Some(&name)).await?;
    Ok(query.one(admin.vhost_json(&name)))
}

/// The body of a vhost's creation.
#[derive(Debug, Default, Deserialize)]
pub struct VhostBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    default_queue_type: Option<String>,
}

/// PUT /api/vhosts/{vhost}: 201 when created, 204 when it existed (its metadata updated).
pub async fn put_vhost(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
    Body(body): Body<VhostBody>,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("a vhost needs a name"));
    }
    if let Some(kind) = &body.default_queue_type
        && !matches!(kind.as_str(), "classic" | "quorum")
    {
        return Err(ApiError::bad_request(format!(
            "unknown default_queue_type '{kind}'"
        )));
    }
    let existed = admin.broker.vhost(&name).is_ok();
    admin.broker.add_vhost(&name);
    let meta = VhostMeta {
        description: body.description,
        tags: body.tags.to_vec(),
        default_queue_type: body.default_queue_type,
    };
    admin.managed.save_vhost(&name, Some(meta)).await?;
    // As RabbitMQ's API: whoever creates a vhost gets full permissions in it.
    if !existed
        && let Ok(users) = admin.managed.users()
        && users.set_permissions(caller.name(), &name, VhostPermissions::all())
    {
        admin.managed.save_user(caller.name()).await?;
    }
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/vhosts/{vhost}: the vhost and everything in it.
pub async fn delete_vhost(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    if !admin.broker.delete_vhost(&name).await? {
        return Err(ApiError::not_found());
    }
    admin.managed.save_vhost(&name, None).await?;
    // Its permissions go with it, so a vhost made again later starts without them.
    if let Ok(users) = admin.managed.users() {
        for (user, _) in users.users() {
            let had = users.clear_permissions(&user, &name);
            let had_topic = users.clear_topic_permissions(&user, &name, None);
            if had || had_topic {
                admin.managed.save_user(&user).await?;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Every (user, vhost, permissions), in order.
fn all_permissions(users: &InternalUsers) -> Vec<(String, String, VhostPermissions)> {
    let mut out = Vec::new();
    for (name, record) in users.users() {
        let mut vhosts: Vec<_> = record.permissions.into_iter().collect();
        vhosts.sort_by(|a, b| a.0.cmp(&b.0));
        for (vhost, p) in vhosts {
            out.push((name.clone(), vhost, p));
        }
    }
    out
}

fn permissions_where(admin: &Admin, keep: impl Fn(&str, &str) -> bool) -> ApiResult<Vec<Value>> {
    Ok(all_permissions(admin.managed.users()?)
        .iter()
        .filter(|(user, vhost, _)| keep(user, vhost))
        .map(|(user, vhost, p)| permission_json(user, vhost, p))
        .collect())
}

fn topic_permissions_where(
    admin: &Admin,
    keep: impl Fn(&str, &str) -> bool,
) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for (name, record) in admin.managed.users()?.users() {
        for t in &record.topic_permissions {
            if keep(&name, t.vhost()) {
                out.push(topic_permission_json(&name, t));
            }
        }
    }
    Ok(out)
}

/// GET /api/vhosts/{vhost}/permissions.
pub async fn vhost_permissions(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    admin.vhost_or_404(&vhost)?;
    Ok(Json(permissions_where(&admin, |_, v| v == vhost)?.into()))
}

/// GET /api/vhosts/{vhost}/topic-permissions.
pub async fn vhost_topic_permissions(
    State(admin): State<Arc<Admin>>,
    Path(vhost): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    admin.vhost_or_404(&vhost)?;
    Ok(Json(
        topic_permissions_where(&admin, |_, v| v == vhost)?.into(),
    ))
}

/// GET /api/users.
pub async fn users(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> ApiResult<Response> {
    caller.require_administrator()?;
    let query = ListQuery::parse(&query)?;
    let items = admin
        .managed
        .users()?
        .users()
        .iter()
        .map(|(name, record)| user_json(name, record))
        .collect();
    query.respond(items)
}

/// GET /api/users/without-permissions.
pub async fn users_without_permissions(
    State(admin): State<Arc<Admin>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    let items: Vec<Value> = admin
        .managed
        .users()?
        .users()
        .iter()
        .filter(|(_, record)| record.permissions.is_empty())
        .map(|(name, record)| user_json(name, record))
        .collect();
    Ok(Json(items.into()))
}

/// GET /api/users/{user}.
pub async fn user(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    let record = admin
        .managed
        .users()?
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&name, &record)))
}

/// The body of a user's creation.
#[derive(Debug, Default, Deserialize)]
pub struct UserBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Tags,
}

/// PUT /api/users/{user}: 201 when created, 204 when replaced. A password is hashed here; a
/// `password_hash` must be RabbitMQ's salted SHA-256; neither: the user has no password.
pub async fn put_user(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
    Body(body): Body<UserBody>,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    let users = admin.managed.users()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("a user needs a name"));
    }
    let password = match (&body.password, &body.password_hash) {
        // Argon2 takes tens of milliseconds: off the async workers.
        (Some(password), _) => {
            let password = password.clone();
            tokio::task::spawn_blocking(move || PasswordHash::new(&password))
                .await
                .map_err(|_| ApiError::internal("password hashing failed"))?
        }
        (None, Some(hash)) => PasswordHash::from_definitions(body.hashing_algorithm.as_deref(), hash)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid password_hash for hashing_algorithm {} (supported: {SHA256_ALGORITHM}, {ARGON2_ALGORITHM})",
                    body.hashing_algorithm.as_deref().unwrap_or(SHA256_ALGORITHM)
                ))
            })?,
        (None, None) => PasswordHash::none(),
    };
    let existing = users.user(&name);
    let mut record = UserRecord::new(password, body.tags.to_vec());
    if let Some(existing) = &existing {
        record.permissions = existing.permissions.clone();
        record.topic_permissions = existing.topic_permissions.clone();
    }
    users.put_user(&name, record);
    admin.managed.save_user(&name).await?;
    Ok(if existing.is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/users/{user}.
pub async fn delete_user(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    if !admin.managed.users()?.delete_user(&name) {
        return Err(ApiError::not_found());
    }
    admin.managed.save_user(&name).await?;
    close_connections_of(&admin, &name);
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the connections of a deleted user, as RabbitMQ does.
fn close_connections_of(admin: &Admin, user: &str) {
    let connections = admin.broker.connections();
    for connection in connections.snapshots() {
        if connection.user == user {
            connections.close(connection.id, &format!("user '{user}' is deleted"));
        }
    }
}

/// The body of a bulk delete.
#[derive(Debug, Deserialize)]
pub struct BulkDelete {
    users: Vec<String>,
}

/// POST /api/users/bulk-delete.
pub async fn bulk_delete_users(
    State(admin): State<Arc<Admin>>,
    caller: Caller,
    Body(body): Body<BulkDelete>,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    let users = admin.managed.users()?;
    for name in &body.users {
        if users.delete_user(name) {
            admin.managed.save_user(name).await?;
            close_connections_of(&admin, name);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/users/{user}/permissions.
pub async fn user_permissions(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    admin
        .managed
        .users()?
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(permissions_where(&admin, |u, _| u == name)?.into()))
}

/// GET /api/users/{user}/topic-permissions.
pub async fn user_topic_permissions(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    admin
        .managed
        .users()?
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(
        topic_permissions_where(&admin, |u, _| u == name)?.into(),
    ))
}

/// GET /api/permissions.
pub async fn permissions(
    State(admin): State<Arc<Admin>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    Ok(Json(permissions_where(&admin, |_, _| true)?.into()))
}

/// GET /api/permissions/{vhost}/{user}.
pub async fn permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    permissions_where(&admin, |u, v| u == user && v == vhost)?
        .pop()
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// The body of a permission.
#[derive(Debug, Deserialize)]
pub struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

/// PUT /api/permissions/{vhost}/{user}: 201 when created, 204 when replaced.
pub async fn put_permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<PermissionBody>,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    let users = admin.managed.users()?;
    admin
        .broker
        .vhost(&vhost)
        .map_err(|_| ApiError::bad_request(format!("vhost_not_found: {vhost}")))?;
    let record = users
        .user(&user)
        .ok_or_else(|| ApiError::bad_request(format!("user_not_found: {user}")))?;
    let compiled = VhostPermissions::new(&body.configure, &body.write, &body.read)
        .map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))?;
    let existed = record.permissions.contains_key(&vhost);
    users.set_permissions(&user, &vhost, compiled);
    admin.managed.save_user(&user).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/permissions/{vhost}/{user}.
pub async fn delete_permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    if !admin.managed.users()?.clear_permissions(&user, &vhost) {
        return Err(ApiError::not_found());
    }
    admin.managed.save_user(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/topic-permissions.
pub async fn topic_permissions(
    State(admin): State<Arc<Admin>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    Ok(Json(topic_permissions_where(&admin, |_, _| true)?.into()))
}

/// GET /api/topic-permissions/{vhost}/{user}.
pub async fn topic_permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_administrator()?;
    let found = topic_permissions_where(&admin, |u, v| u == user && v == vhost)?;
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(found.into()))
}

/// The body of a topic permission.
#[derive(Debug, Deserialize)]
pub struct TopicPermissionBody {
    exchange: String,
    write: String,
    read: String,
}

/// PUT /api/topic-permissions/{vhost}/{user}: sets the permission on the body's exchange
/// (replacing one on the same exchange).
pub async fn put_topic_permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body<TopicPermissionBody>,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    let users = admin.managed.users()?;
    admin
        .broker
        .vhost(&vhost)
        .map_err(|_| ApiError::bad_request(format!("vhost_not_found: {vhost}")))?;
    users
        .user(&user)
        .ok_or_else(|| ApiError::bad_request(format!("user_not_found: {user}")))?;
    let compiled = TopicPermission::new(&vhost, &body.exchange, &body.write, &body.read)
        .map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))?;
    let existed = users.clear_topic_permissions(&user, &vhost, Some(&body.exchange));
    users.add_topic_permission(&user, compiled);
    admin.managed.save_user(&user).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/topic-permissions/{vhost}/{user}: every topic permission of the user there.
pub async fn delete_topic_permission(
    State(admin): State<Arc<Admin>>,
    Path((vhost, user)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    caller.require_administrator()?;
    if !admin
        .managed
        .users()?
        .clear_topic_permissions(&user, &vhost, None)
    {
        return Err(ApiError::not_found());
    }
    admin.managed.save_user(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}
