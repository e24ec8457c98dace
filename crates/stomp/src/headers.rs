//! STOMP headers and message properties, both ways, as RabbitMQ maps them: the headers that
//! name an AMQP property become that property; every other header of a SEND goes to the
//! headers table (so AMQP and MQTT consumers see it), and on a MESSAGE each property and each
//! entry of the headers table becomes a header.

use junction_core::{FieldTable, FieldValue, Properties};

use crate::codec::Frame;

/// Headers that belong to the frame, not to the message.
const FRAME_HEADERS: &[&str] = &[
    "destination",
    "content-length",
    "transaction",
    "receipt",
    "ack",
    "id",
    "subscription",
    "message-id",
    "redelivered",
];

/// The message properties a SEND frame's headers describe.
pub fn properties_from_send(frame: &Frame) -> Properties {
    let mut properties = Properties::default();
    let mut headers = FieldTable::new();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &frame.headers {
        // The first occurrence of a repeated header counts.
        if seen.contains(&name.as_ref()) {
            continue;
        }
        seen.push(name);
        let value = value.clone();
        match name.as_ref() {
            "content-type" => properties.content_type = Some(value),
            "content-encoding" => properties.content_encoding = Some(value),
            "persistent" => {
                let persistent = frame.flag("persistent") == Some(true);
                properties.delivery_mode = Some(if persistent { 2 } else { 1 });
            }
            "priority" => properties.priority = value.parse().ok(),
            "correlation-id" => properties.correlation_id = Some(value),
            "reply-to" => properties.reply_to = Some(value),
            "expiration" => properties.expiration = Some(value),
            "amqp-message-id" => properties.message_id = Some(value),
            "timestamp" => properties.timestamp = value.parse().ok(),
            "type" => properties.kind = Some(value),
            "user-id" => properties.user_id = Some(value),
            "app-id" => properties.app_id = Some(value),
            "cluster-id" => properties.cluster_id = Some(value),
            other if FRAME_HEADERS.contains(&other) => {}
            other => headers.insert(other, FieldValue::string(value)),
        }
    }
    if !headers.is_empty() {
        properties.headers = Some(headers);
    }
    properties
}

/// Appends the headers that describe `properties` to a MESSAGE frame.
pub fn add_property_headers(mut frame: Frame, properties: &Properties) -> Frame {
    let text = [
        ("content-type", &properties.content_type),
        ("content-encoding", &properties.content_encoding),
        ("correlation-id", &properties.correlation_id),
        ("reply-to", &properties.reply_to),
        ("expiration", &properties.expiration),
        ("amqp-message-id", &properties.message_id),
        ("type", &properties.kind),
        ("user-id", &properties.user_id),
        ("app-id", &properties.app_id),
        ("cluster-id", &properties.cluster_id),
    ];
    for (name, value) in text {
        if let Some(value) = value {
            frame = frame.header(name, value.clone());
        }
    }
    if let Some(mode) = properties.delivery_mode {
        frame = frame.header("persistent", if mode == 2 { "true" } else { "false" });
    }
    if let Some(priority) = properties.priority {
        frame = frame.header("priority", priority.to_string());
    }
    if let Some(timestamp) = properties.timestamp {
        frame = frame.header("timestamp", timestamp.to_string());
    }
    if let Some(headers) = &properties.headers {
        for (name, value) in headers.iter() {
            if FRAME_HEADERS.contains(&name.as_str()) {
                continue;
            }
            if let Some(text) = field_text(value) {
                frame = frame.header(name.clone(), text);
            }
        }
    }
    frame
}

/// A header table value as header text (nested tables and arrays are left out).
fn field_text(value: &FieldValue) -> Option<String> {
    if let Some(text) = value.as_str() {
        return Some(text.to_owned());
    }
    if let Some(number) = value.as_i64() {
        return Some(number.to_string());
    }
    if let Some(flag) = value.as_bool() {
        return Some(flag.to_string());
    }
    match value {
        FieldValue::F32(f) => Some(f.to_string()),
        FieldValue::F64(f) => Some(f.to_string()),
        FieldValue::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_headers_become_properties_and_the_rest_headers() {
        let frame = Frame::new("SEND")
            .header("destination", "/queue/a")
            .header("content-type", "text/plain")
            .header("persistent", "true")
            .header("correlation-id", "c1")
            .header("reply-to", "/temp-queue/r")
            .header("priority", "5")
            .header("x-custom", "v")
            .header("x-custom", "ignored")
            .header("receipt", "r1");
        let properties = properties_from_send(&frame);
        assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
        assert!(properties.is_persistent());
        assert_eq!(properties.correlation_id.as_deref(), Some("c1"));
        assert_eq!(properties.priority, Some(5));
        let headers = properties.headers.clone().expect("headers");
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get("x-custom").and_then(|v| v.as_str()), Some("v"));

        let message = add_property_headers(Frame::new("MESSAGE"), &properties);
        assert_eq!(message.get("persistent"), Some("true"));
        assert_eq!(message.get("x-custom"), Some("v"));
        assert_eq!(message.get("priority"), Some("5"));
    }
}
