//! Conversions between amq-protocol's wire types and the core's protocol-neutral ones: message
//! properties and field tables, both ways, losslessly.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable as WireTable, LongString,
    ShortString,
};
use bytes::Bytes;
use junction_core::{FieldTable, FieldValue, Properties};

/// A wire field table as a core table.
pub fn table_from_wire(table: &WireTable) -> FieldTable {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_from_wire(v)))
        .collect()
}

fn value_from_wire(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(v) => FieldValue::Bool(*v),
        AMQPValue::ShortShortInt(v) => FieldValue::I8(*v),
        AMQPValue::ShortShortUInt(v) => FieldValue::U8(*v),
        AMQPValue::ShortInt(v) => FieldValue::I16(*v),
        AMQPValue::ShortUInt(v) => FieldValue::U16(*v),
        AMQPValue::LongInt(v) => FieldValue::I32(*v),
        AMQPValue::LongUInt(v) => FieldValue::U32(*v),
        AMQPValue::LongLongInt(v) => FieldValue::I64(*v),
        AMQPValue::Float(v) => FieldValue::F32(*v),
        AMQPValue::Double(v) => FieldValue::F64(*v),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => {
            FieldValue::String(Bytes::copy_from_slice(s.as_str().as_bytes()))
        }
        AMQPValue::LongString(s) => FieldValue::String(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            FieldValue::Array(a.as_slice().iter().map(value_from_wire).collect())
        }
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => FieldValue::Table(table_from_wire(t)),
        AMQPValue::ByteArray(b) => FieldValue::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => FieldValue::Void,
    }
}

/// A core table as a wire field table.
pub fn table_to_wire(table: &FieldTable) -> WireTable {
    let mut wire = WireTable::default();
    for (k, v) in table.iter() {
        wire.insert(ShortString::from(k.as_str()), value_to_wire(v));
    }
    wire
}

fn value_to_wire(value: &FieldValue) -> AMQPValue {
    match value {
        FieldValue::Bool(v) => AMQPValue::Boolean(*v),
        FieldValue::I8(v) => AMQPValue::ShortShortInt(*v),
        FieldValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        FieldValue::I16(v) => AMQPValue::ShortInt(*v),
        FieldValue::U16(v) => AMQPValue::ShortUInt(*v),
        FieldValue::I32(v) => AMQPValue::LongInt(*v),
        FieldValue::U32(v) => AMQPValue::LongUInt(*v),
        FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
        FieldValue::F32(v) => AMQPValue::Float(*v),
        FieldValue::F64(v) => AMQPValue::Double(*v),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::String(s) => AMQPValue::LongString(LongString::from(s.to_vec())),
        FieldValue::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_wire).collect::<Vec<_>>(),
        )),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Table(t) => AMQPValue::FieldTable(table_to_wire(t)),
        FieldValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        FieldValue::Void => AMQPValue::Void,
    }
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_owned())
}

fn short(value: &Option<String>) -> Option<ShortString> {
    value.as_deref().map(ShortString::from)
}

/// Wire properties as core properties.
pub fn properties_from_wire(p: &BasicProperties) -> Properties {
    let mut properties = Properties::default();
    properties.content_type = text(p.content_type());
    properties.content_encoding = text(p.content_encoding());
    properties.headers = p.headers().as_ref().map(table_from_wire);
    properties.delivery_mode = *p.delivery_mode();
    properties.priority = *p.priority();
    properties.correlation_id = text(p.correlation_id());
    properties.reply_to = text(p.reply_to());
    properties.expiration = text(p.expiration());
    properties.message_id = text(p.message_id());
    properties.timestamp = *p.timestamp();
    properties.kind = text(p.kind());
    properties.user_id = text(p.user_id());
    properties.app_id = text(p.app_id());
    properties.cluster_id = text(p.cluster_id());
    properties
}

/// Core properties as wire properties.
pub fn properties_to_wire(p: &Properties) -> BasicProperties {
    let mut wire = BasicProperties::default();
    if let Some(v) = short(&p.content_type) {
        wire = wire.with_content_type(v);
    }
    if let Some(v) = short(&p.content_encoding) {
        wire = wire.with_content_encoding(v);
    }
    if let Some(v) = &p.headers {
        wire = wire.with_headers(table_to_wire(v));
    }
    if let Some(v) = p.delivery_mode {
        wire = wire.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        wire = wire.with_priority(v);
    }
    if let Some(v) = short(&p.correlation_id) {
        wire = wire.with_correlation_id(v);
    }
    if let Some(v) = short(&p.reply_to) {
        wire = wire.with_reply_to(v);
    }
    if let Some(v) = short(&p.expiration) {
        wire = wire.with_expiration(v);
    }
    if let Some(v) = short(&p.message_id) {
        wire = wire.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        wire = wire.with_timestamp(v);
    }
    if let Some(v) = short(&p.kind) {
        wire = wire.with_type(v);
    }
    if let Some(v) = short(&p.user_id) {
        wire = wire.with_user_id(v);
    }
    if let Some(v) = short(&p.app_id) {
        wire = wire.with_app_id(v);
    }
    if let Some(v) = short(&p.cluster_id) {
        wire = wire.with_cluster_id(v);
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_a_round_trip() {
        let mut headers = FieldTable::new();
        headers.insert("n", FieldValue::I32(-4));
        headers.insert("s", FieldValue::string("x"));
        headers.insert(
            "a",
            FieldValue::Array(vec![FieldValue::Bool(true), FieldValue::Void]),
        );
        let props = {
            let mut properties = Properties::default();
            properties.content_type = Some("text/plain".into());
            properties.headers = Some(headers);
            properties.delivery_mode = Some(2);
            properties.priority = Some(5);
            properties.correlation_id = Some("c1".into());
            properties.reply_to = Some("r".into());
            properties.timestamp = Some(12345);
            properties.kind = Some("t".into());
            properties
        };
        assert_eq!(properties_from_wire(&properties_to_wire(&props)), props);
    }
}
