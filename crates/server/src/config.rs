//! The configuration file: its shape, the embedded default, and how a user's file is layered
//! over the default.

use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

/// The default configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/junction.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// Listener addresses.
    pub listeners: Listeners,
    /// AMQP tuning.
    pub amqp: AmqpConfig,
    /// MQTT settings.
    pub mqtt: MqttConfig,
    /// STOMP settings.
    pub stomp: StompConfig,
    /// Resource alarms.
    pub alarms: AlarmsConfig,
    /// Storage policy.
    pub storage: StorageConfig,
    /// Flow control: how much may wait between queues and connections.
    pub flow: FlowConfig,
    /// Authentication settings.
    pub auth: AuthConfig,
    /// Virtual hosts to create.
    pub vhosts: Vec<VhostConfig>,
    /// Users of the internal database.
    pub users: Vec<UserConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Definitions loaded at start.
    pub definitions: DefinitionsConfig,
    /// TLS: the certificate the TLS listeners present, and what they ask of clients.
    pub tls: TlsConfig,
    /// Limits on what clients may open and how long they may take.
    pub limits: LimitsConfig,
}

/// TLS settings (RabbitMQ's `ssl_options`). The TLS listeners start only when `certfile` is
/// set. Relative paths are relative to the configuration file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM; empty: no TLS listeners.
    pub certfile: PathBuf,
    /// The server's private key, PEM.
    pub keyfile: PathBuf,
    /// CA certificates that client certificates are verified against, PEM.
    pub cacertfile: PathBuf,
    /// Ask clients for a certificate and verify it.
    pub verify_peer: bool,
    /// Refuse clients without a certificate (with `verify_peer`).
    pub fail_if_no_peer_cert: bool,
    /// Log in clients by their verified certificate: AMQP's `EXTERNAL`, MQTT and STOMP
    /// clients that send no user name.
    pub ssl_cert_login: bool,
    /// Which name of the certificate is the user name: `common_name` or
    /// `subject_alternative_name`.
    pub ssl_cert_login_from: CertLoginFrom,
    /// With `subject_alternative_name`: `dns`, `email` or `uri` (the first of that kind).
    pub ssl_cert_login_san_type: SanType,
}

/// Which name of a client certificate is its user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The subject's CN.
    CommonName,
    /// A subject alternative name.
    SubjectAlternativeName,
}

/// A kind of subject alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    /// DNS name.
    Dns,
    /// E-mail address.
    Email,
    /// URI.
    Uri,
}

/// Limits on what clients may open and how long they may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time from accepting a connection to its protocol's login being complete (TLS
    /// handshake, WebSocket upgrade, AMQP handshake, MQTT and STOMP CONNECT), in ms.
    pub handshake_timeout_ms: u64,
    /// Logged-in connections the whole broker takes at once, all protocols (0: unlimited).
    pub connection_max: usize,
    /// Consumers one AMQP channel may have at once (0: unlimited).
    pub consumer_max_per_channel: usize,
    /// AMQP, MQTT and STOMP connections (TCP and TLS) that may be logging in at once (0: no
    /// cap); past it new ones are closed at once.
    pub unauthenticated_connection_max: usize,
}

/// Definitions loaded at start (RabbitMQ's `load_definitions`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsConfig {
    /// A file in RabbitMQ's `definitions.json` format; empty: none.
    pub load: String,
}

/// Listener addresses, `host:port` or `off`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// AMQP 0-9-1.
    pub amqp: String,
    /// MQTT.
    pub mqtt: String,
    /// STOMP.
    pub stomp: String,
    /// HTTP.
    pub http: String,
    /// STOMP over WebSocket.
    pub web_stomp: String,
    /// MQTT over WebSocket.
    pub web_mqtt: String,
    /// Prometheus metrics.
    pub prometheus: String,
    /// AMQP 0-9-1 over TLS.
    pub amqps: String,
    /// MQTT over TLS.
    pub mqtts: String,
    /// STOMP over TLS.
    pub stomps: String,
    /// HTTPS: management API, console and WebSocket.
    pub https: String,
    /// STOMP over WebSocket over TLS.
    pub web_stomps: String,
    /// MQTT over WebSocket over TLS.
    pub web_mqtts: String,
    /// Prometheus metrics over TLS.
    pub prometheus_tls: String,
}

/// AMQP tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Largest frame offered.
    pub frame_max: u32,
    /// Highest channel number offered.
    pub channel_max: u16,
    /// Heartbeat interval offered, in seconds.
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
}

/// MQTT settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The topic exchange MQTT topics are routing keys on.
    pub exchange: String,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: usize,
    /// Unacknowledged QoS 1 and 2 deliveries per session.
    pub max_inflight: u32,
    /// Messages a session's queue may hold before QoS 0 messages for it are dropped.
    pub max_queued_qos0: u32,
    /// Whether idle TCP connections leave their tasks for the parking lot.
    pub park_idle_connections: bool,
    /// Whether clients without a user name may connect (as `anonymous_user`).
    pub allow_anonymous: bool,
    /// The user anonymous clients log in as.
    pub anonymous_user: String,
    /// That user's password.
    pub anonymous_password: String,
    /// Messages per second one client may publish (0: unlimited).
    pub max_publish_rate_per_client: u32,
    /// Payload bytes per second one client may publish (0: unlimited).
    pub max_publish_bytes_rate_per_client: u64,
}

