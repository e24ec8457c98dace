//! The queue arguments RabbitMQ gives a meaning to, read once when a queue is declared and
//! checked as RabbitMQ checks them: a bad value refuses the declaration with
//! `PRECONDITION_FAILED - invalid arg 'x-...' for queue '...' in vhost '...': {reason,value}`.
//! Arguments nobody gives a meaning to are kept and ignored, as RabbitMQ does.

use std::time::Duration;

use crate::field::{FieldTable, FieldValue};

/// What a queue does when a publish would take it over its length limit (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages to make room (the default).
    #[default]
    DropHead,
    /// Refuse the new message: publishers with confirms get a nack.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue (the default).
    #[default]
    Classic,
    /// A quorum queue: durable only, with a delivery limit and `x-delivery-count`. On one
    /// node it is a classic queue with those rules; replication comes with clustering.
    Quorum,
}

impl QueueType {
    /// RabbitMQ's module name for the type, as its errors print it.
    pub fn module(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
        }
    }
}

/// Arguments only other queue types give a meaning to: declaring a quorum queue with one is
/// refused, as RabbitMQ refuses it.
const NOT_FOR_QUORUM: [&str; 9] = [
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
    "x-initial-cluster-size",
    "x-max-segment-size-bytes",
];

/// A queue's arguments, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    /// `x-message-ttl`: how long a message may wait in the queue.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: the queue is deleted after this long unused.
    pub expires: Option<Duration>,
    /// `x-max-length`: at most this many ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: at most this many bytes of ready message bodies.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`: what a full queue does.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`: where dead messages are republished ("" is the default
    /// exchange).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: the key they are republished with (else their own).
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: the highest message priority the queue orders by.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: one consumer receives at a time.
    pub single_active_consumer: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-delivery-limit` (quorum queues): a message returned more often than this is
    /// dead-lettered (or dropped) instead of delivered again.
    pub delivery_limit: Option<u64>,
}

/// A refused argument: its name and RabbitMQ's reason, such as `{value_negative,-1}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentError {
    /// The argument's name.
    pub argument: &'static str,
    /// Why.
    pub reason: Refusal,
}

/// Why an argument is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A bad value, in RabbitMQ's words (`{value_negative,-1}`).
    Value(String),
    /// An argument the queue's type has no use for.
    NotForType(QueueType),
}

impl ArgumentError {
    fn new(argument: &'static str, reason: impl Into<String>) -> Self {
        Self {
            argument,
            reason: Refusal::Value(reason.into()),
        }
    }

    /// RabbitMQ's text for a declaration it refuses.
    pub fn message(&self, queue: &str, vhost: &str) -> String {
        let argument = self.argument;
        match &self.reason {
            Refusal::Value(reason) => {
                format!("invalid arg '{argument}' for queue '{queue}' in vhost '{vhost}': {reason}")
            }
            Refusal::NotForType(kind) => format!(
                "invalid arg '{argument}' for queue '{queue}' in vhost '{vhost}' of queue type {}",
                kind.module()
            ),
        }
    }
}

