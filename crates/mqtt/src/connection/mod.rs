//! One MQTT connection's state machine. It is fed decoded packets, consumer events and
//! durability notices, calls the core, and leaves encoded packets in its output buffer; it does
//! no I/O (the driver in `io.rs` moves the bytes and keeps the timers).
//!
//! - `connect.rs`: CONNECT, authentication, takeover, session resumption.
//! - `publish.rs`: PUBLISH from the client (QoS 0/1/2, retain), routing, the will.
//! - `subscribe.rs`: SUBSCRIBE and UNSUBSCRIBE, the session's queue and its bindings.
//! - `deliver.rs`: deliveries to the client, packet identifiers and the client's acks.

mod connect;
mod deliver;
mod publish;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use junction_core::auth::AccessCache;
use junction_core::ledger::{Answer, Ledger, Seq};
use junction_core::persistence::Durability;
use junction_core::queue::MessageSeq;
use junction_core::stats::{ConnectionState, Family};
use junction_core::{
    ChannelId, ConnectionId, ConsumerEvent, Exchange, Permission, Principal, QueueHandle,
    ResourceKind, VirtualHost,
};
use junction_transport::LazyChannel;

use crate::codec::{self, DecodeError, LastWill, Packet};
use crate::sessions::{Claim, SessionKey, SessionState};
use crate::settings::Mqtt;
use crate::signal::Signal;

/// What the driver does after handing the connection some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep going.
    Continue,
    /// Close the socket. `graceful` is true only after DISCONNECT (no will is published).
    Close {
        /// The client said DISCONNECT.
        graceful: bool,
    },
}

/// A breach of the protocol: the connection closes (MQTT 3.1.1 has no error packet).
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) String);

impl From<DecodeError> for Violation {
    fn from(error: DecodeError) -> Self {
        Violation(error.to_string())
    }
}

type Handled = Result<Next, Violation>;

/// The packet type of PUBLISH, in the high nibble of a packet's first byte.
const PUBLISH_TYPE: u8 = 3;

/// A delivery sent at QoS 1 or 2 and not yet acknowledged by the client.
struct Inflight {
    /// Its position in the session's queue (None for a retained message sent on subscribe).
    seq: Option<MessageSeq>,
    /// Sent at QoS 2: PUBREC is awaited (otherwise PUBACK).
    exactly_once: bool,
}

/// Why a connection closes when the message store cannot write its publication.
const NOT_STORED: &str = "the message store could not write a QoS 1/2 publication";

/// How long a kept session that ends waits for the message store to report the QoS 2
/// publications whose PUBREC it still owes, before it forgets them.
const PUBREC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An acknowledgement owed to the client. They wait in the session's durability ledger, in
/// the order of the packets they answer: one whose message must reach the disk first holds
/// back those behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwedAck {
    /// PUBACK: a QoS 1 publication is taken.
    Puback(u16),
    /// PUBREC: a QoS 2 publication is taken.
    Pubrec(u16),
    /// PUBCOMP: a QoS 2 exchange is complete.
    Pubcomp(u16),
}

impl OwedAck {
    fn packet(self) -> Packet {
        match self {
            OwedAck::Puback(id) => Packet::PubAck(id),
            OwedAck::Pubrec(id) => Packet::PubRec(id),
            OwedAck::Pubcomp(id) => Packet::PubComp(id),
        }
    }
}

/// An open session: what CONNECT established. Kept small: an idle device's connection is
/// mostly this, parked.
struct Session {
    vhost: Arc<VirtualHost>,
    principal: Arc<Principal>,
    claim: Claim,
    clean: bool,
    keep_alive: u16,
    exchange: Arc<Exchange>,
    queue: Option<QueueHandle>,
    /// Made on first use: a device that only pings never has one.
    flow: Option<Box<Flow>>,
    will: Option<Box<LastWill>>,
    /// Authorisation answers, made on first use.
    access: Option<Box<AccessCache>>,
    /// The routing key of the last PUBLISH allowed, and until when that answer holds.
    last_publish: Option<(Box<str>, std::time::Instant)>,
    /// Its place within the connection limits (None while no limit is set).
    limit_slot: Option<Box<junction_core::limits::ConnectionSlot>>,
}

/// What a session tracks once it subscribes or exchanges packets with identifiers.
#[derive(Default)]
struct Flow {
    state: SessionState,
    inflight: HashMap<u16, Inflight>,
    next_packet_id: u16,
    acks: Ledger<OwedAck>,
    queue_acks: Vec<MessageSeq>,
}

