//! The command line: one subcommand per protocol, each with the options every run shares
//! ([`Common`]) and its own.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and benchmark for AMQP 0-9-1, MQTT 3.1.1 and STOMP brokers (Junction,
/// RabbitMQ, Mosquitto, ...), in the spirit of RabbitMQ's PerfTest.
///
/// Every run starts its consumers, publishes for `--duration` seconds, lets the consumers
/// drain, then prints a human summary and one line starting with `JSON ` that holds every
/// figure. The exit code is 2 when a run that must not lose messages (publisher confirms,
/// persistent messages, MQTT QoS 1/2, STOMP receipts) received fewer than it should have.
#[derive(Debug, Parser)]
#[command(name = "junction-perf", version, about, long_about)]
pub struct Cli {
    /// The protocol to drive.
    #[command(subcommand)]
    pub protocol: Protocol,
}

/// The protocol of a run.
#[derive(Debug, Subcommand)]
pub enum Protocol {
    /// AMQP 0-9-1 with lapin: queues `perf-q-<i>` (declared by the tool), optionally behind an
    /// exchange.
    Amqp(AmqpArgs),
    /// MQTT 3.1.1 with a pipelined client of the tool's own: publishers and subscribers on
    /// topic `perf/<run-id>`.
    Mqtt(MqttArgs),
    /// STOMP 1.2 with a small built-in client: SEND to and SUBSCRIBE on `/queue/perf-<run-id>`.
    Stomp(StompArgs),
    /// Bindings on `amq.topic`: time many MQTT subscriptions, or create many durable AMQP
    /// bindings for a restart to recover (see `bench/bindings.sh`).
    Bindings(BindingsArgs),
    /// A consumer that stops reading its socket: it subscribes to a queue (or an MQTT
    /// session) that holds a backlog, then never reads, while the broker's resident memory
    /// is sampled (see `bench/stalled.sh`).
    Stall(StallArgs),
    /// Delayed messages at scale: many persistent messages held by an `x-delayed-message`
    /// exchange at once, then released over a window; reports the broker's memory with all
    /// of them pending and how late each arrived.
    Delayed(DelayedArgs),
}

/// Options of the delayed-messages benchmark.
#[derive(Debug, Clone, Args)]
pub struct DelayedArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker AMQP port.
    #[arg(long, default_value_t = 5672)]
    pub port: u16,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// How many messages.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Body size in bytes (at least 8: the due time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds from the start until the first message is due: longer than publishing takes,
    /// so that every message is pending at once.
    #[arg(long, default_value_t = 120.0)]
    pub hold: f64,
    /// Seconds over which the due times are spread.
    #[arg(long, default_value_t = 100.0)]
    pub spread: f64,
    /// Unconfirmed publishes in flight at most.
    #[arg(long, default_value_t = 1000)]
    pub confirm_window: usize,
    /// The broker's process id, whose memory is sampled.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// The protocol of a stalled consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StallProtocol {
    /// AMQP 0-9-1 `basic.consume` with no-ack on --queue.
    Amqp,
    /// STOMP `SUBSCRIBE` with `ack:auto` on --destination.
    Stomp,
    /// MQTT 3.1.1: the persistent session --client-id (subscribed to --topic with --qos by
    /// `--prepare`) connects again.
    Mqtt,
}

/// Options of a stalled consumer.
#[derive(Debug, Clone, Args)]
pub struct StallArgs {
    /// The protocol.
    #[arg(long, value_enum)]
    pub protocol: StallProtocol,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port [default: 5672 for AMQP, 1883 for MQTT, 61613 for STOMP].
    #[arg(long)]
    pub port: Option<u16>,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Virtual host (AMQP `connection.open`, STOMP `host`).
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// AMQP: the queue to consume from.
    #[arg(long, default_value = "perf-q-0")]
    pub queue: String,
    /// STOMP: the destination to subscribe to.
    #[arg(long, default_value = "/queue/stalled")]
    pub destination: String,
    /// MQTT: the topic filter of the session's subscription.
    #[arg(long, default_value = "perf/stalled")]
    pub topic: String,
    /// MQTT: the QoS of the subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// MQTT: the persistent session's client id.
    #[arg(long, default_value = "perf-stalled")]
    pub client_id: String,
    /// MQTT: only create the persistent session (connect with clean session 0, subscribe,
    /// disconnect), so that publishes queue up for it; nothing is measured.
    #[arg(long)]
    pub prepare: bool,
    /// MQTT: at the end, drop the session (connect again with clean session 1).
    #[arg(long)]
    pub clean_up: bool,
    /// How long the consumer stays stalled while memory is sampled, in seconds.
    #[arg(long, default_value_t = 12.0)]
    pub hold: f64,
    /// The broker's process id, whose VmRSS is sampled (required unless --prepare).
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// What the bindings benchmark does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BindingsPhase {
    /// MQTT SUBSCRIBEs, one filter each, timed.
    Subscribe,
    /// Durable AMQP queues bound to `amq.topic` with many keys.
    Durable,
}

