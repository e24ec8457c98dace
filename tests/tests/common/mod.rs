//! Helpers shared by the lapin end-to-end tests: bounded waits, connecting, reply codes of
//! channel and connection closes, and small declare/publish/consume/count shortcuts.
//!
//! Every await that talks to the broker goes through [`within`], so a hang fails the test after
//! [`STEP`] instead of blocking the run.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{Stream, StreamExt};
use junction_tests::{Broker, Listeners};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ErrorKind,
    Event, PublisherConfirm,
};
use tokio::time::timeout;

/// The longest any single step may take.
pub const STEP: Duration = Duration::from_secs(10);

/// How long a test waits to be fairly sure that something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Reply codes of AMQP 0-9-1 as RabbitMQ sends them.
pub mod code {
    /// basic.return of an unroutable mandatory message.
    pub const NO_ROUTE: u16 = 312;
    /// The server closed the connection (shutdown).
    pub const CONNECTION_FORCED: u16 = 320;
    /// Permissions, reserved names, exclusive consumers.
    pub const ACCESS_REFUSED: u16 = 403;
    /// Missing exchange or queue.
    pub const NOT_FOUND: u16 = 404;
    /// Another connection's exclusive queue.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Inequivalent redeclare, if-unused/if-empty, unknown delivery tag, mode switches.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Unknown exchange type.
    pub const COMMAND_INVALID: u16 = 503;
    /// Unknown vhost, reused consumer tag.
    pub const NOT_ALLOWED: u16 = 530;
    /// immediate=true, recover with requeue=false, channel.flow active=false.
    pub const NOT_IMPLEMENTED: u16 = 540;
}