/// STOMP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompConfig {
    /// Heart-beat interval offered in both directions, in milliseconds (0 = none).
    pub heartbeat_ms: u32,
    /// Largest frame body accepted, in bytes.
    pub max_body_size: usize,
    /// Largest header block accepted, in bytes.
    pub max_header_size: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Whether clients without a login may connect (as `anonymous_user`).
    pub allow_anonymous: bool,
    /// The user anonymous clients log in as.
    pub anonymous_user: String,
    /// That user's password.
    pub anonymous_password: String,
    /// Whether a CONNECT whose `host` names no vhost uses the default vhost (else it is
    /// refused, as RabbitMQ refuses it).
    pub unknown_host_uses_default_vhost: bool,
}

/// Storage policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Bodies of ready messages a queue keeps in memory, in bytes, persistent and transient
    /// alike; beyond it they are paged out (to the message log or the overflow).
    pub max_loaded_bytes_per_queue: usize,
}

/// Flow control: how much may wait between queues and connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Bytes of deliveries on their way to one connection and not yet written to its socket.
    pub delivery_budget: usize,
    /// Commands a queue's mailbox holds; publishers to a queue with more than half of it
    /// waiting are not read until a quarter is left (credit flow).
    pub queue_mailbox: usize,
}

/// Resource alarms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Memory watermark as a fraction of total memory.
    pub memory_high_watermark: f64,
    /// Memory watermark in bytes (0 = use the fraction).
    pub memory_high_watermark_bytes: u64,
    /// Publishers are blocked while the data directory's file system has fewer free bytes
    /// (measured by the timer and after every message log write; 0 turns the disk alarm off).
    pub disk_free_limit: u64,
    /// How often memory and disk are measured, in milliseconds.
    pub check_interval_ms: u64,
}

/// Authentication settings. Keys beyond these are the sections of auth backends
/// (`[auth.http]`), checked against the registered backends when the broker is built.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// Users that may only connect from loopback.
    pub loopback_users: Vec<String>,
    /// The backends asked, in order (`internal`, and the plugins': `http`, ...).
    pub backends: Vec<String>,
    /// How long authorisation answers are cached, in milliseconds (0: ask every time).
    pub cache_ttl_ms: u64,
    /// The sections of auth backends (`[auth.http]`), by backend name.
    #[serde(flatten)]
    pub sections: std::collections::BTreeMap<String, toml::Value>,
}

/// A virtual host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostConfig {
    /// Its name.
    pub name: String,
    /// Connections open to it at once (RabbitMQ's `max-connections` vhost limit).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Queues it may hold (RabbitMQ's `max-queues`).
    #[serde(default)]
    pub max_queues: Option<usize>,
}

/// A user of the internal database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub name: String,
    /// A plain-text password.
    #[serde(default)]
    pub password: Option<String>,
    /// A RabbitMQ-style base64 salted SHA-256 hash.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Permissions per vhost.
    #[serde(default)]
    pub permissions: Vec<PermissionConfig>,
    /// Topic permissions per vhost and topic exchange.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionConfig>,
    /// Connections the user may have open at once (RabbitMQ's `max-connections` user limit).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// AMQP channels the user may have open at once, over all its connections.
    #[serde(default)]
    pub max_channels: Option<usize>,
    /// Messages per second the user may publish, over all its connections.
    #[serde(default)]
    pub max_publish_rate: Option<u32>,
    /// Body bytes per second the user may publish, over all its connections.
    #[serde(default)]
    pub max_publish_bytes_rate: Option<u64>,
}

/// One user's topic permission on one topic exchange of one vhost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionConfig {
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with (unanchored regular expression).
    #[serde(default = "match_all")]
    pub write: String,
    /// Routing keys the user may bind or subscribe with.
    #[serde(default = "match_all")]
    pub read: String,
}

fn match_all() -> String {
    ".*".to_owned()
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// The vhost.
    pub vhost: String,
    /// Configure pattern.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An env-filter directive.
    pub level: String,
    /// Lines of text for people, or one JSON object per line for log collectors.
    pub format: LogFormat,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `time level target: message fields`, with control characters escaped.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` and the event's fields
    /// (`message` among them), strings JSON-escaped.
    Json,
}

/// Merges `overlay` into `base`: tables merge key by key, everything else is replaced.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Loads the embedded default, with the file at `path` (if any) layered over it. TLS file
/// names relative to the file are made relative to its directory.
pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return layered(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    let mut config = layered(Some(&text))
        .with_context(|| format!("invalid configuration file {}", path.display()))?;
    if let Some(dir) = path.parent() {
        let tls = &mut config.tls;
        for file in [&mut tls.certfile, &mut tls.keyfile, &mut tls.cacertfile] {
            if !file.as_os_str().is_empty() && file.is_relative() {
                *file = dir.join(&*file);
            }
        }
    }
    Ok(config)
}

/// The embedded default with `text` (a configuration file's contents, if any) layered over it.
pub fn layered(text: Option<&str>) -> anyhow::Result<Config> {
    let mut value: toml::Value =
        toml::from_str(DEFAULT_CONFIG).context("the embedded default configuration is invalid")?;
    if let Some(text) = text {
        let overlay: toml::Value = toml::from_str(text)?;
        merge(&mut value, overlay);
    }
    value.try_into().context("invalid configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses() {
        let config = load(None).expect("default config");
        assert_eq!(config.listeners.amqp, "0.0.0.0:5672");
        assert_eq!(config.users[0].name, "guest");
        assert_eq!(config.auth.loopback_users, vec!["guest".to_owned()]);
    }

    #[test]
    fn a_user_file_overrides_only_what_it_names() {
        let dir = std::env::temp_dir().join(format!("junction-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("junction.toml");
        std::fs::write(&file, "[amqp]\nheartbeat = 5\n").expect("write");
        let config = load(Some(&file)).expect("config");
        assert_eq!(config.amqp.heartbeat, 5);
        assert_eq!(config.amqp.frame_max, 131072);
        let _ = std::fs::remove_dir_all(dir);
    }
}
