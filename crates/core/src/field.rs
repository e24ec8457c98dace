//! A typed field table: the protocol-neutral form of message headers and of the arguments of
//! declarations and bindings. It can hold everything an AMQP field table holds, so an AMQP client
//! sees exactly what it sent; MQTT and STOMP adapters mostly use strings.
//!
//! Tables and arrays nest at most [`MAX_DEPTH`] levels. Adapters refuse deeper input before
//! they decode it, so every table the broker holds can be walked, dropped and stored (the store
//! reads it back) without running out of stack; [`FieldTable::depth`] measures without
//! recursion.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How deeply field tables and arrays may nest, counting the outermost table (a message's
/// headers, a declaration's arguments) as level 1: a table inside the headers is level 2.
///
/// Generous for real clients (RabbitMQ's own `x-death` headers reach level 3), and small enough
/// that the store's JSON records, two JSON levels per field level, stay far inside serde_json's
/// limit of 128 levels when read back.
pub const MAX_DEPTH: usize = 32;

/// One value in a [`FieldTable`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FieldValue {
    /// A boolean.
    Bool(bool),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A decimal: `value / 10^scale`.
    Decimal {
        /// The number of decimal places.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// A (long) string: bytes that are usually UTF-8.
    String(Bytes),
    /// An array of values.
    Array(Vec<FieldValue>),
    /// A POSIX timestamp in seconds.
    Timestamp(u64),
    /// A nested table.
    Table(FieldTable),
    /// Raw bytes (RabbitMQ's byte array type).
    Bytes(Bytes),
    /// No value.
    Void,
}

impl FieldValue {
    /// The value as a string slice when it is a UTF-8 string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer when it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as a boolean when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string value from text.
    pub fn string(s: impl Into<String>) -> Self {
        FieldValue::String(Bytes::from(s.into()))
    }
}

/// A table of named [`FieldValue`]s, ordered by name so that equal tables compare equal.
///
/// Shared on clone and copied on the first write: an adapter that stamps the same headers on
/// every message (MQTT's `x-mqtt-publish-qos`) keeps one table for all of them instead of
/// allocating one per message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(Arc<BTreeMap<String, FieldValue>>);

impl Serialize for FieldTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FieldTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(|entries| Self(Arc::new(entries)))
    }
}

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.get(key)
    }

    /// Inserts `value` under `key`, replacing any previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        Arc::make_mut(&mut self.0).insert(key.into(), value);
    }

    /// Takes the value under `key` out of the table, if any.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        if !self.0.contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.0).remove(key)
    }

    /// Whether the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &FieldValue)> {
        self.0.iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many levels of tables and arrays this table holds, itself included (a flat table is
    /// 1). Walks with an explicit stack, so any depth is measured safely.
    pub fn depth(&self) -> usize {
        let mut deepest = 1;
        let mut pending: Vec<(&FieldValue, usize)> = self.0.values().map(|v| (v, 2)).collect();
        while let Some((value, level)) = pending.pop() {
            match value {
                FieldValue::Table(table) => {
                    deepest = deepest.max(level);
                    pending.extend(table.0.values().map(|v| (v, level + 1)));
                }
                FieldValue::Array(values) => {
                    deepest = deepest.max(level);
                    pending.extend(values.iter().map(|v| (v, level + 1)));
                }
                _ => {}
            }
        }
        deepest
    }
}

impl FromIterator<(String, FieldValue)> for FieldTable {
    fn from_iter<T: IntoIterator<Item = (String, FieldValue)>>(iter: T) -> Self {
        Self(Arc::new(iter.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose single entry `k` nests tables and arrays, alternating, `depth` levels deep.
    fn nested(depth: usize) -> FieldTable {
        let mut value = FieldValue::I32(1);
        for level in (2..=depth).rev() {
            value = if level % 2 == 0 {
                FieldValue::Table(FieldTable::from_iter([("k".to_owned(), value)]))
            } else {
                FieldValue::Array(vec![FieldValue::Void, value])
            };
        }
        FieldTable::from_iter([("k".to_owned(), value)])
    }

    #[test]
    fn depth_counts_tables_and_arrays_from_the_outermost_table() {
        assert_eq!(FieldTable::new().depth(), 1);
        assert_eq!(nested(1).depth(), 1);
        assert_eq!(nested(2).depth(), 2);
        assert_eq!(nested(3).depth(), 3);
        assert_eq!(nested(MAX_DEPTH).depth(), MAX_DEPTH);
    }
}
