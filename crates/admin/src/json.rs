//! Field tables as JSON, both ways, as RabbitMQ's API shows arguments, headers and client
//! properties: strings as strings, numbers as numbers, tables as objects, arrays as lists.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use base64::Engine;
use bytes::Bytes;
use junction_core::{FieldTable, FieldValue};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

/// The deepest a request body may nest: the core's field table limit (arguments and headers
/// become field tables).
pub const MAX_BODY_DEPTH: usize = junction_core::field::MAX_DEPTH;

/// A request body that must be JSON: one with another `Content-Type` is refused (415), so a
/// page elsewhere cannot make a browser that knows the user's credentials post a form to the
/// API.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> ApiResult<Self> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
        if !bytes.is_empty() && !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        Ok(Self(bytes))
    }
}

/// A JSON request body read as `T` (an empty body reads as `{}`), refused when it is not
/// JSON, nests deeper than [`MAX_BODY_DEPTH`] or is not a `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> ApiResult<Self> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        let value: Value = if bytes.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?
        };
        if depth(&value) > MAX_BODY_DEPTH {
            return Err(ApiError::bad_request("body nests too deeply"));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// A field table as a JSON object.
pub fn table_to_json(table: &FieldTable) -> Value {
    let mut map = Map::new();
    for (key, value) in table.iter() {
        map.insert(key.clone(), value_to_json(value));
    }
    Value::Object(map)
}

/// A field value as JSON. Bytes that are not UTF-8 are shown in base64.
pub fn value_to_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(v) => (*v).into(),
        FieldValue::U8(v) => (*v).into(),
        FieldValue::I16(v) => (*v).into(),
        FieldValue::U16(v) => (*v).into(),
        FieldValue::I32(v) => (*v).into(),
        FieldValue::U32(v) => (*v).into(),
        FieldValue::I64(v) => (*v).into(),
        FieldValue::Timestamp(v) => (*v).into(),
        FieldValue::F32(v) => {
            serde_json::Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number)
        }
        FieldValue::F64(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        FieldValue::Decimal { scale, value } => {
            let number = f64::from(*value) / 10f64.powi(i32::from(*scale));
            serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
        }
        FieldValue::String(bytes) | FieldValue::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        },
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Table(table) => table_to_json(table),
        FieldValue::Void => Value::Null,
    }
}

/// A JSON value as a field value: integers as 64-bit integers, other numbers as doubles.
pub fn json_to_value(value: &Value) -> FieldValue {
    match value {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => FieldValue::string(s.as_str()),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_to_value).collect()),
        Value::Object(map) => FieldValue::Table(json_to_table(map)),
    }
}

/// A JSON object as a field table.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in map {
        table.insert(key.as_str(), json_to_value(value));
    }
    table
}

/// How deeply a JSON value nests (iteratively: a request body is a stranger's input).
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_round_trip_through_json() {
        let json = json!({"x-max-length": 10, "x-queue-type": "quorum", "nested": {"a": [1, "b", true]}, "f": 1.5});
        let Value::Object(map) = &json else {
            unreachable!()
        };
        let table = json_to_table(map);
        assert_eq!(
            table.get("x-max-length").and_then(FieldValue::as_i64),
            Some(10)
        );
        assert_eq!(table_to_json(&table), json);
        assert_eq!(depth(&json), 4);
    }
}
