//! The definitions store: a [`DefinitionStore`] on redb. Records are JSON (small, readable with
//! any redb tool, and the format RabbitMQ's definitions export uses), keyed by vhost and name.
//!
//! A failed write (a full disk) fails the operation that needed it, and redb then refuses
//! every later transaction until the database is reopened; so after a failure the store
//! closes the database and opens it again on the next operation, which works again as soon as
//! the disk has room. redb commits atomically, so a failed transaction leaves the last
//! committed state.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use junction_core::definitions::{
    AdapterStateStore, BindingRecord, DefinitionStore, StoreFailure, VhostDefinitions,
};
use junction_core::field::MAX_DEPTH;
use junction_core::{ExchangeSpec, FieldTable, QueueSpec};
use redb::{Database, DatabaseError, ReadableDatabase, TableDefinition};

const EXCHANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("exchanges");
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bindings");
/// Adapters' records ([`AdapterStateStore`]), keyed by table name and key.
const ADAPTER_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("adapter_state");

/// The file name of the definitions database inside the data directory.
pub const FILE_NAME: &str = "definitions.redb";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (another broker) has the data directory open.
    #[error("data directory {0} is in use by another junction process")]
    InUse(PathBuf),
    /// The file could not be opened or is damaged.
    #[error("cannot open {path}: {message}")]
    Failed {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Durable definitions in `<data dir>/definitions.redb`.
pub struct Definitions {
    path: PathBuf,
    /// None after a failure until it is reopened.
    db: Mutex<Option<Database>>,
}

/// The key of a named resource: vhost and name, separated by a NUL (which no name contains).
fn key(vhost: &str, name: &str) -> String {
    format!("{vhost}\0{name}")
}

/// The key of a binding: every field that makes a binding distinct.
fn binding_key(vhost: &str, record: &BindingRecord) -> Result<String, StoreFailure> {
    let arguments = serde_json::to_string(&record.arguments).map_err(failure)?;
    Ok(format!(
        "{vhost}\0{}\0{}\0{}\0{}\0{arguments}",
        record.source,
        if record.destination_is_exchange {
            "e"
        } else {
            "q"
        },
        record.destination,
        record.routing_key
    ))
}

fn failure(error: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(error.to_string())
}

/// Refuses arguments nested deeper than the broker accepts: the adapters never let them in,
/// and a record deeper than that might not read back (serde_json stops at 128 levels), so the
/// definition would vanish at the next start instead of failing now.
fn readable(arguments: &FieldTable) -> Result<(), StoreFailure> {
    let depth = arguments.depth();
    if depth > MAX_DEPTH {
        return Err(StoreFailure(format!(
            "arguments nested {depth} levels deep, more than the {MAX_DEPTH} allowed"
        )));
    }
    Ok(())
}

impl Definitions {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        let path = data_dir.join(FILE_NAME);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenError::InUse(data_dir.to_path_buf()));
            }
            Err(error) => {
                return Err(OpenError::Failed {
                    path,
                    message: error.to_string(),
                });
            }
        };
        let store = Self {
            path: path.clone(),
            db: Mutex::new(Some(db)),
        };
        store.create_tables().map_err(|error| OpenError::Failed {
            path,
            message: error.to_string(),
        })?;
        Ok(store)
    }

    /// Runs `operation` on the database, reopening it first if an earlier operation failed;
    /// a failure closes it so that the next operation reopens it.
    fn with_db<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, StoreFailure>,
    ) -> Result<T, StoreFailure> {
        let mut slot: MutexGuard<'_, Option<Database>> = match self.db.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            let db = Database::create(&self.path).map_err(failure)?;
            tracing::info!(file = %self.path.display(), "definitions store reopened");
            *slot = Some(db);
        }
        let Some(db) = slot.as_ref() else {
            return Err(StoreFailure("definitions store is closed".into()));
        };
        let outcome = operation(db);
        if let Err(error) = &outcome {
            tracing::error!(%error, "definitions store operation failed; it reopens on the next one");
            *slot = None;
        }
        outcome
    }

    fn create_tables(&self) -> Result<(), StoreFailure> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(failure)?;
            for table in [EXCHANGES, QUEUES, BINDINGS, ADAPTER_STATE] {
                tx.open_table(table).map_err(failure)?;
            }
            tx.commit().map_err(failure)
        })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreFailure> {
        let bytes = serde_json::to_vec(value).map_err(failure)?;
        self.put_bytes(table, key, &bytes)
    }

    fn put_bytes(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StoreFailure> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(failure)?;
            tx.open_table(table)
                .map_err(failure)?
                .insert(key, bytes)
                .map_err(failure)?;
            tx.commit().map_err(failure)
        })
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreFailure> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(failure)?;
            tx.open_table(table)
                .map_err(failure)?
                .remove(key)
                .map_err(failure)?;
            tx.commit().map_err(failure)
        })
    }

    /// Every value stored under `vhost` in `table`, in key order.
    fn values<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        vhost: &str,
    ) -> Result<Vec<T>, StoreFailure> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(failure)?;
            let table = tx.open_table(table).map_err(failure)?;
            let prefix = format!("{vhost}\0");
            let mut values = Vec::new();
            for entry in table.range(prefix.as_str()..).map_err(failure)? {
                let (key, value) = entry.map_err(failure)?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                match serde_json::from_slice(value.value()) {
                    Ok(parsed) => values.push(parsed),
                    Err(error) => {
                        tracing::error!(key = %key.value().replace('\0', "/"), %error, "unreadable definition record skipped");
                    }
                }
            }
            Ok(values)
        })
    }
}