/// Options of the bindings benchmark.
#[derive(Debug, Clone, Args)]
pub struct BindingsArgs {
    /// What to do.
    #[arg(long, value_enum)]
    pub phase: BindingsPhase,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port [default: 1883 for subscribe, 5672 for durable].
    #[arg(long)]
    pub port: Option<u16>,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Subscriptions (subscribe) or bindings (durable) in total.
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// MQTT connections sharing the subscriptions.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Durable queues sharing the bindings, one AMQP channel each.
    #[arg(long, default_value_t = 100)]
    pub queues: usize,
}

/// Options every protocol takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Broker URL (`amqp://user:pass@host:port/vhost`, `mqtt://user:pass@host:port`,
    /// `stomp://user:pass@host:port`); overrides --host, --port, --user and --password.
    #[arg(long)]
    pub url: Option<String>,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port [default: 5672 for AMQP, 1883 for MQTT, 61613 for STOMP].
    #[arg(long)]
    pub port: Option<u16>,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Number of producers (publishers), each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers (subscribers), each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 16: send time and sequence number).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Messages per second for each producer (as in PerfTest); 0 publishes as fast as
    /// possible. Latency figures are only meaningful at a fixed rate the broker sustains.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long the producers publish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages each producer publishes at most (0: no limit); a producer stops at its count
    /// or at the end of --duration, whichever comes first.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Deliveries the consumers should get besides the producers' own: what an earlier run
    /// with the same --run-id left in a queue (see `--producers 0` and AMQP's --existing).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// After the producers stop, how long the consumers may go on draining, at most, in
    /// seconds; they stop earlier once everything expected arrived or nothing arrived for
    /// --idle seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// While draining, stop after this many seconds without a delivery.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// Messages a producer hands to the client library at once when it is behind (or
    /// unlimited): the publishes of one batch are in flight together.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Identifies this run in topic and destination names and in every message (messages of
    /// other runs are counted as `foreign` and otherwise ignored) [default: random].
    #[arg(long)]
    pub run_id: Option<String>,
    /// The broker's process id: its user+system CPU time from /proc/PID/stat over the run is
    /// reported, with messages per broker CPU-second.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress line every second, only the summary and the JSON line.
    #[arg(long)]
    pub quiet: bool,
    /// Connect over TLS, trusting the CA certificates in this PEM file (AMQP: amqps).
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// With --cacert, MQTT and STOMP offer TLS 1.2 only (lapin's AMQP keeps 1.2 and 1.3).
    #[arg(long)]
    pub tls12: bool,
}

/// Options of an AMQP run.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// Options every protocol takes.
    #[command(flatten)]
    pub common: Common,
    /// Number of queues, `perf-q-0` .. `perf-q-<N-1>`, deleted and declared at the start and
    /// deleted at the end. Producer i publishes to queue i mod N (unless an exchange routes
    /// everywhere), consumer j consumes from queue j mod N.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Exchange to publish to; "" is the default exchange (routing by queue name). A name not
    /// starting with `amq.` is declared (and deleted at the end) with --exchange-type, and
    /// every queue is bound to it [default: "", or `perf-fanout` with --exchange-type fanout].
    #[arg(long)]
    pub exchange: Option<String>,
    /// Type of the exchange the tool declares.
    #[arg(long, value_enum, default_value_t = ExchangeType::Direct)]
    pub exchange_type: ExchangeType,
    /// Routing key for every publish, also used as the binding key of every queue (so each
    /// queue gets a copy) [default: the producer's queue name].
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Publisher confirms with at most this many unconfirmed messages per producer; the run
    /// then checks that every confirmed message arrived.
    #[arg(long, value_name = "WINDOW")]
    pub confirm: Option<usize>,
    /// Persistent messages (delivery mode 2) on durable queues (and exchange).
    #[arg(long)]
    pub persistent: bool,
    /// Consume with automatic acknowledgement (no-ack) instead of manual acks.
    #[arg(long)]
    pub auto_ack: bool,
    /// Prefetch (basic.qos) of each consumer with manual acks, which ack with `multiple`
    /// every prefetch/2 messages (every 100 with prefetch 0 = unlimited).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Leave the queues and the exchange on the broker at the end.
    #[arg(long)]
    pub keep: bool,
    /// Use the queues (and exchange) as they are: neither delete nor declare them at the
    /// start, nor delete them at the end (to drain a backlog an earlier `--keep` run left).
    #[arg(long)]
    pub existing: bool,
}

/// Options of an MQTT run.
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    /// Options every protocol takes (--consumers is the number of subscribers, each of
    /// which gets every message).
    #[command(flatten)]
    pub common: Common,
    /// QoS of the publishes and of the subscription; with 1 or 2 the run checks that every
    /// acknowledged publish arrived.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// QoS 1/2 publishes in flight per publisher (packet ids not yet acknowledged).
    #[arg(long, value_name = "WINDOW", default_value_t = 100)]
    pub confirm: u16,
    /// Topic [default: perf/<run-id>].
    #[arg(long)]
    pub topic: Option<String>,
}

