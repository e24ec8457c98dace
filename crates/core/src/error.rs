//! Typed errors of the core. Each carries an [`ErrorKind`] that every adapter maps to its own wire
//! error (an AMQP reply code, an MQTT return code, a STOMP `ERROR` frame) in one place.

/// What went wrong, in protocol-neutral terms. The comments name the AMQP reply code each kind
/// maps to, since RabbitMQ's codes are what users know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An exchange, queue or vhost does not exist (AMQP 404).
    NotFound,
    /// A redeclare with other properties, a delete with `if-unused`/`if-empty` that does not
    /// hold, an invalid argument value (AMQP 406).
    PreconditionFailed,
    /// Another connection's exclusive queue (AMQP 405).
    ResourceLocked,
    /// Permissions refuse the operation, or a reserved name is used (AMQP 403).
    AccessRefused,
    /// The operation is not allowed in this state, such as an unknown vhost (AMQP 530).
    NotAllowed,
    /// A command that cannot be carried out as given, such as an unknown exchange type (AMQP 503).
    CommandInvalid,
    /// The broker does not implement what was asked (AMQP 540).
    NotImplemented,
    /// The broker is shutting down (AMQP 320).
    ConnectionForced,
    /// An unexpected internal failure (AMQP 541).
    Internal,
}

/// An error from the core: its kind and a human-readable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CoreError {
    /// The protocol-neutral kind of the error.
    pub kind: ErrorKind,
    /// A message naming what was expected and what arrived.
    pub message: String,
}

impl CoreError {
    /// Creates an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A missing resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A failed precondition.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PreconditionFailed, message)
    }

    /// A refused access.
    pub fn access_refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AccessRefused, message)
    }

    /// A resource locked by another connection.
    pub fn locked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceLocked, message)
    }

    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// Result alias for core operations.
pub type CoreResult<T> = Result<T, CoreError>;