impl DefinitionStore for Definitions {
    fn save_exchange(&self, vhost: &str, spec: &ExchangeSpec) -> Result<(), StoreFailure> {
        readable(&spec.arguments)?;
        self.put(EXCHANGES, &key(vhost, &spec.name), spec)
    }

    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreFailure> {
        self.remove(EXCHANGES, &key(vhost, name))
    }

    fn save_queue(&self, vhost: &str, spec: &QueueSpec) -> Result<(), StoreFailure> {
        readable(&spec.arguments)?;
        self.put(QUEUES, &key(vhost, &spec.name), spec)
    }

    fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), StoreFailure> {
        self.remove(QUEUES, &key(vhost, name))
    }

    fn save_binding(&self, vhost: &str, binding: &BindingRecord) -> Result<(), StoreFailure> {
        readable(&binding.arguments)?;
        self.put(BINDINGS, &binding_key(vhost, binding)?, binding)
    }

    fn delete_binding(&self, vhost: &str, binding: &BindingRecord) -> Result<(), StoreFailure> {
        self.remove(BINDINGS, &binding_key(vhost, binding)?)
    }

    fn load(&self, vhost: &str) -> Result<VhostDefinitions, StoreFailure> {
        Ok(VhostDefinitions {
            exchanges: self.values(EXCHANGES, vhost)?,
            queues: self.values(QUEUES, vhost)?,
            bindings: self.values(BINDINGS, vhost)?,
        })
    }
}

impl AdapterStateStore for Definitions {
    fn put_state(&self, table: &str, name: &str, value: &[u8]) -> Result<(), StoreFailure> {
        self.put_bytes(ADAPTER_STATE, &key(table, name), value)
    }

    fn delete_state(&self, table: &str, name: &str) -> Result<(), StoreFailure> {
        self.remove(ADAPTER_STATE, &key(table, name))
    }

    fn load_state(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, StoreFailure> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(failure)?;
            let records = tx.open_table(ADAPTER_STATE).map_err(failure)?;
            let prefix = format!("{table}\0");
            let mut values = Vec::new();
            for entry in records.range(prefix.as_str()..).map_err(failure)? {
                let (stored_key, value) = entry.map_err(failure)?;
                let Some(name) = stored_key.value().strip_prefix(&prefix) else {
                    break;
                };
                values.push((name.to_owned(), value.value().to_vec()));
            }
            Ok(values)
        })
    }
}

#[cfg(test)]
mod tests {
    use junction_core::{FieldTable, FieldValue};

