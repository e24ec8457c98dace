//! The STOMP listener's settings (the `[stomp]` configuration section).

use crate::codec::Limits;

/// Settings of the STOMP adapter.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Frame size limits.
    pub limits: Limits,
    /// The heart-beat interval the server offers to send and asks to receive, in milliseconds
    /// (0: none). A client that asks for heart-beats more often gets them (down to 100 ms):
    /// this is an offer, not a floor.
    pub heartbeat_ms: u32,
    /// Clients that send no `login` connect as `anonymous_user`; otherwise they are refused.
    pub allow_anonymous: bool,
    /// The user anonymous clients log in as.
    pub anonymous_user: String,
    /// That user's password.
    pub anonymous_password: String,
    /// Whether a `host` header that names no vhost means the default vhost; when false (the
    /// default, as in RabbitMQ) the CONNECT is refused.
    pub unknown_host_uses_default_vhost: bool,
    /// The server name in CONNECTED frames.
    pub server: String,
    /// How long a client has from connecting to sending CONNECT.
    pub connect_timeout: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            heartbeat_ms: 10_000,
            allow_anonymous: false,
            anonymous_user: "guest".to_owned(),
            anonymous_password: "guest".to_owned(),
            unknown_host_uses_default_vhost: false,
            server: format!("Junction/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: std::time::Duration::from_secs(10),
        }
    }
}