/// The one channel an MQTT connection's session consumes from its queue on.
fn session_channel(connection: ConnectionId) -> ChannelId {
    ChannelId {
        connection,
        number: 0,
        generation: 0,
    }
}

impl Session {
    /// The session's flow state, made now if it has none.
    fn flow(&mut self) -> &mut Flow {
        self.flow.get_or_insert_with(Box::default)
    }

    /// The consumer tag of the session's subscription to its queue.
    fn consumer_tag(&self) -> Arc<str> {
        format!("mqtt-{}", self.claim.key.client_id).into()
    }

    async fn allowed(&mut self, kind: ResourceKind, name: &str, permission: Permission) -> bool {
        self.access
            .get_or_insert_with(Box::default)
            .allowed(&self.principal, &self.vhost.name, kind, name, permission)
            .await
    }

    /// Whether the session may use AMQP routing key `routing_key` for `permission` (write:
    /// publish; read: subscribe) on its exchange, when that is a topic exchange (RabbitMQ's
    /// topic authorisation; `{client_id}` in a pattern is this session's client id); the
    /// refusal's text when not.
    async fn topic_allowed(
        &mut self,
        routing_key: &str,
        permission: Permission,
    ) -> Result<(), String> {
        let allowed = self
            .access
            .get_or_insert_with(Box::default)
            .topic_allowed(
                &self.principal,
                &self.vhost.name,
                &self.exchange,
                routing_key,
                permission,
                Some(&self.claim.key.client_id),
            )
            .await;
        if allowed {
            return Ok(());
        }
        Err(junction_core::auth::topic_refusal(
            permission,
            crate::topic::shortened(routing_key),
            &self.exchange.name,
            &self.vhost.name,
            &self.principal.user.name,
        ))
    }
}

/// What a connection keeps from its transport until CONNECT.
struct PreLogin {
    /// The TLS session: its verified certificate's user name, and what the management API
    /// shows once logged in.
    tls: Option<Arc<junction_transport::TlsInfo>>,
    /// Held until CONNECT is handled (see `junction_transport::LoginGate`).
    _ticket: Option<Arc<junction_transport::LoginTicket>>,
}

/// One MQTT connection.
pub(crate) struct Connection {
    mqtt: Arc<Mqtt>,
    id: ConnectionId,
    peer: Option<SocketAddr>,
    /// What the transport said of the client, until CONNECT (one word while it is gone:
    /// connections are many).
    pre_login: Option<Box<PreLogin>>,
    out: BytesMut,
    /// Deliveries from the session's queue (made when the session first needs its queue).
    pub(crate) events: LazyChannel<ConsumerEvent>,
    /// The message store's reports on QoS 1/2 publications, by their place in the ledger of
    /// owed acknowledgements (made on the first QoS 1/2 PUBLISH).
    pub(crate) durable: LazyChannel<(Seq, Durability)>,
    /// Raised when the connection must close (takeover, shutdown).
    pub(crate) signal: Arc<Signal>,
    session: Option<Session>,
    has_published: bool,
    /// Set while credit flow holds this publisher: a queue it published to has fallen behind.
    pub(crate) flow: Option<junction_core::FlowHold>,
    alarm: bool,
    /// When the last bytes arrived from the client (the keep-alive counts from it).
    pub(crate) last_packet: tokio::time::Instant,
}

impl Connection {
    /// A connection that has not sent CONNECT yet.
    pub(crate) fn new(mqtt: Arc<Mqtt>, peer: Option<SocketAddr>) -> Self {
        let id = mqtt.broker.next_connection_id();
        let signal = mqtt.connections.open(id);
        Self {
            signal,
            mqtt,
            id,
            peer,
            pre_login: None,
            out: BytesMut::new(),
            events: LazyChannel::default(),
            durable: LazyChannel::default(),
            session: None,
            has_published: false,
            flow: None,
            alarm: false,
            last_packet: tokio::time::Instant::now(),
        }
    }

