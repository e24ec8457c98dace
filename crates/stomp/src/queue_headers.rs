//! Queue arguments and properties given as SUBSCRIBE and SEND headers, as RabbitMQ's STOMP
//! plugin reads them: `x-message-ttl`, `x-expires`, `x-max-length`, `x-max-length-bytes`,
//! `x-max-priority` (integers), `x-dead-letter-exchange`, `x-dead-letter-routing-key`,
//! `x-overflow`, `x-queue-type` (text), `x-single-active-consumer` (boolean); `durable`,
//! `auto-delete` and `exclusive` for the queue itself, and `x-queue-name` naming the queue of
//! a `/topic/` or `/exchange/` subscription.
//!
//! A value of the wrong kind is passed on as text, so the core refuses it with the same error
//! an AMQP declaration would get.

use junction_core::{FieldTable, FieldValue};

use crate::codec::Frame;

/// Arguments whose values are integers.
const INTEGER_ARGUMENTS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
];

/// Arguments whose values are text.
const TEXT_ARGUMENTS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-type",
];

/// Arguments whose values are booleans.
const BOOLEAN_ARGUMENTS: &[&str] = &["x-single-active-consumer"];

/// What a frame's headers say about the queue it declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueHeaders {
    /// The queue arguments.
    pub arguments: FieldTable,
    /// `durable`, when given.
    pub durable: Option<bool>,
    /// `auto-delete`, when given.
    pub auto_delete: Option<bool>,
    /// `exclusive`, when given.
    pub exclusive: Option<bool>,
    /// `x-queue-name`, when given.
    pub name: Option<String>,
}

impl QueueHeaders {
    /// Reads the headers of `frame` (the first occurrence of each counts).
    pub fn from_frame(frame: &Frame) -> Self {
        let mut arguments = FieldTable::new();
        for &name in INTEGER_ARGUMENTS {
            if let Some(value) = frame.get(name) {
                let value = match value.trim().parse::<i64>() {
                    Ok(number) => FieldValue::I64(number),
                    Err(_) => FieldValue::string(value),
                };
                arguments.insert(name, value);
            }
        }
        for &name in TEXT_ARGUMENTS {
            if let Some(value) = frame.get(name) {
                arguments.insert(name, FieldValue::string(value));
            }
        }
        for &name in BOOLEAN_ARGUMENTS {
            if let Some(value) = frame.get(name) {
                let value = match frame.flag(name) {
                    Some(flag) => FieldValue::Bool(flag),
                    None => FieldValue::string(value),
                };
                arguments.insert(name, value);
            }
        }
        Self {
            arguments,
            durable: frame.flag("durable"),
            auto_delete: frame.flag("auto-delete"),
            exclusive: frame.flag("exclusive"),
            name: frame.get("x-queue-name").map(str::to_owned),
        }
    }

    /// Whether the frame says nothing about its queue.
    pub fn is_empty(&self) -> bool {
        self.arguments.is_empty()
            && self.durable.is_none()
            && self.auto_delete.is_none()
            && self.exclusive.is_none()
            && self.name.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_take_their_kinds_and_flags_read_any_case() {
        let mut frame = Frame::new("SUBSCRIBE")
            .header("x-message-ttl", "60000")
            .header("x-max-length", "ten")
            .header("x-dead-letter-exchange", "dlx")
            .header("x-single-active-consumer", "True")
            .header("auto-delete", "false")
            .header("x-queue-name", "mine");
        frame = frame.header("x-message-ttl", "1");
        let headers = QueueHeaders::from_frame(&frame);
        assert_eq!(
            headers.arguments.get("x-message-ttl"),
            Some(&FieldValue::I64(60_000))
        );
        assert_eq!(
            headers.arguments.get("x-max-length"),
            Some(&FieldValue::string("ten"))
        );
        assert_eq!(
            headers.arguments.get("x-dead-letter-exchange"),
            Some(&FieldValue::string("dlx"))
        );
        assert_eq!(
            headers.arguments.get("x-single-active-consumer"),
            Some(&FieldValue::Bool(true))
        );
        assert_eq!(headers.auto_delete, Some(false));
        assert_eq!(headers.durable, None);
        assert_eq!(headers.name.as_deref(), Some("mine"));
        assert!(!headers.is_empty());
        assert!(QueueHeaders::from_frame(&Frame::new("SEND")).is_empty());
    }
}