/// Options of a STOMP run.
#[derive(Debug, Clone, Args)]
pub struct StompArgs {
    /// Options every protocol takes.
    #[command(flatten)]
    pub common: Common,
    /// Destination of SEND and SUBSCRIBE [default: /queue/perf-<run-id>, a durable queue on
    /// RabbitMQ and Junction that stays after the run].
    #[arg(long)]
    pub destination: Option<String>,
    /// Virtual host (the CONNECT frame's `host` header).
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Ask for a RECEIPT on every SEND, with at most this many outstanding per producer; the
    /// run then checks that every receipted message arrived.
    #[arg(long, value_name = "WINDOW")]
    pub confirm: Option<usize>,
    /// `persistent:true` on every SEND.
    #[arg(long)]
    pub persistent: bool,
    /// Subscribe with `ack:auto` instead of `ack:client` (cumulative ACK every prefetch/2).
    #[arg(long)]
    pub auto_ack: bool,
    /// `prefetch-count` of each subscription with client acks (0 = unlimited, ACK every 100).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u32,
}

/// The exchange types the tool can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by pattern.
    Topic,
}

impl ExchangeType {
    /// The AMQP name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

/// Where to connect and as whom, from --url or --host/--port/--user/--password.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// TLS, when the run is over TLS.
    pub tls: Option<crate::net::Tls>,
}

impl Common {
    /// The endpoint for a `scheme://[user[:password]@]host[:port][/...]` URL or the separate
    /// options, with `default_port` when none is given.
    pub fn endpoint(&self, scheme: &str, default_port: u16) -> anyhow::Result<Endpoint> {
        let mut endpoint = Endpoint {
            host: self.host.clone(),
            port: self.port.unwrap_or(default_port),
            user: self.user.clone(),
            password: self.password.clone(),
            tls: match &self.cacert {
                Some(cacert) => Some(crate::net::Tls::trusting(cacert, self.tls12)?),
                None => None,
            },
        };
        let Some(url) = &self.url else {
            return Ok(endpoint);
        };
        let rest = url
            .strip_prefix(&format!("{scheme}://"))
            .ok_or_else(|| anyhow::anyhow!("--url must start with {scheme}://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = match authority.rsplit_once('@') {
            Some((credentials, host_port)) => {
                match credentials.split_once(':') {
                    Some((user, password)) => {
                        endpoint.user = user.to_owned();
                        endpoint.password = password.to_owned();
                    }
                    None => endpoint.user = credentials.to_owned(),
                }
                host_port
            }
            None => authority,
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| anyhow::anyhow!("unclosed '[' in --url"))?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if !host.is_empty() {
            endpoint.host = host.to_owned();
        }
        if let Some(port) = port {
            endpoint.port = port
                .parse()
                .map_err(|_| anyhow::anyhow!("bad port '{port}' in --url"))?;
        }
        Ok(endpoint)
    }

    /// Checks the options that every protocol shares.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.size >= crate::payload::HEADER_LEN,
            "--size must be at least {} bytes (send time and sequence number)",
            crate::payload::HEADER_LEN
        );
        anyhow::ensure!(
            self.rate >= 0.0 && self.rate.is_finite(),
            "--rate must be 0 or more"
        );
        anyhow::ensure!(
            self.duration > 0.0 && self.duration.is_finite(),
            "--duration must be positive"
        );
        anyhow::ensure!(
            self.drain >= 0.0 && self.idle >= 0.0,
            "--drain and --idle must be 0 or more"
        );
        anyhow::ensure!(self.batch >= 1, "--batch must be at least 1");
        anyhow::ensure!(
            self.producers <= usize::from(u16::MAX),
            "at most {} producers",
            u16::MAX
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(url: Option<&str>) -> Common {
        let cli = Cli::parse_from(
            ["junction-perf", "mqtt"]
                .into_iter()
                .chain(url.map(|u| ["--url", u]).into_iter().flatten()),
        );
        match cli.protocol {
            Protocol::Mqtt(args) => args.common,
            _ => unreachable!(),
        }
    }

    #[test]
    fn endpoint_from_options_and_url() {
        let e = common(None).endpoint("mqtt", 1883).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.user.as_str()),
            ("127.0.0.1", 1883, "guest")
        );
        let e = common(Some("mqtt://a:b@example:1999"))
            .endpoint("mqtt", 1883)
            .unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.user.as_str(),
                e.password.as_str()
            ),
            ("example", 1999, "a", "b")
        );
        let e = common(Some("mqtt://[::1]:1884/x"))
            .endpoint("mqtt", 1883)
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert!(common(Some("amqp://x")).endpoint("mqtt", 1).is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
