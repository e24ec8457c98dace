//! The Junction broker as a library: [`Junction`] registers exchange types and auth backends
//! (the built-in plugins, and yours), then [`Junction::run`] parses the usual command line,
//! loads the configuration, starts the listeners and shuts down cleanly on SIGINT or SIGTERM.
//! The `junction` binary is `Junction::new().run()`; a broker with out-of-tree plugins is a
//! crate whose `main` adds them first (see `examples/plugin/`).

mod alarms;
mod config;
mod demo;
mod listeners;
mod logging;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use junction_core::auth::{PasswordHash, TopicPermission, UserRecord, VhostPermissions};
use junction_core::{
    AuthBackend, Authorizer, Broker, BrokerConfig, ExchangeType, ExchangeTypeRegistry,
    InternalUsers, Storage,
};
use junction_transport::{
    Alpn, CertificateName, ListenAddr, SanKind, TlsListener, WebSocketLimits, WebSocketRoutes,
};
use listeners::Listeners;
use tokio::sync::watch;

/// Junction, a multi-protocol message broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file, layered over the embedded default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// AMQP 0-9-1 listener (host:port, port 0 = any free port, or off).
    #[arg(long)]
    amqp: Option<ListenAddr>,
    /// MQTT listener.
    #[arg(long)]
    mqtt: Option<ListenAddr>,
    /// STOMP listener.
    #[arg(long)]
    stomp: Option<ListenAddr>,
    /// HTTP listener (management API, WebSocket).
    #[arg(long)]
    http: Option<ListenAddr>,
    /// STOMP-over-WebSocket listener.
    #[arg(long)]
    web_stomp: Option<ListenAddr>,
    /// MQTT-over-WebSocket listener.
    #[arg(long)]
    web_mqtt: Option<ListenAddr>,
    /// Prometheus metrics listener (/metrics).
    #[arg(long)]
    prometheus: Option<ListenAddr>,
    /// AMQP 0-9-1 over TLS (starts when [tls] certfile is set).
    #[arg(long)]
    amqps: Option<ListenAddr>,
    /// MQTT over TLS.
    #[arg(long)]
    mqtts: Option<ListenAddr>,
    /// STOMP over TLS.
    #[arg(long)]
    stomps: Option<ListenAddr>,
    /// HTTPS listener (management API, console, WebSocket).
    #[arg(long)]
    https: Option<ListenAddr>,
    /// STOMP-over-WebSocket over TLS.
    #[arg(long)]
    web_stomps: Option<ListenAddr>,
    /// MQTT-over-WebSocket over TLS.
    #[arg(long)]
    web_mqtts: Option<ListenAddr>,
    /// Prometheus metrics over TLS.
    #[arg(long)]
    prometheus_tls: Option<ListenAddr>,
}

/// How long connections get to close after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a broker registers beyond the built-in types and the internal users.
type AuthFactory = Box<dyn Fn(&BackendSettings<'_>) -> Result<Arc<dyn AuthBackend>, BuildError>>;

/// Why a plugin could not be built from its settings.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The settings section of one auth backend: `[auth.<name>]` in the configuration.
pub struct BackendSettings<'a> {
    name: &'a str,
    section: Option<&'a toml::Value>,
}

impl BackendSettings<'_> {
    /// The backend's name, as `[auth] backends` lists it.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The `[auth.<name>]` section read as `T`; None when the configuration has none.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, BuildError> {
        match self.section {
            None => Ok(None),
            Some(section) => T::deserialize(section.clone())
                .map(Some)
                .map_err(|error| format!("[auth.{}]: {error}", self.name).into()),
        }
    }

    /// The `[auth.<name>]` section read as `T`; an error when there is none.
    pub fn require<T: serde::de::DeserializeOwned>(&self) -> Result<T, BuildError> {
        self.parse()?.ok_or_else(|| {
            format!(
                "[auth] backends names {}, but there is no [auth.{}]",
                self.name, self.name
            )
            .into()
        })
    }
}