    /// Lists the connection for the management API once CONNECT is accepted (its signal
    /// keeps who it is; an operator's close raises it) and reports `connection.created`.
    pub(crate) fn log_in(&mut self, tls: Option<Arc<junction_transport::TlsInfo>>) {
        let Some(session) = &self.session else {
            return;
        };
        let started = self.mqtt.connections.started_ms();
        let after = junction_core::stats::now_ms().saturating_sub(started) / 1000;
        let logged_in = self.signal.log_in(
            session.claim.key.clone(),
            session.principal.clone(),
            self.peer,
            tls.as_deref(),
            u32::try_from(after).unwrap_or(u32::MAX),
        );
        if logged_in {
            self.mqtt.connections.logged_in();
            if let Some(snapshot) = self.signal.snapshot(self.id, started) {
                self.mqtt.broker.connections().opened(&snapshot);
            }
        }
    }

    /// Records the socket's traffic and what the connection is doing.
    pub(crate) fn report(&self, traffic: junction_transport::Traffic, parked: bool) {
        let state = if parked {
            ConnectionState::Parked
        } else if self.flow.is_some() {
            ConnectionState::Flow
        } else if self.is_blocked() {
            ConnectionState::Blocked
        } else {
            ConnectionState::Running
        };
        self.signal.report(traffic.received, traffic.sent, state);
    }

    /// The adapter's shared state.
    pub(crate) fn mqtt(&self) -> Arc<Mqtt> {
        self.mqtt.clone()
    }

    /// Whether the connection has nothing to do until the client or its queue says something:
    /// connected, not held back by an alarm, no output and no acknowledgements to pass on.
    pub(crate) fn is_idle(&self) -> bool {
        self.is_connected() && !self.is_blocked() && !self.has_output() && !self.has_queue_acks()
    }

    /// What the transport said of the client: its TLS session, whose verified certificate
    /// may carry a user name (a CONNECT without a user name logs in as that user, with no
    /// password, as RabbitMQ's `mqtt.ssl_cert_login`), and its place among the connections
    /// logging in.
    pub(crate) fn set_pre_login(&mut self, peer: junction_transport::Peer) {
        if peer.tls.is_some() || peer.login_ticket.is_some() {
            self.pre_login = Some(Box::new(PreLogin {
                tls: peer.tls,
                _ticket: peer.login_ticket,
            }));
        }
    }

    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The negotiated keep-alive in seconds (0: none, or not connected yet).
    pub(crate) fn keep_alive(&self) -> u16 {
        self.session.as_ref().map_or(0, |s| s.keep_alive)
    }

    /// Whether CONNECT has been accepted.
    pub(crate) fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Records the broker's resource alarm.
    pub(crate) fn set_alarm(&mut self, alarm: Option<String>) {
        self.alarm = alarm.is_some();
    }

