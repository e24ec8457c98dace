//! Plugins' durable state: a [`StateStore`] on redb, in `<data dir>/plugin-state.redb`, one
//! redb table per plugin table, keys and values as bytes.
//!
//! One writer thread applies requests in the order they are made: it takes every request
//! waiting, applies them in one transaction and commits it durably (one fsync for the batch:
//! group commit), then runs their completions in order. Reads go straight to the database
//! in a read transaction of their own (redb readers never wait for the writer), so they see
//! what has been committed: a request whose completion has run.
//!
//! A failed commit fails every completion of its batch (a held message's publisher is
//! refused); the next batch tries again, so the store works again as soon as the disk has
//! room. redb commits atomically, so the file keeps the last committed state. Put is refused
//! ([`NotStored`]) only once the writer has stopped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use junction_core::persistence::{Durability, NotStored, OnDurable};
use junction_core::plugin::{StateError, StateStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use crate::OpenError;

/// The file name of the plugin state database inside the data directory.
pub const FILE_NAME: &str = "plugin-state.redb";

/// The page cache redb may keep in memory: state is read when it is needed, not held.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Requests one commit takes at most, so completions are not held back by a flood.
const MAX_BATCH: usize = 16 * 1024;

enum Change {
    Put {
        table: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: String,
        key: Vec<u8>,
    },
    Clear {
        table: String,
    },
}

struct Request {
    change: Change,
    on_durable: Option<OnDurable>,
}

/// Plugins' durable state in `<data dir>/plugin-state.redb`.
pub struct PluginStateFile {
    db: Arc<Database>,
    /// None once dropping: the writer sees the channel close, finishes and is joined.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Stops the writer after it has applied every request made (so the file can be opened again
/// as soon as the store is gone).
impl Drop for PluginStateFile {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

impl PluginStateFile {
    /// Opens (or creates) the store in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        let path = data_dir.join(FILE_NAME);
        let failed = |message: String| OpenError::Failed {
            path: path.clone(),
            message,
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| match error {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    OpenError::InUse(data_dir.to_path_buf())
                }
                error => failed(error.to_string()),
            })?;
        let db = Arc::new(db);
        let (requests, receiver) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("plugin-state".into())
            .spawn(move || writer.run(receiver))
            .map_err(|error| failed(error.to_string()))?;
        Ok(Self {
            db,
            requests: Some(requests),
            writer: Some(writer),
        })
    }

    fn send(&self, change: Change, on_durable: Option<OnDurable>) -> Result<(), NotStored> {
        let requests = self.requests.as_ref().ok_or(NotStored)?;
        requests
            .send(Request { change, on_durable })
            .map_err(|_| NotStored)
    }
}

fn read_error(error: impl std::fmt::Display) -> StateError {
    StateError(error.to_string())
}

impl StateStore for PluginStateFile {
    fn put(
        &self,
        table: &str,
        key: &[u8],
        value: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<(), NotStored> {
        self.send(
            Change::Put {
                table: table.to_owned(),
                key: key.to_vec(),
                value,
            },
            on_durable,
        )
    }

    fn delete(&self, table: &str, key: &[u8], on_durable: Option<OnDurable>) {
        let change = Change::Delete {
            table: table.to_owned(),
            key: key.to_vec(),
        };
        if self.send(change, on_durable).is_err() {
            tracing::warn!(table, "plugin state writer stopped; a delete is lost");
        }
    }

    fn clear(&self, table: &str, on_durable: Option<OnDurable>) {
        let change = Change::Clear {
            table: table.to_owned(),
        };
        if self.send(change, on_durable).is_err() {
            tracing::warn!(table, "plugin state writer stopped; a clear is lost");
        }
    }

    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let read = self.db.begin_read().map_err(read_error)?;
        let table = match read.open_table(table(name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(read_error(error)),
        };
        Ok(table
            .get(key)
            .map_err(read_error)?
            .map(|value| value.value().to_vec()))
    }

    fn keys(&self, name: &str) -> Result<Vec<Vec<u8>>, StateError> {
        let read = self.db.begin_read().map_err(read_error)?;
        let table = match read.open_table(table(name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(read_error(error)),
        };
        let mut keys = Vec::new();
        for entry in table.iter().map_err(read_error)? {
            let (key, _) = entry.map_err(read_error)?;
            keys.push(key.value().to_vec());
        }
        Ok(keys)
    }
}

/// The writer thread: batches, commits, completes.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
}

impl Writer {
    fn run(self, receiver: mpsc::Receiver<Request>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let durability = match self.commit(&batch) {
                Ok(()) => Durability::OnDisk,
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error, "plugin state not written");
                    Durability::Failed
                }
            };
            for request in batch {
                if let Some(on_durable) = request.on_durable {
                    on_durable(durability);
                }
            }
        }
    }

    fn commit(&self, batch: &[Request]) -> Result<(), redb::Error> {
        let write = self.db.begin_write()?;
        for request in batch {
            match &request.change {
                Change::Put {
                    table: name,
                    key,
                    value,
                } => {
                    write
                        .open_table(table(name))?
                        .insert(key.as_slice(), value.as_slice())?;
                }
                Change::Delete { table: name, key } => {
                    write.open_table(table(name))?.remove(key.as_slice())?;
                }
                Change::Clear { table: name } => {
                    write.delete_table(table(name))?;
                }
            }
        }
        write.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "junction-plugin-state-test-{}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        dir
    }

    fn wait(store: &PluginStateFile) -> Durability {
        let (tx, rx) = mpsc::channel();
        store.delete(
            "sync",
            b"",
            Some(Box::new(move |durability| {
                let _ = tx.send(durability);
            })),
        );
        rx.recv().expect("completion")
    }

    #[test]
    fn what_is_put_reads_back_after_a_reopen_and_deletes_and_clears_stay_done() {
        let dir = dir("reopen");
        {
            let store = PluginStateFile::open(&dir).expect("open");
            for n in 0u32..100 {
                store
                    .put("a", &n.to_be_bytes(), vec![n as u8; 3], None)
                    .expect("put");
            }
            store.put("b", b"k", b"v".to_vec(), None).expect("put");
            store.delete("a", &7u32.to_be_bytes(), None);
            store.clear("b", None);
            assert_eq!(wait(&store), Durability::OnDisk);
        }
        let store = PluginStateFile::open(&dir).expect("reopen");
        let keys = store.keys("a").expect("keys");
        assert_eq!(keys.len(), 99);
        assert_eq!(keys[0], 0u32.to_be_bytes());
        assert_eq!(
            store.get("a", &5u32.to_be_bytes()).expect("get"),
            Some(vec![5; 3])
        );
        assert_eq!(store.get("a", &7u32.to_be_bytes()).expect("get"), None);
        assert!(store.keys("b").expect("keys").is_empty());
        assert!(store.keys("never").expect("keys").is_empty());
    }

    #[test]
    fn a_second_broker_cannot_open_the_same_state() {
        let dir = dir("in-use");
        let _first = PluginStateFile::open(&dir).expect("open");
        assert!(matches!(
            PluginStateFile::open(&dir),
            Err(OpenError::InUse(_))
        ));
    }
}