/// A Junction broker to build: its exchange types and auth backends, then [`Junction::run`].
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     junction::Junction::new().run()
/// }
/// ```
pub struct Junction {
    exchange_types: Vec<Arc<dyn ExchangeType>>,
    auth_backends: Vec<(String, AuthFactory)>,
}

impl Default for Junction {
    fn default() -> Self {
        Self::new()
    }
}

impl Junction {
    /// A broker with the built-in plugins: the `x-random`, `x-consistent-hash` and
    /// `x-delayed-message` exchange types, and the `http` and `jwt` auth backends (enabled by
    /// naming them in `[auth] backends`). The internal user database is always there, as
    /// `internal`.
    pub fn new() -> Self {
        Self {
            exchange_types: Vec::new(),
            auth_backends: Vec::new(),
        }
        .exchange_type(junction_plugin_random_exchange::RandomExchange)
        .exchange_type(junction_plugin_consistent_hash_exchange::ConsistentHashExchange)
        .exchange_type(junction_plugin_delayed_message_exchange::DelayedMessageExchange)
        .auth_backend("http", |settings| {
            let settings: junction_plugin_auth_http::Settings = settings.require()?;
            Ok(Arc::new(junction_plugin_auth_http::HttpBackend::new(
                settings,
            )))
        })
        .auth_backend("jwt", |settings| {
            let settings: junction_plugin_auth_jwt::Settings = settings.require()?;
            Ok(Arc::new(junction_plugin_auth_jwt::JwtBackend::new(
                settings,
            )?))
        })
    }

    /// Registers an exchange type (replacing a type of the same name).
    pub fn exchange_type(mut self, kind: impl ExchangeType) -> Self {
        self.exchange_types.push(Arc::new(kind));
        self
    }

    /// Registers an auth backend under `name`: when `[auth] backends` lists `name`, `make`
    /// builds it from its `[auth.<name>]` section.
    pub fn auth_backend<F>(mut self, name: &str, make: F) -> Self
    where
        F: Fn(&BackendSettings<'_>) -> Result<Arc<dyn AuthBackend>, BuildError> + 'static,
    {
        self.auth_backends.retain(|(known, _)| known != name);
        self.auth_backends.push((name.to_owned(), Box::new(make)));
        self
    }

    /// Runs the broker with the process's command line until SIGINT or SIGTERM; the exit
    /// code says whether it started and stopped cleanly.
    pub fn run(self) -> std::process::ExitCode {
        match self.start() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("junction: {error:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    fn start(self) -> anyhow::Result<()> {
        let cli = Cli::parse();
        let config = config::load(cli.config.as_deref())?;
        init_logging(&config.log.level, config.log.format);
        raise_open_files_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(run(cli, config, self))
    }

    /// The exchange types: the built-in four, then the registered ones.
    fn registry(&self) -> Arc<ExchangeTypeRegistry> {
        let registry = Arc::new(ExchangeTypeRegistry::with_builtins());
        for kind in &self.exchange_types {
            registry.register(kind.clone());
        }
        registry
    }

    /// The auth backends `[auth] backends` names, in order, behind one authoriser.
    /// Also returns the internal user database, when `[auth] backends` names it.
    fn authorizer(
        &self,
        config: &config::Config,
    ) -> anyhow::Result<(Authorizer, Option<Arc<InternalUsers>>)> {
        for section in config.auth.sections.keys() {
            anyhow::ensure!(
                self.auth_backends.iter().any(|(name, _)| name == section),
                "unknown key or section '{section}' in [auth]"
            );
        }
        let mut backends: Vec<Arc<dyn AuthBackend>> = Vec::new();
        let mut internal = None;
        for name in &config.auth.backends {
            if name == "internal" {
                let users = Arc::new(internal_users(config, PasswordHash::new)?);
                internal = Some(users.clone());
                backends.push(users);
                continue;
            }
            let Some((_, make)) = self.auth_backends.iter().find(|(known, _)| known == name) else {
                let mut known = vec!["internal".to_owned()];
                known.extend(self.auth_backends.iter().map(|(name, _)| name.clone()));
                anyhow::bail!(
                    "unknown auth backend '{name}' in [auth] backends (known: {})",
                    known.join(", ")
                );
            };
            let settings = BackendSettings {
                name,
                section: config.auth.sections.get(name),
            };
            backends.push(
                make(&settings)
                    .map_err(|error| anyhow::anyhow!("auth backend '{name}': {error}"))?,
            );
        }
        anyhow::ensure!(!backends.is_empty(), "[auth] backends names no backend");
        let authorizer = Authorizer::new(backends, Duration::from_millis(config.auth.cache_ttl_ms));
        Ok((authorizer, internal))
    }
}

fn init_logging(level: &str, format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        config::LogFormat::Text => tracing_subscriber::fmt()
            .fmt_fields(logging::EscapedFields)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // JSON escapes every string itself, so a field from the network cannot forge a line.
        config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// Raises the soft limit on open files to the hard limit, as RabbitMQ's start scripts ask
/// operators to: at the usual default of 1,024 a few hundred idle sockets on one listener
/// would make every listener refuse new clients ("Too many open files").
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open files limit");
            return;
        }
    };
    if soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
        return;
    }
    let raised = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    tracing::info!(
        open_files_limit = raised,
        was = soft,
        hard,
        "open files limit: {raised}"
    );
}

