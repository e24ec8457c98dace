//! What every handler of a connection shares: the broker, the logged-in principal and vhost,
//! the outbox, negotiated limits, client capabilities and the permission cache.

use std::net::SocketAddr;
use std::sync::Arc;

use junction_core::persistence::Durability;

use amq_protocol::protocol::{AMQPClass, channel as channel_methods};
use junction_core::auth::AccessCache;
use junction_core::{
    Broker, ConnectionId, ConsumerEvent, ConsumerSink, Permission, Principal, ResourceKind,
    VirtualHost,
};

use crate::error::{AmqpError, AmqpResult, code};
use crate::frame::Outbox;
use crate::settings::Settings;
use junction_core::stats::{
    ConnectionCounters, ConnectionDetails, Family, Registration, TlsSession,
};
use junction_transport::{CloseRequest, LazyChannel};

/// Capabilities the client announced in its client-properties.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    /// It understands a broker-sent basic.cancel.
    pub consumer_cancel_notify: bool,
    /// It wants connection.close (not a bare socket close) on failed authentication.
    pub authentication_failure_close: bool,
    /// It understands connection.blocked / unblocked.
    pub connection_blocked: bool,
}

/// Connection-wide state shared by the handlers.
pub struct Session {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Static settings of the listener.
    pub settings: Arc<Settings>,
    /// This connection's identity in the core.
    pub id: ConnectionId,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The TLS session, when the client came over TLS; its verified certificate's user name
    /// is what `EXTERNAL` logs in as.
    pub tls: Option<Arc<junction_transport::TlsInfo>>,
    /// The SASL mechanism the client logged in with.
    pub auth_mechanism: &'static str,
    /// This connection's place within the connection and channel limits (from
    /// `connection.open`).
    pub limit_slot: Option<junction_core::limits::ConnectionSlot>,
    /// Its place among the connections logging in, until `connection.open`.
    pub login_ticket: Option<Arc<junction_transport::LoginTicket>>,
    /// Frames waiting to be written.
    pub out: Outbox,
    /// Where queues send this connection's deliveries (made by the first consumer).
    pub sink: LazyChannel<ConsumerEvent>,
    /// The sending end every consumer of the connection shares, with its delivery budget.
    consumer_sink: Option<ConsumerSink>,
    /// The logged-in user, after connection.start-ok.
    pub principal: Option<Principal>,
    /// The vhost, after connection.open.
    pub vhost: Option<Arc<VirtualHost>>,
    /// Negotiated maximum frame size.
    pub frame_max: usize,
    /// Negotiated highest channel number.
    pub channel_max: u16,
    /// Negotiated heartbeat interval in seconds (0 = off).
    pub heartbeat: u16,
    /// What the client supports.
    pub capabilities: ClientCapabilities,
    /// Whether the client has published: publishers stop being read during a resource alarm.
    pub has_published: bool,
    /// Set while credit flow holds this publisher: a queue it published to has fallen behind.
    pub flow: Option<junction_core::FlowHold>,
    /// Where the message store reports persistent messages on disk, or failed: (channel,
    /// confirm seq, outcome); made by the first confirmed persistent publish.
    pub durable: LazyChannel<(junction_core::ChannelId, u64, Durability)>,
    permissions: AccessCache,
    /// The client's client-properties, from connection.start-ok.
    pub client_properties: junction_core::FieldTable,
    /// The connection in the broker's list, once it is open.
    pub registration: Option<Registration>,
    /// An operator's request to close the connection.
    pub close_request: Arc<CloseRequest>,
}

impl Session {
    /// A session for a new connection.
    pub fn new(broker: Arc<Broker>, settings: Arc<Settings>, peer: Option<SocketAddr>) -> Self {
        let id = broker.next_connection_id();
        Self {
            broker,
            settings,
            id,
            peer,
            tls: None,
            auth_mechanism: "PLAIN",
            limit_slot: None,
            login_ticket: None,
            out: Outbox::new(),
            sink: LazyChannel::default(),
            consumer_sink: None,
            principal: None,
            vhost: None,
            frame_max: crate::settings::FRAME_MIN_SIZE,
            channel_max: 0,
            heartbeat: 0,
            capabilities: ClientCapabilities::default(),
            has_published: false,
            flow: None,
            durable: LazyChannel::default(),
            permissions: AccessCache::new(),
            client_properties: junction_core::FieldTable::new(),
            registration: None,
            close_request: Arc::new(CloseRequest::default()),
        }
    }