    use super::*;

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "junction-store-test-{}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn definitions_survive_reopening_and_are_kept_per_vhost() {
        let dir = dir("reopen");
        let mut arguments = FieldTable::new();
        arguments.insert("x-match", FieldValue::string("any"));
        let binding = BindingRecord {
            source: "events".into(),
            destination: "audit".into(),
            destination_is_exchange: false,
            routing_key: "a.#".into(),
            arguments,
        };
        {
            let store = Definitions::open(&dir).expect("open");
            let exchange = {
                let mut spec = ExchangeSpec::default();
                spec.name = "events".into();
                spec.kind = "topic".into();
                spec.durable = true;
                spec
            };
            store.save_exchange("/", &exchange).expect("save");
            store
                .save_queue(
                    "/",
                    &QueueSpec {
                        name: "audit".into(),
                        durable: true,
                        ..Default::default()
                    },
                )
                .expect("save");
            store.save_binding("/", &binding).expect("save");
            store
                .save_queue(
                    "other",
                    &QueueSpec {
                        name: "elsewhere".into(),
                        durable: true,
                        ..Default::default()
                    },
                )
                .expect("save");
        }
        let store = Definitions::open(&dir).expect("reopen");
        let loaded = store.load("/").expect("load");
        assert_eq!(loaded.exchanges.len(), 1);
        assert_eq!(loaded.queues.len(), 1);
        assert_eq!(loaded.queues[0].name, "audit");
        assert_eq!(loaded.bindings, vec![binding.clone()]);
        store.delete_binding("/", &binding).expect("delete");
        store.delete_queue("/", "audit").expect("delete");
        let loaded = store.load("/").expect("load");
        assert!(loaded.queues.is_empty() && loaded.bindings.is_empty());
        assert_eq!(store.load("other").expect("load").queues.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn adapter_state_is_kept_per_table_and_survives_reopening() {
        let dir = dir("adapter-state");
        {
            let store = Definitions::open(&dir).expect("open");
            store
                .put_state("mqtt.retained", "/\0a/b", b"one")
                .expect("put");
            store
                .put_state("mqtt.retained", "/\0a/c", b"two")
                .expect("put");
            store
                .put_state("mqtt.sessions", "/\0dev", b"s")
                .expect("put");
            store
                .put_state("mqtt.retained", "/\0a/c", b"three")
                .expect("replace");
        }
        let store = Definitions::open(&dir).expect("reopen");
        assert_eq!(
            store.load_state("mqtt.retained").expect("load"),
            vec![
                ("/\0a/b".to_owned(), b"one".to_vec()),
                ("/\0a/c".to_owned(), b"three".to_vec())
            ]
        );
        store
            .delete_state("mqtt.retained", "/\0a/b")
            .expect("delete");
        store
            .delete_state("mqtt.retained", "absent")
            .expect("delete absent");
        assert_eq!(store.load_state("mqtt.retained").expect("load").len(), 1);
        assert_eq!(store.load_state("mqtt.sessions").expect("load").len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Arguments nesting tables and arrays, alternating, `depth` levels deep.
    fn nested_arguments(depth: usize) -> FieldTable {
        let mut value = FieldValue::string("leaf");
        for level in (2..=depth).rev() {
            value = if level % 2 == 0 {
                FieldValue::Table(FieldTable::from_iter([("k".to_owned(), value)]))
            } else {
                FieldValue::Array(vec![FieldValue::Bool(true), value])
            };
        }
        FieldTable::from_iter([("x-deep".to_owned(), value)])
    }

    #[test]
    fn definitions_at_the_maximum_depth_read_back_and_deeper_ones_are_refused() {
        let dir = dir("deep");
        let arguments = nested_arguments(MAX_DEPTH);
        assert_eq!(arguments.depth(), MAX_DEPTH);
        let exchange = {
            let mut spec = ExchangeSpec::default();
            spec.name = "deep-x".into();
            spec.kind = "headers".into();
            spec.durable = true;
            spec.arguments = arguments.clone();
            spec
        };
        let queue = QueueSpec {
            name: "deep-q".into(),
            durable: true,
            arguments: arguments.clone(),
            ..Default::default()
        };
        let binding = BindingRecord {
            source: "deep-x".into(),
            destination: "deep-q".into(),
            destination_is_exchange: false,
            routing_key: String::new(),
            arguments: arguments.clone(),
        };
        {
            let store = Definitions::open(&dir).expect("open");
            store.save_exchange("/", &exchange).expect("save exchange");
            store.save_queue("/", &queue).expect("save queue");
            store.save_binding("/", &binding).expect("save binding");
            let deeper = QueueSpec {
                name: "deeper".into(),
                durable: true,
                arguments: nested_arguments(MAX_DEPTH + 1),
                ..Default::default()
            };
            assert!(store.save_queue("/", &deeper).is_err());
        }
        let store = Definitions::open(&dir).expect("reopen");
        let loaded = store.load("/").expect("load");
        assert_eq!(loaded.exchanges, vec![exchange]);
        assert_eq!(loaded.queues.len(), 1);
        assert_eq!(loaded.queues[0].arguments, arguments);
        assert_eq!(loaded.bindings, vec![binding]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = dir("lock");
        let _first = Definitions::open(&dir).expect("open");
        assert!(matches!(Definitions::open(&dir), Err(OpenError::InUse(_))));
        let _ = std::fs::remove_dir_all(dir);
    }
}