/// Checks a configuration file's contents as `--config` reads them: layered over the embedded
/// default, deserialised, and the users' hashes and permission patterns compiled (plain
/// passwords are hashed the cheap way: only their checks matter here). Starts nothing; the
/// `config_toml` fuzz target and tools use it.
pub fn check_config(text: &str) -> anyhow::Result<()> {
    let config = config::layered(Some(text))?;
    internal_users(&config, PasswordHash::sha256)?;
    Ok(())
}

/// WebSocket limits for a protocol whose largest frame is `max_frame` bytes and whose login
/// frame is at most `max_login_frame`: a WebSocket frame's header takes at most 14 bytes, and
/// a client may split its login over a few.
fn websocket_limits(max_frame: usize, max_login_frame: usize) -> WebSocketLimits {
    WebSocketLimits {
        max_message_size: max_frame.saturating_add(64),
        pre_login_bytes: max_login_frame.saturating_add(1024),
    }
}

fn listener_addr(flag: Option<ListenAddr>, configured: &str) -> anyhow::Result<ListenAddr> {
    match flag {
        Some(addr) => Ok(addr),
        None => configured
            .parse()
            .map_err(|e: String| anyhow::anyhow!("invalid listener address in configuration: {e}")),
    }
}

/// Builds the internal user database from the configuration, plain passwords hashed by `hash`.
fn internal_users(
    config: &config::Config,
    hash: fn(&str) -> PasswordHash,
) -> anyhow::Result<InternalUsers> {
    let users = InternalUsers::new();
    for user in &config.users {
        let password = match (&user.password, &user.password_hash) {
            (_, Some(hash)) => PasswordHash::from_encoded(hash)
                .with_context(|| format!("user '{}': invalid password_hash", user.name))?,
            (Some(plain), None) => hash(plain),
            (None, None) => anyhow::bail!(
                "user '{}' has neither password nor password_hash",
                user.name
            ),
        };
        let mut record = UserRecord::new(password, user.tags.clone());
        for p in &user.permissions {
            let compiled = VhostPermissions::new(&p.configure, &p.write, &p.read)
                .with_context(|| format!("user '{}': invalid permission pattern", user.name))?;
            record.permissions.insert(p.vhost.clone(), compiled);
        }
        for t in &user.topic_permissions {
            let compiled = TopicPermission::new(&t.vhost, &t.exchange, &t.write, &t.read)
                .with_context(|| {
                    format!("user '{}': invalid topic permission pattern", user.name)
                })?;
            record.topic_permissions.push(Arc::new(compiled));
        }
        users.put_user(&user.name, record);
    }
    for name in &config.auth.loopback_users {
        users.set_loopback_only(name);
    }
    Ok(users)
}