impl QueueArguments {
    /// Reads and checks the arguments of a queue declaration.
    pub fn parse(arguments: &FieldTable) -> Result<Self, ArgumentError> {
        let mut parsed = QueueArguments::default();
        if let Some(value) = arguments.get("x-message-ttl") {
            let ms = at_most_ten_years("x-message-ttl", non_negative("x-message-ttl", value)?)?;
            parsed.message_ttl = Some(Duration::from_millis(ms));
        }
        if let Some(value) = arguments.get("x-expires") {
            let ms = at_most_ten_years("x-expires", non_negative("x-expires", value)?)?;
            if ms == 0 {
                return Err(ArgumentError::new("x-expires", "{value_zero,0}"));
            }
            parsed.expires = Some(Duration::from_millis(ms));
        }
        if let Some(value) = arguments.get("x-max-length") {
            parsed.max_length = Some(non_negative("x-max-length", value)?);
        }
        if let Some(value) = arguments.get("x-max-length-bytes") {
            parsed.max_length_bytes = Some(non_negative("x-max-length-bytes", value)?);
        }
        if let Some(value) = arguments.get("x-overflow") {
            parsed.overflow = match string("x-overflow", value)? {
                "drop-head" => Overflow::DropHead,
                "reject-publish" => Overflow::RejectPublish,
                "reject-publish-dlx" => Overflow::RejectPublishDlx,
                other => {
                    return Err(ArgumentError::new(
                        "x-overflow",
                        format!("{{invalid_overflow,<<\"{other}\">>}}"),
                    ));
                }
            };
        }
        if let Some(value) = arguments.get("x-dead-letter-exchange") {
            parsed.dead_letter_exchange = Some(string("x-dead-letter-exchange", value)?.into());
        }
        if let Some(value) = arguments.get("x-dead-letter-routing-key") {
            let key = string("x-dead-letter-routing-key", value)?;
            if parsed.dead_letter_exchange.is_none() {
                return Err(ArgumentError::new(
                    "x-dead-letter-routing-key",
                    "{routing_key_but_no_dlx_defined}",
                ));
            }
            parsed.dead_letter_routing_key = Some(key.into());
        }
        if let Some(value) = arguments.get("x-max-priority") {
            let priority = non_negative("x-max-priority", value)?;
            let priority = u8::try_from(priority).map_err(|_| {
                ArgumentError::new(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{priority}}}"),
                )
            })?;
            parsed.max_priority = Some(priority);
        }
        if let Some(value) = arguments.get("x-single-active-consumer") {
            parsed.single_active_consumer = value.as_bool().ok_or_else(|| {
                ArgumentError::new(
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{}}}", type_name(value)),
                )
            })?;
        }
        if let Some(value) = arguments.get("x-delivery-limit") {
            // RabbitMQ checks no value; a negative one (4.x's -1) means no limit.
            let limit = integer(value).ok_or_else(|| {
                ArgumentError::new(
                    "x-delivery-limit",
                    format!("{{unacceptable_type,{}}}", type_name(value)),
                )
            })?;
            parsed.delivery_limit = u64::try_from(limit).ok();
        }
        if let Some(value) = arguments.get("x-queue-type") {
            parsed.queue_type = match string("x-queue-type", value)? {
                "classic" => QueueType::Classic,
                "quorum" => QueueType::Quorum,
                // Streams (and any other type) are not built: RabbitMQ's text for a type it
                // does not know.
                other => {
                    return Err(ArgumentError::new(
                        "x-queue-type",
                        format!("\"unsupported queue type '{other}'\""),
                    ));
                }
            };
        }
        if parsed.queue_type == QueueType::Quorum {
            if let Some(argument) = NOT_FOR_QUORUM
                .into_iter()
                .find(|argument| arguments.get(argument).is_some())
            {
                return Err(ArgumentError {
                    argument,
                    reason: Refusal::NotForType(QueueType::Quorum),
                });
            }
            // RabbitMQ accepts `reject-publish-dlx` for a quorum queue and, warning, lets it
            // drop the head instead.
            if parsed.overflow == Overflow::RejectPublishDlx {
                tracing::warn!(
                    "x-overflow reject-publish-dlx is not supported by quorum queues; using drop-head"
                );
                parsed.overflow = Overflow::DropHead;
            }
        } else {
            // Only quorum queues count deliveries.
            parsed.delivery_limit = None;
        }
        Ok(parsed)
    }

    /// Whether the queue is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        self.queue_type == QueueType::Quorum
    }

    /// Whether the queue has a length limit.
    pub fn has_length_limit(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

/// A consumer's priority (`x-priority` in basic.consume's arguments; 0 when absent).
pub fn consumer_priority(arguments: &FieldTable) -> Result<i64, ArgumentError> {
    match arguments.get("x-priority") {
        None => Ok(0),
        Some(value) => integer(value).ok_or_else(|| {
            ArgumentError::new(
                "x-priority",
                format!("{{unacceptable_type,{}}}", type_name(value)),
            )
        }),
    }
}

fn non_negative(argument: &'static str, value: &FieldValue) -> Result<u64, ArgumentError> {
    let Some(number) = integer(value) else {
        return Err(ArgumentError::new(
            argument,
            format!("{{unacceptable_type,{}}}", type_name(value)),
        ));
    };
    u64::try_from(number)
        .map_err(|_| ArgumentError::new(argument, format!("{{value_negative,{number}}}")))
}

/// RabbitMQ's limit for durations in milliseconds: ten years. (Celery's native delayed
/// delivery declares TTLs of 2^27 seconds, above the 2^32 ms older RabbitMQs allowed.)
const MAX_EXPIRY_MS: u64 = 315_360_000_000;

fn at_most_ten_years(argument: &'static str, ms: u64) -> Result<u64, ArgumentError> {
    if ms > MAX_EXPIRY_MS {
        return Err(ArgumentError::new(
            argument,
            format!("{{value_too_large,{ms}}}"),
        ));
    }
    Ok(ms)
}

/// Integers of any width (not timestamps: RabbitMQ refuses those for numeric arguments).
fn integer(value: &FieldValue) -> Option<i64> {
    match value {
        FieldValue::Timestamp(_) => None,
        other => other.as_i64(),
    }
}

fn string<'a>(argument: &'static str, value: &'a FieldValue) -> Result<&'a str, ArgumentError> {
    value.as_str().ok_or_else(|| {
        ArgumentError::new(
            argument,
            format!("{{unacceptable_type,{}}}", type_name(value)),
        )
    })
}

/// Whether two argument values are the same as RabbitMQ compares them on redeclaration:
/// integers of any width are one type (clients encode small numbers differently).
pub fn equivalent(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match (integer(a), integer(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        (None, None) => true,
        _ => false,
    }
}

/// A value as RabbitMQ's inequivalence errors show it: `the value '10' of type 'signedint'`,
/// or `none`.
pub fn describe(value: Option<&FieldValue>) -> String {
    let Some(value) = value else {
        return "none".to_owned();
    };
    let shown = match value {
        FieldValue::String(_) => value.as_str().unwrap_or("").to_owned(),
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(f) => f.to_string(),
        FieldValue::F64(f) => f.to_string(),
        other => match integer(other) {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    };
    format!("the value '{shown}' of type '{}'", type_name(value))
}

/// RabbitMQ's name for a field's type, as its errors print it.
fn type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::String(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Void => "void",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn refused(entries: &[(&str, FieldValue)]) -> String {
        match QueueArguments::parse(&table(entries)) {
            Ok(parsed) => panic!("accepted {parsed:?}"),
            Err(error) => error.message("q", "/"),
        }
    }

    #[test]
    fn celery_style_arguments_are_read() {
        let parsed = QueueArguments::parse(&table(&[
            ("x-message-ttl", FieldValue::I32(300_000)),
            ("x-expires", FieldValue::I64(10_000)),
            ("x-max-length", FieldValue::U16(5)),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-dead-letter-routing-key", FieldValue::string("dead")),
            ("x-max-priority", FieldValue::U8(10)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-queue-type", FieldValue::string("classic")),
            ("x-unknown", FieldValue::string("kept, ignored")),
        ]))
        .expect("valid");
        assert_eq!(parsed.message_ttl, Some(Duration::from_secs(300)));
        assert_eq!(parsed.expires, Some(Duration::from_secs(10)));
        assert_eq!(parsed.max_length, Some(5));
        assert_eq!(parsed.overflow, Overflow::RejectPublishDlx);
        assert_eq!(parsed.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(parsed.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(parsed.max_priority, Some(10));
        assert!(parsed.single_active_consumer);
        assert!(parsed.has_length_limit());
    }

    #[test]
    fn bad_values_are_refused_in_rabbitmq_words() {
        assert_eq!(
            refused(&[("x-message-ttl", FieldValue::I32(-1))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            refused(&[("x-message-ttl", FieldValue::string("soon"))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
        assert_eq!(
            refused(&[("x-expires", FieldValue::I32(0))]),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert!(
            refused(&[("x-overflow", FieldValue::string("explode"))]).contains("invalid_overflow")
        );
        assert!(
            refused(&[("x-dead-letter-routing-key", FieldValue::string("k"))])
                .contains("routing_key_but_no_dlx_defined")
        );
        assert!(
            refused(&[("x-max-priority", FieldValue::I32(256))]).contains("max_value_exceeded")
        );
        assert!(
            refused(&[("x-message-ttl", FieldValue::I64(315_360_000_001))])
                .contains("value_too_large")
        );
        assert_eq!(
            refused(&[("x-queue-type", FieldValue::string("stream"))]),
            "invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'stream'\""
        );
        assert!(
            refused(&[("x-single-active-consumer", FieldValue::string("yes"))])
                .contains("unacceptable_type,longstr")
        );
    }

    #[test]
    fn quorum_queues_take_a_delivery_limit_and_refuse_other_types_arguments() {
        let parsed = QueueArguments::parse(&table(&[
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-delivery-limit", FieldValue::I32(3)),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            (
                "x-dead-letter-strategy",
                FieldValue::string("at-least-once"),
            ),
        ]))
        .expect("valid");
        assert!(parsed.is_quorum());
        assert_eq!(parsed.delivery_limit, Some(3));
        assert_eq!(parsed.overflow, Overflow::DropHead);
        assert_eq!(
            refused(&[
                ("x-queue-type", FieldValue::string("quorum")),
                ("x-max-priority", FieldValue::U8(5)),
            ]),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        let negative = QueueArguments::parse(&table(&[
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-delivery-limit", FieldValue::I32(-1)),
        ]))
        .expect("valid");
        assert_eq!(negative.delivery_limit, None);
        let classic = QueueArguments::parse(&table(&[("x-delivery-limit", FieldValue::I32(3))]))
            .expect("valid");
        assert_eq!(classic.delivery_limit, None);
        assert!(!classic.is_quorum());
    }

    #[test]
    fn integers_of_any_width_are_equivalent_and_differences_read_as_in_rabbitmq() {
        let byte = FieldValue::I8(10);
        let int = FieldValue::I32(10);
        assert!(equivalent(Some(&byte), Some(&int)));
        assert!(!equivalent(Some(&int), Some(&FieldValue::I32(20))));
        assert!(!equivalent(Some(&int), None));
        assert!(!equivalent(Some(&FieldValue::string("10")), Some(&int)));
        assert_eq!(describe(Some(&int)), "the value '10' of type 'signedint'");
        assert_eq!(
            describe(Some(&FieldValue::string("drop-head"))),
            "the value 'drop-head' of type 'longstr'"
        );
        assert_eq!(describe(None), "none");
    }

    #[test]
    fn consumer_priorities_are_integers() {
        assert_eq!(consumer_priority(&FieldTable::default()), Ok(0));
        assert_eq!(
            consumer_priority(&table(&[("x-priority", FieldValue::I32(-5))])),
            Ok(-5)
        );
        assert!(consumer_priority(&table(&[("x-priority", FieldValue::string("high"))])).is_err());
    }
}