    /// Publishers are not read while a resource alarm is raised, nor while credit flow holds
    /// them (a queue they published to has fallen behind).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked_by_alarm() || self.flow.is_some()
    }

    /// Whether a resource alarm blocks this publisher.
    pub(crate) fn blocked_by_alarm(&self) -> bool {
        self.alarm && self.has_published
    }

    /// Ready when the queue that held this connection by credit flow has caught up (the hold
    /// is gone then); pending while there is none.
    pub(crate) fn poll_flow(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        junction_core::FlowHold::poll_release(&mut self.flow, cx)
    }

    /// Whether the next packet in `buffer` is a PUBLISH that a resource alarm holds back. It
    /// stays in the buffer, unhandled, and the connection counts as a publisher from now on,
    /// so the driver stops reading it: the alarm blocks a connection's first publication as
    /// well as later ones, and a stream of fresh connections cannot queue one message each.
    fn holds_publish(&mut self, buffer: &[u8]) -> bool {
        let Some(session) = &mut self.session else {
            return false;
        };
        // Nothing can hold a publish (the usual case): no look at the packet.
        if !self.alarm && session.limit_slot.is_none() {
            return false;
        }
        let publish = buffer
            .first()
            .is_some_and(|first| first >> 4 == PUBLISH_TYPE);
        let paused = publish
            && session
                .limit_slot
                .as_mut()
                .is_some_and(|slot| slot.holds_publish(&mut self.flow));
        let held = publish && (self.alarm || paused);
        self.has_published |= held;
        held
    }

    /// Whether there are bytes to write.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// How many bytes are waiting to be taken.
    pub(crate) fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Takes the bytes to write.
    pub(crate) fn take_output(&mut self) -> bytes::Bytes {
        self.out.split().freeze()
    }

    /// Gives the output buffer's memory back (a quiet connection should hold none).
    pub(crate) fn release_output(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// Whether settled deliveries wait to be told to the queue.
    pub(crate) fn has_queue_acks(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|session| session.flow.as_ref())
            .is_some_and(|flow| !flow.queue_acks.is_empty())
    }

    /// Handles every whole packet in `buffer`.
    pub(crate) async fn on_bytes(&mut self, buffer: &mut BytesMut) -> Next {
        loop {
            if self.holds_publish(buffer) {
                return Next::Continue;
            }
            let max = if self.session.is_some() {
                self.mqtt.settings.max_packet_size
            } else {
                self.mqtt.settings.max_connect_size
            };
            let packet = match codec::decode(buffer, max) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Next::Continue,
                Err(error) => return self.violation(Violation::from(error)),
            };
            match self.on_packet(packet).await {
                // Each packet spends from the task's cooperative budget, so a publisher with
                // a full buffer yields to the others (and to the queues and subscribers it
                // feeds) every so many packets instead of once per buffer.
                Ok(Next::Continue) => tokio::task::consume_budget().await,
                Ok(close) => return close,
                Err(violation) => return self.violation(violation),
            }
        }
    }

    fn violation(&self, violation: Violation) -> Next {
        tracing::info!(peer = ?self.peer, reason = %violation.0, "closing MQTT connection: protocol error");
        Next::Close { graceful: false }
    }

    async fn on_packet(&mut self, packet: Packet) -> Handled {
        if self.session.is_none() {
            return match packet {
                Packet::Connect(connect) => self.on_connect(*connect).await,
                other => Err(Violation(format!("expected CONNECT, got {}", name(&other)))),
            };
        }
        match packet {
            Packet::Connect(_) => Err(Violation("second CONNECT".into())),
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(id) => self.on_puback(id),
            Packet::PubRec(id) => self.on_pubrec(id),
            Packet::PubRel(id) => self.on_pubrel(id),
            Packet::PubComp(id) => self.on_pubcomp(id),
            Packet::Subscribe { packet_id, filters } => self.on_subscribe(packet_id, filters).await,
            Packet::Unsubscribe { packet_id, filters } => {
                self.on_unsubscribe(packet_id, filters).await
            }
            Packet::PingReq => {
                codec::encode(&Packet::PingResp, &mut self.out);
                Ok(Next::Continue)
            }
            Packet::Disconnect => Ok(Next::Close { graceful: true }),
            other @ (Packet::ConnAck { .. }
            | Packet::SubAck { .. }
            | Packet::UnsubAck(_)
            | Packet::PingResp) => Err(Violation(format!(
                "{} is sent by servers only",
                name(&other)
            ))),
        }
    }

    /// Handles a batch of consumer events; their queue acknowledgements are sent by
    /// [`Connection::flush_queue_acks`].
    pub(crate) fn on_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Deliver(delivery) => self.deliver(delivery),
            ConsumerEvent::Cancelled { channel, .. } => {
                if let Some(session) = self.session.as_mut()
                    && session_channel(self.id) == channel
                {
                    tracing::warn!(client_id = %session.claim.key.client_id, "the session's queue was deleted");
                    session.queue = None;
                }
            }
        }
    }

    /// Tells the session's queue which deliveries are settled.
    pub(crate) async fn flush_queue_acks(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let Some(flow) = session.flow.as_mut() else {
            return;
        };
        if flow.queue_acks.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut flow.queue_acks);
        if let Some(queue) = &session.queue {
            queue.ack(session_channel(self.id), seqs).await;
        }
    }

    /// The message store reports on the publication acknowledgement `seq` waits for; the
    /// acknowledgements that may go now go. True when the write failed: see
    /// [`Connection::release_acks`].
    pub(crate) fn on_durable(&mut self, seq: Seq, durability: Durability) -> bool {
        self.settle(seq, durability);
        self.release_acks()
    }

    /// Records the message store's report on the publication acknowledgement `seq` waits for;
    /// [`Connection::release_acks`] sends what it lets go.
    pub(crate) fn settle(&mut self, seq: Seq, durability: Durability) {
        if let Some(flow) = self.session.as_mut().and_then(|s| s.flow.as_mut()) {
            flow.acks.settle(seq, durability);
        }
    }

    /// Writes the acknowledgements that may go now, in PUBLISH order. Returns true when the
    /// store could not write a QoS 1/2 publication: then no acknowledgement owed from there on
    /// is sent and the connection must close: MQTT 3.1.1 has no negative acknowledgement, and
    /// the client resends what was not acknowledged.
    pub(crate) fn release_acks(&mut self) -> bool {
        let Some(flow) = self.session.as_mut().and_then(|s| s.flow.as_mut()) else {
            return false;
        };
        let messages = self.mqtt.broker.connections().messages(Family::Mqtt);
        while let Some(answer) = flow.acks.next_answer() {
            match answer {
                Answer::Ready(_, ack) => {
                    if let OwedAck::Puback(_) | OwedAck::Pubrec(_) = ack {
                        messages.confirmed(1);
                    }
                    codec::encode(&ack.packet(), &mut self.out)
                }
                Answer::Failed(_, failed) => {
                    // None of the acknowledgements still owed goes; a QoS 2 publication among
                    // them must be routed again when the client resends it, not taken for a
                    // duplicate.
                    for ack in std::iter::once(failed).chain(flow.acks.abandon()) {
                        if let OwedAck::Pubrec(id) = ack {
                            flow.state.incoming.remove(&id);
                        }
                    }
                    tracing::warn!(peer = ?self.peer, "{NOT_STORED}; closing the connection");
                    return true;
                }
            }
        }
        false
    }

    /// Ends the connection: publishes the will unless the client said DISCONNECT, returns
    /// unacknowledged deliveries to the queue, and keeps or drops the session.
    pub(crate) async fn finish(&mut self, graceful: bool) {
        self.end_session(graceful).await;
        // Last: shutdown waits until every connection is out of the registry.
        if let Some(snapshot) = self.mqtt.connections.closed(self.id) {
            self.mqtt.broker.connections().closed(&snapshot);
        }
    }

    /// A kept session must not save as received a QoS 2 publication whose PUBREC was never
    /// sent: if its write failed, the client's resend would be taken for a duplicate and
    /// acknowledged, and the message lost. Waits (bounded) for the store's word on such
    /// publications; those it confirms stay received (a resend is a duplicate), the rest are
    /// forgotten, so a resend is routed and stored again.
    async fn settle_owed_pubrecs(&mut self) {
        let deadline = tokio::time::Instant::now() + PUBREC_WAIT;
        while self.owes_pubrec_awaiting_disk() {
            let notice = std::future::poll_fn(|cx| self.durable.poll_recv(cx));
            match tokio::time::timeout_at(deadline, notice).await {
                // A failure forgets every publication still owed an acknowledgement.
                Ok(Some((seq, durability))) if self.on_durable(seq, durability) => break,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let Some(flow) = self.session.as_mut().and_then(|s| s.flow.as_mut()) else {
            return;
        };
        for ack in flow.acks.waiting() {
            if let OwedAck::Pubrec(id) = ack {
                flow.state.incoming.remove(id);
            }
        }
    }

    /// Whether a PUBREC is owed for a publication the store has not reported on disk yet.
    fn owes_pubrec_awaiting_disk(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.flow.as_ref())
            .is_some_and(|flow| {
                flow.acks
                    .waiting()
                    .any(|ack| matches!(ack, OwedAck::Pubrec(_)))
            })
    }

    async fn end_session(&mut self, graceful: bool) {
        self.flush_queue_acks().await;
        if self.session.as_ref().is_some_and(|s| !s.clean) {
            self.settle_owed_pubrecs().await;
        }
        let Some(mut session) = self.session.take() else {
            return;
        };
        if !graceful && let Some(will) = session.will.take() {
            self.publish_will(&session, *will).await;
        }
        if let Some(queue) = &session.queue {
            queue
                .cancel(session_channel(self.id), session.consumer_tag())
                .await;
            queue.channel_closed(session_channel(self.id)).await;
        }
        session.vhost.connection_closed(self.id).await;
        let registry = &self.mqtt.sessions;
        if !session.clean {
            let (mut state, sent) = match session.flow.take() {
                Some(mut flow) => {
                    let sent: Vec<MessageSeq> =
                        flow.inflight.values().filter_map(|i| i.seq).collect();
                    (std::mem::take(&mut flow.state), sent)
                }
                None => (SessionState::default(), Vec::new()),
            };
            state.outbound.retain(|seq, _| sent.contains(seq));
            registry.save(SessionKey::clone(&session.claim.key), state);
        }
        registry.release(session.claim, self.id, &self.signal);
    }
}

fn name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck { .. } => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::SubAck { .. } => "SUBACK",
        Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests;
