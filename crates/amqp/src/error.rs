//! AMQP errors and their reply codes. This is the one place where the core's error kinds become
//! reply codes, and where it is decided whether an error closes the channel or the connection.

use junction_core::{CoreError, ErrorKind};

/// Reply codes of AMQP 0-9-1 as RabbitMQ uses them.
pub mod code {
    /// Success (close-ok paths, normal closes).
    pub const REPLY_SUCCESS: u16 = 200;
    /// The message could not be routed (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// The server closed the connection, e.g. at shutdown.
    pub const CONNECTION_FORCED: u16 = 320;
    /// Bad virtual host path.
    pub const INVALID_PATH: u16 = 402;
    /// Permissions or reserved names.
    pub const ACCESS_REFUSED: u16 = 403;
    /// A missing exchange or queue.
    pub const NOT_FOUND: u16 = 404;
    /// Another connection's exclusive queue.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Inequivalent redeclare, failed if-unused/if-empty, unknown delivery tag.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// A malformed frame.
    pub const FRAME_ERROR: u16 = 501;
    /// A malformed method.
    pub const SYNTAX_ERROR: u16 = 502;
    /// A method that is invalid here.
    pub const COMMAND_INVALID: u16 = 503;
    /// A channel used wrongly.
    pub const CHANNEL_ERROR: u16 = 504;
    /// A frame that was not expected in this state.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// A resource limit.
    pub const RESOURCE_ERROR: u16 = 506;
    /// Not allowed in this state (unknown vhost, reused consumer tag).
    pub const NOT_ALLOWED: u16 = 530;
    /// Something the server does not implement.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// An internal error.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// The name RabbitMQ puts before the text of a close (`NOT_FOUND - no queue 'x'`).
pub fn code_name(code: u16) -> &'static str {
    match code {
        code::REPLY_SUCCESS => "OK",
        code::NO_ROUTE => "NO_ROUTE",
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::INVALID_PATH => "INVALID_PATH",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::RESOURCE_ERROR => "RESOURCE_ERROR",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// Whether an error closes only its channel (a soft error) or the whole connection (hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// channel.close
    Channel,
    /// connection.close
    Connection,
}

/// An error to report to the client with a close method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} - {text}", code_name(*.code))]
pub struct AmqpError {
    /// Channel or connection.
    pub scope: Scope,
    /// The reply code.
    pub code: u16,
    /// The human-readable text, without the code name.
    pub text: String,
    /// The class of the method that caused it (0 if none).
    pub class_id: u16,
    /// The method that caused it (0 if none).
    pub method_id: u16,
}

impl AmqpError {
    /// A connection-level error.
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            scope: Scope::Connection,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// A channel-level error.
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            scope: Scope::Channel,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error.
    pub fn during(mut self, ids: (u16, u16)) -> Self {
        self.class_id = ids.0;
        self.method_id = ids.1;
        self
    }

    /// The reply text as sent: code name, dash, text.
    pub fn reply_text(&self) -> String {
        let text = format!("{} - {}", code_name(self.code), self.text);
        // A reply-text is a short string: at most 255 bytes, cut on a character boundary.
        text[..text.floor_char_boundary(255)].to_owned()
    }
}

impl From<CoreError> for AmqpError {
    fn from(error: CoreError) -> Self {
        let (scope, code) = match error.kind {
            ErrorKind::NotFound => (Scope::Channel, code::NOT_FOUND),
            ErrorKind::PreconditionFailed => (Scope::Channel, code::PRECONDITION_FAILED),
            ErrorKind::ResourceLocked => (Scope::Channel, code::RESOURCE_LOCKED),
            ErrorKind::AccessRefused => (Scope::Channel, code::ACCESS_REFUSED),
            ErrorKind::NotAllowed => (Scope::Connection, code::NOT_ALLOWED),
            ErrorKind::CommandInvalid => (Scope::Connection, code::COMMAND_INVALID),
            ErrorKind::NotImplemented => (Scope::Connection, code::NOT_IMPLEMENTED),
            ErrorKind::ConnectionForced => (Scope::Connection, code::CONNECTION_FORCED),
            ErrorKind::Internal => (Scope::Connection, code::INTERNAL_ERROR),
        };
        Self {
            scope,
            code,
            text: error.message,
            class_id: 0,
            method_id: 0,
        }
    }
}

/// Result alias for AMQP handlers.
pub type AmqpResult<T> = Result<T, AmqpError>;
