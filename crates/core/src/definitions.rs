//! Durable definitions: the [`DefinitionStore`] trait through which virtual hosts record durable
//! exchanges, queues and bindings as they change, and the records a store hands back at
//! start-up. The core defines the trait; `junction-store` implements it, so dependencies point
//! from the store to the core and the core never touches a file.

use serde::{Deserialize, Serialize};

use crate::exchange::ExchangeSpec;
use crate::field::FieldTable;
use crate::queue::QueueSpec;

/// A binding as it is stored: names instead of live handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// The source exchange.
    pub source: String,
    /// The destination queue or exchange.
    pub destination: String,
    /// Whether the destination is an exchange (otherwise a queue).
    pub destination_is_exchange: bool,
    /// The binding key.
    pub routing_key: String,
    /// The binding arguments.
    pub arguments: FieldTable,
}

/// Everything a store holds for one virtual host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VhostDefinitions {
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeSpec>,
    /// Durable queues.
    pub queues: Vec<QueueSpec>,
    /// Bindings between durable resources.
    pub bindings: Vec<BindingRecord>,
}

/// A failure of the store; the operation that needed it fails with an internal error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("definition store: {0}")]
pub struct StoreFailure(pub String);

/// Where durable definitions are kept. Every call is a committed, durable change.
pub trait DefinitionStore: Send + Sync + 'static {
    /// Records a durable exchange.
    fn save_exchange(&self, vhost: &str, spec: &ExchangeSpec) -> Result<(), StoreFailure>;
    /// Forgets an exchange.
    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreFailure>;
    /// Records a durable queue.
    fn save_queue(&self, vhost: &str, spec: &QueueSpec) -> Result<(), StoreFailure>;
    /// Forgets a queue.
    fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), StoreFailure>;
    /// Records a binding between durable resources.
    fn save_binding(&self, vhost: &str, binding: &BindingRecord) -> Result<(), StoreFailure>;
    /// Forgets a binding.
    fn delete_binding(&self, vhost: &str, binding: &BindingRecord) -> Result<(), StoreFailure>;
    /// Everything recorded for `vhost`.
    fn load(&self, vhost: &str) -> Result<VhostDefinitions, StoreFailure>;
}

/// Records that protocol adapters keep across restarts, such as MQTT's retained messages and
/// persistent sessions: opaque bytes under a key in a named table. The core never reads them;
/// the adapter that wrote them owns their format. Every call is a committed, durable change.
pub trait AdapterStateStore: Send + Sync + 'static {
    /// Stores `value` under `key` in `table`, replacing what was there.
    fn put_state(&self, table: &str, key: &str, value: &[u8]) -> Result<(), StoreFailure>;
    /// Forgets `key` in `table` (not an error if it is absent).
    fn delete_state(&self, table: &str, key: &str) -> Result<(), StoreFailure>;
    /// Every record of `table`, in key order.
    fn load_state(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, StoreFailure>;
}
