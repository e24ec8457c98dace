//! The message as the core sees it: immutable once published and shared by every queue it is
//! routed to (`Arc<Message>`), with its body in a `Bytes` so no queue or socket copies it.

use bytes::Bytes;

use crate::field::FieldTable;

/// Protocol-neutral message properties, a superset of what AMQP, MQTT and STOMP carry. Start
/// from `Properties::default()` and set the fields wanted.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    /// MIME content type of the body.
    pub content_type: Option<String>,
    /// MIME content encoding of the body.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9.
    pub priority: Option<u8>,
    /// Correlates a reply with its request.
    pub correlation_id: Option<String>,
    /// Where a reply should be sent.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a string (AMQP's convention).
    pub expiration: Option<String>,
    /// Application message identifier.
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Application message type name.
    pub kind: Option<String>,
    /// The user that published the message (validated against the login when set).
    pub user_id: Option<String>,
    /// The publishing application.
    pub app_id: Option<String>,
    /// Deprecated cluster identifier, carried through untouched.
    pub cluster_id: Option<String>,
}

impl Properties {
    /// Whether the message asks to be persisted (`delivery_mode` 2).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }
}

/// A published message: where it was published, its properties and its body. Made with
/// [`Message::new`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The exchange it was published to (`""` is the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: Properties,
    /// Its body, shared and never copied by the core.
    pub body: Bytes,
    /// Its identity in the message store, for persistent messages when the broker has one.
    pub store_id: Option<u64>,
}

/// What a message's headers cost in memory per field, beside their names and values' text: an
/// estimate, for memory budgets.
const HEADER_FIELD_COST: usize = 64;

impl Message {
    /// About how much memory the message holds while it is queued: its body, its own
    /// allocation (with the `Arc`'s counts), its exchange and routing key and its headers. An
    /// estimate for memory budgets, where a 64-byte body is a fraction of what a message costs.
    pub fn memory_size(&self) -> usize {
        let headers = self
            .properties
            .headers
            .as_ref()
            .map_or(0, |headers| headers.len() * HEADER_FIELD_COST);
        self.body.len()
            + std::mem::size_of::<Self>()
            + 16
            + self.exchange.len()
            + self.routing_key.len()
            + headers
    }

    /// Builds a message.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        properties: Properties,
        body: Bytes,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties,
            body,
            store_id: None,
        }
    }
}
