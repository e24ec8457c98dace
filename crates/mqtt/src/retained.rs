//! Retained messages: the last retained publication per topic and vhost, handed to every new
//! matching subscription. Kept in memory for reads and written through to the adapter state
//! store (table `mqtt.retained`, key `vhost NUL topic`, value the QoS byte then the payload),
//! so they survive a restart.
//!
//! A subscription scans the vhost's retained topics and matches each against its filter: cost
//! grows with the number of retained topics, which is fine for the thousands a deployment
//! keeps; a topic trie would be the next step for millions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use junction_core::AdapterStateStore;
use parking_lot::RwLock;

use crate::codec::QoS;
use crate::topic;

const TABLE: &str = "mqtt.retained";

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// The QoS it was published with.
    pub qos: QoS,
    /// Its payload.
    pub payload: Bytes,
}

/// Retained messages of every vhost.
pub struct RetainedStore {
    by_vhost: DashMap<String, Arc<RwLock<BTreeMap<String, Retained>>>>,
    store: Option<Arc<dyn AdapterStateStore>>,
}

impl RetainedStore {
    /// Loads what `store` kept (an unreadable record is logged and skipped).
    pub fn load(store: Option<Arc<dyn AdapterStateStore>>) -> Self {
        let this = Self {
            by_vhost: DashMap::new(),
            store,
        };
        let records = match &this.store {
            Some(store) => store.load_state(TABLE).unwrap_or_else(|error| {
                tracing::error!(%error, "cannot load retained messages");
                Vec::new()
            }),
            None => Vec::new(),
        };
        for (key, value) in records {
            let parsed = key.split_once('\0').zip(
                value
                    .split_first()
                    .and_then(|(qos, payload)| Some((QoS::from_u8(*qos)?, payload))),
            );
            match parsed {
                Some(((vhost, topic), (qos, payload))) => {
                    this.vhost(vhost).write().insert(
                        topic.to_owned(),
                        Retained {
                            qos,
                            payload: Bytes::copy_from_slice(payload),
                        },
                    );
                }
                None => {
                    tracing::error!(key = %key.replace('\0', " "), "unreadable retained message skipped")
                }
            }
        }
        this
    }

    fn vhost(&self, vhost: &str) -> Arc<RwLock<BTreeMap<String, Retained>>> {
        if let Some(map) = self.by_vhost.get(vhost) {
            return map.clone();
        }
        self.by_vhost.entry(vhost.to_owned()).or_default().clone()
    }

    /// Retains `payload` for `topic`, or forgets the topic's retained message when the payload
    /// is empty.
    pub fn set(&self, vhost: &str, topic: &str, qos: QoS, payload: Bytes) {
        let key = format!("{vhost}\0{topic}");
        let map = self.vhost(vhost);
        if payload.is_empty() {
            map.write().remove(topic);
            if let Some(store) = &self.store
                && let Err(error) = store.delete_state(TABLE, &key)
            {
                tracing::error!(%error, topic, "cannot forget retained message");
            }
            return;
        }
        if let Some(store) = &self.store {
            let mut value = Vec::with_capacity(1 + payload.len());
            value.push(qos as u8);
            value.extend_from_slice(&payload);
            if let Err(error) = store.put_state(TABLE, &key, &value) {
                tracing::error!(%error, topic, "cannot store retained message");
            }
        }
        map.write()
            .insert(topic.to_owned(), Retained { qos, payload });
    }

    /// The retained messages whose topics match `filter`.
    pub fn matching(&self, vhost: &str, filter: &str) -> Vec<(String, Retained)> {
        let Some(map) = self.by_vhost.get(vhost).map(|m| m.clone()) else {
            return Vec::new();
        };
        map.read()
            .iter()
            .filter(|(topic, _)| topic::matches(filter, topic))
            .map(|(topic, retained)| (topic.clone(), retained.clone()))
            .collect()
    }
}
