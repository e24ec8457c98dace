//! A typed field table: the protocol-neutral form of message headers and of the arguments of
//! declarations and bindings. It can hold everything an AMQP field table holds, so an AMQP client
//! sees exactly what it sent; MQTT and STOMP adapters mostly use strings.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldTable(pub BTreeMap<String, FieldValue>);

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
        self.0.insert(key.into(), value);
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
}

impl FromIterator<(String, FieldValue)> for FieldTable {
    fn from_iter<T: IntoIterator<Item = (String, FieldValue)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}