async fn run(cli: Cli, config: config::Config, junction: Junction) -> anyhow::Result<()> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;

    let registry = junction.registry();
    let definitions_to_load = match config.definitions.load.as_str() {
        "" => None,
        path => Some(junction_admin::definitions::Definitions::read(
            std::path::Path::new(path),
        )?),
    };
    let (auth, internal_users) = junction.authorizer(&config)?;
    let default_vhost = config
        .vhosts
        .first()
        .map(|v| v.name.clone())
        .unwrap_or_else(|| "/".to_owned());
    let definitions = Arc::new(junction_store::Definitions::open(&data_dir)?);
    let adapter_state: Arc<dyn junction_core::AdapterStateStore> = definitions.clone();
    let managed_state = adapter_state.clone();
    let started = std::time::Instant::now();
    let (messages, report) = junction_store::MessageLog::open(&data_dir)?;
    tracing::info!(
        messages = report.messages,
        segments = report.segments,
        truncated = report.truncated.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "message log recovered"
    );
    let messages = Arc::new(messages);
    // Paged-out transient bodies do not survive a restart: the overflow starts empty.
    let overflow = junction_store::OverflowFiles::open(&data_dir)?;
    let plugin_state = junction_store::PluginStateFile::open(&data_dir)?;
    let storage = Storage {
        definitions: Some(definitions),
        messages: Some(messages.clone()),
        overflow: Some(Arc::new(overflow)),
        plugin_state: Some(Arc::new(plugin_state)),
        max_loaded_bytes_per_queue: config.storage.max_loaded_bytes_per_queue,
        queue_mailbox: config.flow.queue_mailbox,
    };
    let broker = Broker::with_store(
        BrokerConfig {
            default_vhost,
            delivery_budget: config.flow.delivery_budget,
        },
        registry,
        auth,
        storage,
    );
    let limits = broker.limits();
    limits.set_connection_max(
        (config.limits.connection_max > 0).then_some(config.limits.connection_max),
    );
    for vhost in &config.vhosts {
        limits.set_vhost_limits(
            &vhost.name,
            junction_core::limits::VhostLimits {
                max_connections: vhost.max_connections,
                max_queues: vhost.max_queues,
            },
        );
        broker.add_vhost(&vhost.name);
    }
    for user in &config.users {
        limits.set_user_limits(
            &user.name,
            junction_core::limits::UserLimits {
                max_connections: user.max_connections,
                max_channels: user.max_channels,
                publish_rate: junction_core::limits::PublishRate {
                    messages: user.max_publish_rate,
                    bytes: user.max_publish_bytes_rate,
                },
            },
        );
    }
    let admin = junction_admin::Admin::new(broker.clone(), internal_users, Some(managed_state));
    if let Some(definitions) = &definitions_to_load {
        admin.import(definitions, None, false).await?;
    }
    // What operators changed through the API is newer than the configuration and the file.
    admin
        .restore()
        .await
        .map_err(|error| anyhow::anyhow!("cannot restore managed users and vhosts: {error}"))?;
    admin.set_resource_probe(alarms::resource_probe(
        config.alarms.clone(),
        data_dir.clone(),
    ));
    let disk_alarm = Arc::new(alarms::DiskAlarm::new(
        broker.clone(),
        config.alarms.disk_free_limit,
    ));
    let watched = disk_alarm.clone();
    messages.watch_space(Box::new(move |free| watched.update(free)));

    let amqp_settings = Arc::new(junction_amqp::Settings {
        frame_max: config.amqp.frame_max.max(4096),
        channel_max: config.amqp.channel_max,
        heartbeat: config.amqp.heartbeat,
        max_message_size: config.amqp.max_message_size,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms.max(1)),
        consumer_max_per_channel: config.limits.consumer_max_per_channel,
        ..Default::default()
    });

    let mqtt_settings = junction_mqtt::Settings {
        exchange: config.mqtt.exchange.clone(),
        max_packet_size: config.mqtt.max_packet_size,
        max_inflight: config.mqtt.max_inflight.max(1),
        max_queued_qos0: config.mqtt.max_queued_qos0,
        park_idle_connections: config.mqtt.park_idle_connections,
        allow_anonymous: config.mqtt.allow_anonymous,
        anonymous_user: config.mqtt.anonymous_user.clone(),
        anonymous_password: config.mqtt.anonymous_password.clone(),
        connect_timeout: Duration::from_millis(config.limits.handshake_timeout_ms.max(1)),
        publish_rate_per_client: junction_core::limits::PublishRate {
            messages: (config.mqtt.max_publish_rate_per_client > 0)
                .then_some(config.mqtt.max_publish_rate_per_client),
            bytes: (config.mqtt.max_publish_bytes_rate_per_client > 0)
                .then_some(config.mqtt.max_publish_bytes_rate_per_client),
        },
        ..Default::default()
    };
    // An MQTT fixed header adds at most 5 bytes to the remaining length.
    let mqtt_over_websocket_limits = websocket_limits(
        mqtt_settings.max_packet_size.saturating_add(5),
        mqtt_settings.max_connect_size.saturating_add(5),
    );
    let mqtt = junction_mqtt::Mqtt::new(broker.clone(), mqtt_settings, Some(adapter_state));
    admin.set_mqtt_view(Arc::new(MqttView(mqtt.clone())));

    let stomp_settings = Arc::new(junction_stomp::Settings {
        limits: junction_stomp::codec::Limits {
            max_header_bytes: config.stomp.max_header_size.max(1024),
            max_headers: config.stomp.max_headers.max(8),
            max_body_bytes: config.stomp.max_body_size,
        },
        heartbeat_ms: config.stomp.heartbeat_ms,
        allow_anonymous: config.stomp.allow_anonymous,
        anonymous_user: config.stomp.anonymous_user.clone(),
        anonymous_password: config.stomp.anonymous_password.clone(),
        unknown_host_uses_default_vhost: config.stomp.unknown_host_uses_default_vhost,
        connect_timeout: Duration::from_millis(config.limits.handshake_timeout_ms.max(1)),
        ..Default::default()
    });
    let stomp_over_websocket_limits = websocket_limits(
        stomp_settings.limits.max_frame_bytes(),
        stomp_settings.limits.pre_login().max_frame_bytes(),
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let handshake_timeout = Duration::from_millis(config.limits.handshake_timeout_ms.max(1));
    let tls = match tls_files(&config.tls) {
        None => None,
        Some(files) => Some(junction_transport::Tls::load(files).context("cannot start TLS")?),
    };
    // A TLS listener offering `alpn`, when TLS is configured.
    let secure = |alpn| {
        tls.clone().map(|tls| TlsListener {
            tls,
            alpn,
            handshake_timeout,
        })
    };
    let listeners = &config.listeners;
    // The plain and the TLS address of each listener; a TLS listener is off without TLS.
    let addrs = |plain: (Option<ListenAddr>, &str), secured: (Option<ListenAddr>, &str)| {
        let plain = listener_addr(plain.0, plain.1)?;
        let secured = match tls {
            Some(_) => listener_addr(secured.0, secured.1)?,
            None => ListenAddr::Off,
        };
        anyhow::Ok((plain, secured))
    };
    let (amqp_addr, amqps_addr) = addrs(
        (cli.amqp.clone(), &listeners.amqp),
        (cli.amqps.clone(), &listeners.amqps),
    )?;
    let (mqtt_addr, mqtts_addr) = addrs(
        (cli.mqtt.clone(), &listeners.mqtt),
        (cli.mqtts.clone(), &listeners.mqtts),
    )?;
    let (stomp_addr, stomps_addr) = addrs(
        (cli.stomp.clone(), &listeners.stomp),
        (cli.stomps.clone(), &listeners.stomps),
    )?;
    let (http_addr, https_addr) = addrs(
        (cli.http.clone(), &listeners.http),
        (cli.https.clone(), &listeners.https),
    )?;
    let (web_mqtt_addr, web_mqtts_addr) = addrs(
        (cli.web_mqtt.clone(), &listeners.web_mqtt),
        (cli.web_mqtts.clone(), &listeners.web_mqtts),
    )?;
    let (web_stomp_addr, web_stomps_addr) = addrs(
        (cli.web_stomp.clone(), &listeners.web_stomp),
        (cli.web_stomps.clone(), &listeners.web_stomps),
    )?;
    let (prometheus_addr, prometheus_tls_addr) = addrs(
        (cli.prometheus.clone(), &listeners.prometheus),
        (cli.prometheus_tls.clone(), &listeners.prometheus_tls),
    )?;

    tokio::spawn(alarms::watch_resources(
        broker.clone(),
        config.alarms.clone(),
        data_dir.clone(),
        disk_alarm,
        shutdown_rx.clone(),
    ));
    tokio::spawn(admin.clone().sample_rates(shutdown_rx.clone()));
    let mut running = Listeners::new(
        shutdown_rx.clone(),
        admin.clone(),
        handshake_timeout,
        junction_transport::LoginGate::new(config.limits.unauthenticated_connection_max),
    );
    for (name, addr, tls) in [
        ("amqp", amqp_addr, None),
        ("amqps", amqps_addr, secure(Alpn::None)),
    ] {
        let broker = broker.clone();
        let settings = amqp_settings.clone();
        running
            .tcp(name, addr, tls, move |stream, peer, shutdown| {
                junction_amqp::serve(stream, peer, broker.clone(), settings.clone(), shutdown)
            })
            .await?;
    }
    tokio::spawn(mqtt.clone().close_connections_on(shutdown_rx.clone()));
    let mqtt_at_shutdown = mqtt.clone();
    for (name, addr, tls) in [
        ("mqtt", mqtt_addr, None),
        ("mqtts", mqtts_addr, secure(Alpn::Mqtt)),
    ] {
        let mqtt = mqtt.clone();
        running
            .tcp(name, addr, tls, move |stream, peer, _shutdown| {
                junction_mqtt::serve(stream, peer, mqtt.clone())
            })
            .await?;
    }
    let mqtt_over_websocket = running.websocket_protocol(
        vec!["mqtt"],
        false,
        mqtt_over_websocket_limits,
        move |stream, peer, _shutdown| junction_mqtt::serve(stream, peer, mqtt.clone()),
    );
    for (name, addr, tls) in [
        ("stomp", stomp_addr, None),
        ("stomps", stomps_addr, secure(Alpn::None)),
    ] {
        let broker = broker.clone();
        let settings = stomp_settings.clone();
        running
            .tcp(name, addr, tls, move |stream, peer, shutdown| {
                junction_stomp::serve(stream, peer, broker.clone(), settings.clone(), shutdown)
            })
            .await?;
    }
    let stomp_broker = broker.clone();
    let stomp_over_websocket = running.websocket_protocol(
        vec!["v12.stomp", "v11.stomp", "v10.stomp"],
        true,
        stomp_over_websocket_limits,
        move |stream, peer, shutdown| {
            junction_stomp::serve(
                stream,
                peer,
                stomp_broker.clone(),
                stomp_settings.clone(),
                shutdown,
            )
        },
    );
    let http_routes = WebSocketRoutes {
        protocols: vec![mqtt_over_websocket.clone(), stomp_over_websocket.clone()],
        fallback: None,
        files: demo::FILES.to_vec(),
        extra: Some(admin.router()),
    };
    let web_mqtt_routes = WebSocketRoutes {
        protocols: vec![mqtt_over_websocket],
        fallback: Some(0),
        files: Vec::new(),
        extra: None,
    };
    let web_stomp_routes = WebSocketRoutes {
        protocols: vec![stomp_over_websocket],
        fallback: Some(0),
        files: Vec::new(),
        extra: None,
    };
    for (name, addr, tls, routes) in [
        ("http", http_addr, None, http_routes.clone()),
        ("https", https_addr, secure(Alpn::Http), http_routes),
        ("web-mqtt", web_mqtt_addr, None, web_mqtt_routes.clone()),
        (
            "web-mqtts",
            web_mqtts_addr,
            secure(Alpn::Http),
            web_mqtt_routes,
        ),
        ("web-stomp", web_stomp_addr, None, web_stomp_routes.clone()),
        (
            "web-stomps",
            web_stomps_addr,
            secure(Alpn::Http),
            web_stomp_routes,
        ),
    ] {
        running.websocket(name, addr, tls, routes).await?;
    }
    running
        .http("prometheus", prometheus_addr, None, admin.metrics_router())
        .await?;
    running
        .http(
            "prometheus-tls",
            prometheus_tls_addr,
            secure(Alpn::Http),
            admin.metrics_router(),
        )
        .await?;
    // Signal handlers go in before `ready`, so a SIGTERM right after it is a clean stop.
    let signals = Signals::install()?;
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(data_dir = %data_dir.display(), "junction is ready");

    signals.wait(tls.as_deref()).await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let listeners_closed = running.stopped(SHUTDOWN_GRACE).await;
    // Parked MQTT connections have no task the listeners could wait for.
    let mqtt_closed = tokio::time::timeout_at(deadline, mqtt_at_shutdown.connections_closed())
        .await
        .is_ok();
    if !(listeners_closed && mqtt_closed) {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    // The removals that closing connections and queues sent (acks, no-ack gets) are on disk
    // before the process ends, so a clean stop never brings a settled message back.
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    junction_core::persistence::MessageStore::sync(
        &*messages,
        Box::new(move |_| {
            let _ = synced_tx.send(());
        }),
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, synced).await.is_err() {
        tracing::warn!("the message log did not finish writing within {SHUTDOWN_GRACE:?}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// MQTT's sessions and retained messages, for the management API.
struct MqttView(Arc<junction_mqtt::Mqtt>);

impl junction_admin::mqtt::MqttView for MqttView {
    fn sessions(&self) -> Vec<junction_admin::mqtt::MqttSession> {
        self.0
            .session_summaries()
            .into_iter()
            .map(|s| junction_admin::mqtt::MqttSession {
                vhost: s.vhost,
                client_id: s.client_id,
                connected: s.connected,
                subscriptions: s.subscriptions,
            })
            .collect()
    }

    fn retained(&self, vhost: &str) -> Vec<junction_admin::mqtt::RetainedMessage> {
        self.0
            .retained_messages(vhost)
            .into_iter()
            .map(
                |(topic, qos, payload)| junction_admin::mqtt::RetainedMessage {
                    topic,
                    qos,
                    payload,
                },
            )
            .collect()
    }
}

/// SIGTERM and SIGINT, which stop the broker, and SIGHUP, which reloads the TLS files;
/// installed once.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT, reloading `tls` at each SIGHUP meanwhile.
    async fn wait(mut self, tls: Option<&junction_transport::Tls>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => match tls {
                    None => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
                    Some(tls) => match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and CA reloaded"),
                        Err(error) => tracing::error!(%error, "SIGHUP: cannot reload TLS; the previous certificate stays in force"),
                    },
                },
            }
        }
    }
}

/// What the TLS listeners need from `[tls]`; None when no certificate is configured.
fn tls_files(config: &config::TlsConfig) -> Option<junction_transport::TlsFiles> {
    if config.certfile.as_os_str().is_empty() {
        return None;
    }
    let login_name = config
        .ssl_cert_login
        .then_some(match config.ssl_cert_login_from {
            config::CertLoginFrom::CommonName => CertificateName::CommonName,
            config::CertLoginFrom::SubjectAlternativeName => {
                CertificateName::SubjectAltName(match config.ssl_cert_login_san_type {
                    config::SanType::Dns => SanKind::Dns,
                    config::SanType::Email => SanKind::Email,
                    config::SanType::Uri => SanKind::Uri,
                })
            }
        });
    Some(junction_transport::TlsFiles {
        certfile: config.certfile.clone(),
        keyfile: config.keyfile.clone(),
        cacertfile: (!config.cacertfile.as_os_str().is_empty()).then(|| config.cacertfile.clone()),
        verify_peer: config.verify_peer,
        fail_if_no_peer_cert: config.fail_if_no_peer_cert,
        login_name,
    })
}
