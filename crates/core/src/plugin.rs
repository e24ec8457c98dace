//! What a plugin gets from the broker beside the traits it implements: the [`PluginContext`]
//! of an exchange (its vhost, a runtime for timers and tasks, durable state, and a handle that
//! publishes through the vhost's pipeline), and the [`StateStore`] behind that durable state.
//!
//! The API's version is [`API_VERSION`]; docs/plugins.md says what may change within it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::{CoreError, CoreResult};
use crate::exchange::{ExchangeType, ExchangeTypeRegistry};
use crate::message::{Message, Properties};
use crate::persistence::{Durability, NotStored, OnDurable};
use crate::publish::{Publication, Published};
use crate::vhost::VirtualHost;

/// The version of the plugin API in this crate. Within one version, additions are allowed
/// (new trait methods with defaults, new variants of `#[non_exhaustive]` enums, new
/// constructors); anything that would break a plugin that compiled against it bumps it.
pub const API_VERSION: u32 = 2;

/// Why durable plugin state could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin state: {0}")]
pub struct StateError(pub String);

/// A durable key-value store for plugins' state, in the data directory. Keys are ordered
/// bytes within a named table. Requests apply in the order they are made; a completion runs
/// once its request (and every one before it) is on disk, or has failed to get there. The
/// server implements it on a crash-safe file (`plugin-state.redb`); an in-memory broker uses
/// [`MemoryState`].
pub trait StateStore: Send + Sync + 'static {
    /// Stores `value` under `key` in `table`, replacing what was there. [`NotStored`] when
    /// the store cannot write now (then `on_durable` is dropped unrun).
    fn put(
        &self,
        table: &str,
        key: &[u8],
        value: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<(), NotStored>;

    /// Forgets `key` in `table` (not an error if it is absent).
    fn delete(&self, table: &str, key: &[u8], on_durable: Option<OnDurable>);

    /// Forgets every key of `table`.
    fn clear(&self, table: &str, on_durable: Option<OnDurable>);

    /// The value under `key`, as of every request made so far. It may read the disk: call it
    /// from a blocking task (`tokio::task::spawn_blocking`), not from a runtime thread.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Every key of `table`, in order (for recovery at start-up). Blocking, as [`Self::get`].
    fn keys(&self, table: &str) -> Result<Vec<Vec<u8>>, StateError>;
}

/// A [`StateStore`] in memory, for a broker without a data directory: nothing survives a
/// restart, and completions run at once.
#[derive(Default)]
pub struct MemoryState {
    tables: Mutex<HashMap<String, Table>>,
}

/// One table of a [`MemoryState`]: values by key, in key order.
type Table = BTreeMap<Vec<u8>, Vec<u8>>;

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn done(on_durable: Option<OnDurable>) {
    if let Some(on_durable) = on_durable {
        on_durable(Durability::OnDisk);
    }
}

impl StateStore for MemoryState {
    fn put(
        &self,
        table: &str,
        key: &[u8],
        value: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<(), NotStored> {
        self.tables
            .lock()
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_vec(), value);
        done(on_durable);
        Ok(())
    }

    fn delete(&self, table: &str, key: &[u8], on_durable: Option<OnDurable>) {
        if let Some(entries) = self.tables.lock().get_mut(table) {
            entries.remove(key);
        }
        done(on_durable);
    }

    fn clear(&self, table: &str, on_durable: Option<OnDurable>) {
        self.tables.lock().remove(table);
        done(on_durable);
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tables
            .lock()
            .get(table)
            .and_then(|entries| entries.get(key).cloned()))
    }

    fn keys(&self, table: &str) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(self
            .tables
            .lock()
            .get(table)
            .map(|entries| entries.keys().cloned().collect())
            .unwrap_or_default())
    }
}

/// One table of a [`StateStore`]: the durable state of one exchange.
#[derive(Clone)]
pub struct StateTable {
    store: Arc<dyn StateStore>,
    name: Arc<str>,
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateTable({})", self.name)
    }
}

impl StateTable {
    /// The table called `name` in `store`.
    pub fn new(store: Arc<dyn StateStore>, name: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            name: name.into(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores `value` under `key` ([`StateStore::put`]).
    pub fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<(), NotStored> {
        self.store.put(&self.name, key, value, on_durable)
    }

    /// Forgets `key` ([`StateStore::delete`]).
    pub fn delete(&self, key: &[u8], on_durable: Option<OnDurable>) {
        self.store.delete(&self.name, key, on_durable);
    }

    /// Forgets every key ([`StateStore::clear`]).
    pub fn clear(&self, on_durable: Option<OnDurable>) {
        self.store.clear(&self.name, on_durable);
    }

    /// The value under `key`; blocking ([`StateStore::get`]).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.store.get(&self.name, key)
    }

    /// Every key, in order; blocking ([`StateStore::keys`]).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, StateError> {
        self.store.keys(&self.name)
    }
}

/// What an exchange's handler may use of the broker: made by the vhost for each exchange and
/// handed to [`ExchangeType::create`].
#[derive(Clone)]
pub struct PluginContext {
    vhost: Weak<VirtualHost>,
    vhost_name: Arc<str>,
    exchange: Arc<str>,
    state: StateTable,
    registry: Arc<ExchangeTypeRegistry>,
    runtime: Option<tokio::runtime::Handle>,
    recovery: bool,
}

