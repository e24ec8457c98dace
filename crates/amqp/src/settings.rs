//! Settings of the AMQP listener that come from the configuration.

/// The smallest frame_max a peer may negotiate (AMQP 0-9-1 §4.2.3).
pub const FRAME_MIN_SIZE: usize = 4096;

/// What the AMQP adapter offers in connection.tune and server-properties.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest frame we accept and propose.
    pub frame_max: u32,
    /// Highest channel number we propose.
    pub channel_max: u16,
    /// Heartbeat interval we propose, in seconds (0 = off).
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes (RabbitMQ's `max_message_size`).
    pub max_message_size: u64,
    /// Product name reported in server-properties.
    pub product: String,
    /// Version reported in server-properties.
    pub version: String,
    /// Cluster name reported in server-properties.
    pub cluster_name: String,
    /// How long a client has from connecting to `connection.open` (and a closing handshake
    /// to finish).
    pub handshake_timeout: std::time::Duration,
    /// Consumers one channel may have at once (0: unlimited); RabbitMQ's
    /// `consumer_max_per_channel`.
    pub consumer_max_per_channel: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 16 * 1024 * 1024,
            product: "Junction".to_owned(),
            version: "0.1.0".to_owned(),
            cluster_name: "junction".to_owned(),
            handshake_timeout: std::time::Duration::from_secs(10),
            consumer_max_per_channel: 0,
        }
    }
}