    /// Lists the connection in the broker's registry (once it is open on `vhost`), closable
    /// through its close request.
    pub fn register(&mut self, vhost: &str) {
        let user = self
            .principal
            .as_ref()
            .map(|p| p.user.name.clone())
            .unwrap_or_default();
        let tls = self.tls.as_deref().map(|tls| TlsSession {
            version: tls.version,
            cipher: tls.cipher,
        });
        let details = ConnectionDetails::new(Family::Amqp, "AMQP 0-9-1", self.peer, user, vhost)
            .with_client_properties(std::mem::take(&mut self.client_properties))
            .with_tls(tls)
            .with_auth_mechanism(self.auth_mechanism);
        let close_request = self.close_request.clone();
        self.registration = Some(self.broker.connections().register(
            self.id,
            details,
            Box::new(move |reason| close_request.request(reason)),
        ));
    }

    /// The connection's counters, once it is open.
    pub fn counters(&self) -> Option<&ConnectionCounters> {
        self.registration.as_ref().map(|r| &r.counters)
    }

    /// `count` publishes confirmed.
    pub fn count_confirmed(&self, count: u64) {
        if let Some(registration) = &self.registration {
            registration.messages().confirmed(count);
        }
    }

    /// Where this connection's consumers send their deliveries (made on first use).
    pub fn consumer_sink(&mut self) -> ConsumerSink {
        let budget = self.broker.config().delivery_budget;
        ConsumerSink::shared(&mut self.consumer_sink, || self.sink.sender(), budget)
    }

    /// The vhost; only called once the connection is open.
    pub fn vhost(&self) -> AmqpResult<Arc<VirtualHost>> {
        self.vhost
            .clone()
            .ok_or_else(|| AmqpError::connection(code::COMMAND_INVALID, "connection not open"))
    }

    /// Refuses with 403 unless the user may do `permission` on the named resource. Answers are
    /// remembered for the authoriser's TTL (a bounded number of names).
    pub async fn authorize(
        &mut self,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> AmqpResult<()> {
        let (Some(principal), Some(vhost)) = (&self.principal, &self.vhost) else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "connection not open",
            ));
        };
        let allowed = self
            .permissions
            .allowed(principal, &vhost.name, kind, name, permission)
            .await;
        if allowed {
            return Ok(());
        }
        let shown = if kind == ResourceKind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let user = self
            .principal
            .as_ref()
            .map(|p| p.user.name.as_str())
            .unwrap_or("");
        let vhost = self.vhost.as_ref().map(|v| v.name.as_str()).unwrap_or("");
        Err(AmqpError::channel(
            code::ACCESS_REFUSED,
            format!(
                "{} access to {} '{shown}' in vhost '{vhost}' refused for user '{user}'",
                permission.as_str(),
                kind.as_str()
            ),
        ))
    }

    /// Refuses with 403 unless the user may use `routing_key` for `permission` (write to
    /// publish, read to bind) on `exchange`, when it is a topic exchange (RabbitMQ's topic
    /// authorisation; other exchange types are not checked).
    pub async fn authorize_topic(
        &mut self,
        exchange: &junction_core::Exchange,
        routing_key: &str,
        permission: Permission,
    ) -> AmqpResult<()> {
        let (Some(principal), Some(vhost)) = (&self.principal, &self.vhost) else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "connection not open",
            ));
        };
        if self
            .permissions
            .topic_allowed(
                principal,
                &vhost.name,
                exchange,
                routing_key,
                permission,
                None,
            )
            .await
        {
            return Ok(());
        }
        Err(AmqpError::channel(
            code::ACCESS_REFUSED,
            junction_core::auth::topic_refusal(
                permission,
                routing_key,
                &exchange.name,
                &vhost.name,
                &principal.user.name,
            ),
        ))
    }

    /// Refuses with 403 unless the user may bind with `routing_key` on exchange `source`
    /// (topic read, when `source` exists and is a topic exchange; a missing one is refused
    /// by the bind itself, with 404).
    pub async fn authorize_binding_key(
        &mut self,
        source: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        match self.vhost()?.exchange(source) {
            Ok(exchange) => {
                self.authorize_topic(&exchange, routing_key, Permission::Read)
                    .await
            }
            Err(_) => Ok(()),
        }
    }

    /// Writes a method frame.
    pub fn send(&mut self, channel: u16, method: AMQPClass) {
        self.out.method(channel, &method);
    }

    /// Writes channel.close for a soft error.
    pub fn send_channel_close(&mut self, channel: u16, error: &AmqpError) {
        self.send(
            channel,
            AMQPClass::Channel(channel_methods::AMQPMethod::Close(channel_methods::Close {
                reply_code: error.code,
                reply_text: error.reply_text().into(),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        );
    }
}