impl std::fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("vhost", &self.vhost_name)
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl PluginContext {
    /// The context of exchange `exchange` of type `kind` in `vhost`, made at start-up for a
    /// stored exchange when `recovery`; its state is a table of `store` named after the three
    /// (each name length-prefixed, since names may hold any character).
    pub(crate) fn new(
        vhost: &VirtualHost,
        exchange: &str,
        kind: &str,
        store: Arc<dyn StateStore>,
        registry: Arc<ExchangeTypeRegistry>,
        recovery: bool,
    ) -> Self {
        let table = format!(
            "{}:{kind}/{}:{}/{}:{exchange}",
            kind.len(),
            vhost.name.len(),
            vhost.name,
            exchange.len()
        );
        Self {
            vhost: vhost.me(),
            vhost_name: vhost.name.as_str().into(),
            exchange: exchange.into(),
            state: StateTable::new(store, table),
            registry,
            runtime: tokio::runtime::Handle::try_current().ok(),
            recovery,
        }
    }

    /// Whether the exchange is being recreated from the definitions store at start-up (its
    /// state is its own from before), rather than declared by a client (any state under its
    /// name is a leftover of an earlier exchange, which a handler clears in `create`, before
    /// the exchange can be published to).
    pub fn is_recovery(&self) -> bool {
        self.recovery
    }

    /// The virtual host's name.
    pub fn vhost(&self) -> &str {
        &self.vhost_name
    }

    /// The exchange's name.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The exchange's durable state: a table of its own in the broker's [`StateStore`],
    /// which outlives a restart when the broker has a data directory.
    pub fn state(&self) -> &StateTable {
        &self.state
    }

    /// The exchange type registered as `name` (a wrapping type, such as the delayed-message
    /// exchange, routes through another type's handler).
    pub fn exchange_type(&self, name: &str) -> Option<Arc<dyn ExchangeType>> {
        self.registry.get(name)
    }

    /// Runs `task` on the broker's runtime, where it may wait on timers (`tokio::time`). The
    /// returned handle aborts it. None when the broker has no runtime (a unit test that
    /// builds a vhost outside one).
    pub fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => Some(runtime.spawn(task)),
            None => {
                tracing::warn!(exchange = %self.exchange, "no runtime to run a plugin task on");
                None
            }
        }
    }

    /// Publishes `message` to the exchange called `exchange` in this vhost through the normal
    /// pipeline, as a client's publish would go. `on_durable` runs once the message is in
    /// the message store when it was written there ([`Published::stored`] says whether).
    /// Fails when the vhost or the exchange no longer exists.
    pub async fn publish(
        &self,
        exchange: &str,
        message: Message,
        on_durable: Option<OnDurable>,
    ) -> CoreResult<Published> {
        let vhost = self
            .vhost
            .upgrade()
            .ok_or_else(|| CoreError::not_found(format!("no vhost '{}'", self.vhost_name)))?;
        let target = vhost.exchange(exchange)?;
        let mut once = on_durable;
        let mut make = move || -> OnDurable { once.take().unwrap_or_else(|| Box::new(|_| {})) };
        Ok(vhost
            .publish(Publication::new(&target, message).on_durable(&mut make))
            .await)
    }
}

/// The first byte of an encoded message ([`encode_message`]), so the format can change.
const MESSAGE_FORMAT: u8 = 1;

/// Encodes a message (exchange, routing key, properties and body) into bytes a plugin can keep
/// in its [`StateTable`]; [`decode_message`] reads it back.
pub fn encode_message(message: &Message) -> Vec<u8> {
    let properties = serde_json::to_vec(&message.properties).unwrap_or_default();
    let mut out = Vec::with_capacity(
        1 + 12 + message.exchange.len() + message.routing_key.len() + properties.len(),
    );
    out.push(MESSAGE_FORMAT);
    for part in [
        message.exchange.as_bytes(),
        message.routing_key.as_bytes(),
        &properties,
    ] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&message.body);
    out
}

/// Reads a message [`encode_message`] wrote; None when the bytes are not one.
pub fn decode_message(bytes: &[u8]) -> Option<Message> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != MESSAGE_FORMAT {
        return None;
    }
    let mut part = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(value)
    };
    let exchange = std::str::from_utf8(part()?).ok()?.to_owned();
    let routing_key = std::str::from_utf8(part()?).ok()?.to_owned();
    let properties: Properties = serde_json::from_slice(part()?).ok()?;
    Some(Message::new(
        exchange,
        routing_key,
        properties,
        bytes::Bytes::copy_from_slice(rest),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{FieldTable, FieldValue};

    #[test]
    fn a_message_reads_back_as_it_was_encoded() {
        let mut headers = FieldTable::new();
        headers.insert("x-delay", FieldValue::I64(1500));
        let message = Message::new(
            "delayed",
            "a.key",
            Properties {
                headers: Some(headers),
                delivery_mode: Some(2),
                correlation_id: Some("c-1".into()),
                ..Default::default()
            },
            bytes::Bytes::from_static(b"body \x00\xff"),
        );
        let decoded = decode_message(&encode_message(&message)).expect("decodes");
        assert_eq!(decoded, message);
    }

    #[test]
    fn bytes_that_are_not_a_message_decode_to_none() {
        assert!(decode_message(&[]).is_none());
        assert!(decode_message(&[9, 0, 0]).is_none());
        assert!(decode_message(&[MESSAGE_FORMAT, 0, 0, 0, 200, b'x']).is_none());
    }
}