/// Awaits `future`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no answer within {STEP:?}"),
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Connects to `url`, returning lapin's answer.
pub async fn try_connect(url: &str) -> lapin::Result<Connection> {
    within(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

/// Connects as guest to the default vhost.
pub async fn connect(broker: &Broker) -> Connection {
    try_connect(&broker.amqp_url()).await.expect("connect")
}

/// Opens a channel.
pub async fn channel(connection: &Connection) -> Channel {
    within("channel.open", connection.create_channel())
        .await
        .expect("channel.open")
}

/// A connection and one channel on it.
pub async fn open(broker: &Broker) -> (Connection, Channel) {
    let connection = connect(broker).await;
    let channel = channel(&connection).await;
    (connection, channel)
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with the AMQP reply `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected reply code {code}, got success {value:?}"),
        Err(error) => assert_eq!(
            reply_code(&error),
            Some(code),
            "{what}: expected reply code {code}, got {error:?}"
        ),
    }
}

/// Watches a connection's events for the errors of closes the broker sends asynchronously (after
/// a basic.publish or basic.ack, which have no reply). Create it before the failing operation.
pub struct ErrorWatch {
    events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl ErrorWatch {
    /// Starts listening to `connection`'s events.
    pub fn new(connection: &Connection) -> Self {
        Self {
            events: Box::pin(connection.events_listener()),
        }
    }

    /// Waits for an error event and returns its reply code.
    pub async fn next_code(&mut self, what: &str) -> Option<u16> {
        loop {
            match within(what, self.events.next()).await {
                Some(Event::Error(error)) => return reply_code(&error),
                Some(_) => continue,
                None => panic!("{what}: the event stream ended without an error"),
            }
        }
    }

    /// Waits for an error event with reply `code`.
    pub async fn expect(&mut self, code: u16, what: &str) {
        let got = self.next_code(what).await;
        assert_eq!(got, Some(code), "{what}: expected a close with {code}");
    }
}

/// Polls `check` until it returns true, at most [`STEP`]; panics otherwise.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: condition not met within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Declares a plain (non-durable, non-exclusive) queue.
pub async fn declare(channel: &Channel, name: &str) {
    within(
        "queue.declare",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
}

/// Binds `queue` to `exchange` with `key` (no arguments), returning lapin's answer.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// Declares a durable queue with `arguments`, returning lapin's answer.
pub async fn declare_durable(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await
}

/// Puts the channel in confirm mode.
pub async fn confirm_select(channel: &Channel) {
    within(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

/// Passively declares `queue`, returning lapin's answer (message and consumer counts).
pub async fn passive(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    within(
        "passive queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// The number of ready messages in `queue` (a passive declare). On the channel that published,
/// this also orders after those publishes.
pub async fn ready(channel: &Channel, queue: &str) -> u32 {
    passive(channel, queue)
        .await
        .expect("passive declare")
        .message_count()
}

/// Whether `queue` exists, asked on a fresh channel (a 404 closes it). Another connection's
/// exclusive queue (405) exists too.
pub async fn exists(connection: &Connection, queue: &str) -> bool {
    let probe = channel(connection).await;
    match passive(&probe, queue).await {
        Ok(_) => {
            let _ = within("channel.close", probe.close(200, "OK".into())).await;
            true
        }
        Err(error) if reply_code(&error) == Some(code::RESOURCE_LOCKED) => true,
        Err(error) if reply_code(&error) == Some(code::NOT_FOUND) => false,
        Err(error) => panic!("passive declare of {queue}: {error:?}"),
    }
}

/// Whether exchange `name` exists, asked on a fresh channel (a 404 closes it).
pub async fn exchange_exists(connection: &Connection, name: &str) -> bool {
    let probe = channel(connection).await;
    let answer = within(
        "passive exchange.declare",
        probe.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match answer {
        Ok(()) => {
            let _ = within("channel.close", probe.close(200, "OK".into())).await;
            true
        }
        Err(error) if reply_code(&error) == Some(code::NOT_FOUND) => false,
        Err(error) => panic!("passive declare of exchange {name}: {error:?}"),
    }
}

/// Publishes `body` with default properties and options.
pub async fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(
        channel,
        exchange,
        routing_key,
        body,
        BasicProperties::default(),
    )
    .await;
}

/// Publishes `body` with `properties`.
pub async fn publish_with(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let _confirm = basic_publish(channel, exchange, routing_key, body, properties).await;
}

/// Publishes `body` with `properties` on a channel in confirm mode and waits for its confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    let confirm = basic_publish(channel, exchange, routing_key, body, properties).await;
    within("confirm", confirm).await.expect("confirmation")
}

/// basic.publish with default options, returning the confirm to await (it resolves at once on
/// a channel that is not in confirm mode).
async fn basic_publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> PublisherConfirm {
    within(
        "basic.publish",
        channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        ),
    )
    .await
    .expect("basic.publish")
}

/// Starts a consumer with `options`.
pub async fn consume_with(
    channel: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Consumer {
    within(
        "basic.consume",
        channel.basic_consume(queue.into(), tag.into(), options, FieldTable::default()),
    )
    .await
    .expect("basic.consume")
}

/// Starts an acknowledging consumer with a server-generated tag.
pub async fn consume(channel: &Channel, queue: &str) -> Consumer {
    consume_with(channel, queue, "", BasicConsumeOptions::default()).await
}

/// The next delivery of `consumer`.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    within("delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Asserts that `consumer` receives nothing for [`QUIET`].
pub async fn nothing_more(consumer: &mut Consumer, what: &str) {
    if let Ok(got) = timeout(QUIET, consumer.next()).await {
        panic!("{what}: expected no delivery, got {got:?}");
    }
}

/// basic.get, expecting a message.
pub async fn get(channel: &Channel, queue: &str, no_ack: bool) -> BasicGetMessage {
    within(
        "basic.get",
        channel.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic.get")
    .expect("basic.get-ok, not get-empty")
}

/// The bodies of messages, as strings, for readable assertions.
pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Starts an AMQP-only broker on a fresh data directory with the configuration `toml`.
pub fn broker_with_config(label: &str, toml: &str) -> Broker {
    Broker::start_configured(junction_tests::temp_dir(label), toml, Listeners::Amqp)
}
