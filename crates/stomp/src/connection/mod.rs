//! One STOMP connection's state machine. It is fed decoded frames, consumer events and
//! durability notices, calls the core, and leaves encoded frames in its output buffer; it does
//! no I/O (the driver in `io.rs` moves the bytes and keeps the heart-beat timers).
//!
//! - `connect.rs`: CONNECT/STOMP, version and heart-beat negotiation, authentication.
//! - `send.rs`: SEND (destinations, properties, persistence, temporary reply queues).
//! - `subscribe.rs`: SUBSCRIBE/UNSUBSCRIBE and the queues behind them.
//! - `ack.rs`: MESSAGE frames out, ACK/NACK in (auto, client, client-individual).
//! - `tx.rs`: BEGIN/COMMIT/ABORT.
//!
//! Every refusal is an ERROR frame with a `message` header and a readable body, after which the
//! connection closes.

mod ack;
mod connect;
mod send;
mod subscribe;
mod tx;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use junction_core::FlowHold;
use junction_core::auth::AccessCache;
use junction_core::ledger::{Answer, Ledger, Seq};
use junction_core::persistence::Durability;
use junction_core::queue::MessageSeq;
use junction_core::stats::{
    ConnectionCounters, ConnectionDetails, ConnectionState, Family, Registration, TlsSession,
};
use junction_core::{
    Broker, ChannelId, ConnectionId, ConsumerEvent, ConsumerSink, CoreError, Permission, Principal,
    QueueHandle, ResourceKind, VirtualHost,
};
use junction_transport::CloseRequest;
use junction_transport::LazyChannel;

use crate::codec::{self, Decoder, Frame, Version};
use crate::settings::Settings;

/// What the driver does after handing the connection some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep going.
    Continue,
    /// Write what is pending, then close.
    Close,
}

/// A refusal: the ERROR frame's `message` header and body.
#[derive(Debug)]
pub(crate) struct Refusal {
    message: String,
    detail: String,
    /// Whether it is logged, and then how many like it were left out of the log before it
    /// (refused logins are logged at most once per peer and window).
    log: Option<u64>,
}

/// The refusal for a persistent SEND the message store could not write (a full disk).
pub(crate) fn not_stored() -> Refusal {
    Refusal::new(
        "Message not stored",
        "the broker could not write a persistent message to disk; it was not delivered",
    )
}

impl Refusal {
    pub(crate) fn new(message: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            detail: detail.into(),
            log: Some(0),
        }
    }

    /// This refusal as a refused login from `peer`: logged only if the broker's
    /// [`junction_core::auth::RefusalLog`] lets it.
    pub(crate) fn of_login(
        mut self,
        broker: &junction_core::Broker,
        peer: Option<std::net::SocketAddr>,
    ) -> Self {
        self.log = broker
            .refused_logins()
            .admit("stomp", peer.map(|peer| peer.ip()));
        self
    }

    /// A frame without a header it needs (RabbitMQ's words, which quote both as Erlang
    /// strings).
    fn missing_header(command: &str, header: &str) -> Self {
        Self::new(
            "Missing header",
            format!("\"{command}\" must include the \"{header}\" header\n"),
        )
    }

    /// A SEND or SUBSCRIBE without a destination.
    fn missing_destination(command: &str) -> Self {
        Self::new(
            "Missing destination",
            format!("\"{command}\" must include a 'destination' header\n"),
        )
    }

    /// BEGIN, COMMIT or ABORT without a transaction.
    fn missing_transaction(command: &str) -> Self {
        Self::new(
            "Missing transaction",
            format!("\"{command}\" must include a 'transaction' header\n"),
        )
    }

    /// A frame naming a transaction that was not begun.
    fn bad_transaction(name: &str) -> Self {
        Self::new(
            "Bad transaction",
            format!("Invalid transaction identifier: \"{name}\"\n"),
        )
    }
}

impl From<crate::destination::InvalidDestination> for Refusal {
    fn from(invalid: crate::destination::InvalidDestination) -> Self {
        Refusal::new(invalid.headline(), invalid.to_string())
    }
}

impl From<CoreError> for Refusal {
    /// As RabbitMQ's STOMP plugin reports an AMQP error: the error's name as the message, and
    /// the AMQP reply text (`NOT_FOUND - no exchange 'x' in vhost '/'`) as the body.
    fn from(error: CoreError) -> Self {
        use junction_core::ErrorKind;
        let (message, name) = match error.kind {
            ErrorKind::NotFound => ("not_found", "NOT_FOUND"),
            ErrorKind::AccessRefused => ("access_refused", "ACCESS_REFUSED"),
            ErrorKind::PreconditionFailed => ("precondition_failed", "PRECONDITION_FAILED"),
            ErrorKind::ResourceLocked => ("resource_locked", "RESOURCE_LOCKED"),
            ErrorKind::NotAllowed => ("not_allowed", "NOT_ALLOWED"),
            ErrorKind::NotImplemented => ("not_implemented", "NOT_IMPLEMENTED"),
            ErrorKind::CommandInvalid => ("command_invalid", "COMMAND_INVALID"),
            ErrorKind::ConnectionForced => ("connection_forced", "CONNECTION_FORCED"),
            ErrorKind::Internal => ("internal_error", "INTERNAL_ERROR"),
        };
        Refusal::new(message, format!("{name} - {}", error.message))
    }
}

type Handled = Result<(), Refusal>;

/// How a subscription's messages are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

/// One SUBSCRIBE.
struct Subscription {
    queue: QueueHandle,
    ack: AckMode,
    destination: String,
    /// The `id` the client gave it, if it gave one (MESSAGE frames carry it as
    /// `subscription`).
    id: Option<Arc<str>>,
    /// What its MESSAGEs' `message-id` starts with: RabbitMQ's `<consumer tag>@@<session>@@`,
    /// the consumer tag being `T_<id>`, or `Q_<destination>` without an id.
    message_id_prefix: String,
}

/// A MESSAGE sent and not yet acknowledged.
struct Unacked {
    subscription: Arc<str>,
    queue: QueueHandle,
    seq: MessageSeq,
}

/// An open session: what CONNECT established.
struct Session {
    vhost: Arc<VirtualHost>,
    principal: Principal,
    version: Version,
    channel: ChannelId,
    subscriptions: HashMap<Arc<str>, Subscription>,
    unacked: BTreeMap<u64, Unacked>,
    next_message: u64,
    transactions: HashMap<String, Vec<Frame>>,
    temp_queues: HashMap<String, QueueHandle>,
    permissions: AccessCache,
    /// Receipts owed, in frame order, with a place (None) for each persistent SEND being
    /// written, so a receipt goes only once every SEND before it is on disk.
    receipts: Ledger<Option<String>>,
    /// Its place within the connection limits (None while no limit is set).
    limit_slot: Option<junction_core::limits::ConnectionSlot>,
}

impl Session {
    async fn authorize(
        &mut self,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> Handled {
        let allowed = self
            .permissions
            .allowed(&self.principal, &self.vhost.name, kind, name, permission)
            .await;
        if allowed {
            Ok(())
        } else {
            Err(CoreError::access_refused(format!(
                "access to {} '{name}' in vhost '{}' refused for user '{}'",
                kind.as_str(),
                self.vhost.name,
                self.principal.user.name
            ))
            .into())
        }
    }
}

impl Session {
    /// Refuses unless the user may use `routing_key` for `permission` (write to send, read to
    /// subscribe) on `exchange`, when it is a topic exchange (RabbitMQ's topic
    /// authorisation).
    async fn authorize_topic(
        &mut self,
        exchange: &junction_core::Exchange,
        routing_key: &str,
        permission: Permission,
    ) -> Handled {
        let allowed = self
            .permissions
            .topic_allowed(
                &self.principal,
                &self.vhost.name,
                exchange,
                routing_key,
                permission,
                None,
            )
            .await;
        if allowed {
            return Ok(());
        }
        Err(
            CoreError::access_refused(junction_core::auth::topic_refusal(
                permission,
                routing_key,
                &exchange.name,
                &self.vhost.name,
                &self.principal.user.name,
            ))
            .into(),
        )
    }
}

/// One STOMP connection.
pub(crate) struct Connection {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    id: ConnectionId,
    peer: Option<SocketAddr>,
    /// The TLS session, when the client came over TLS. Its verified certificate's user name
    /// is who a CONNECT without a login logs in as, with no passcode (RabbitMQ's
    /// `stomp.ssl_cert_login`).
    tls: Option<Arc<junction_transport::TlsInfo>>,
    /// Its place among the connections logging in (until CONNECTED).
    login_ticket: Option<Arc<junction_transport::LoginTicket>>,
    out: BytesMut,
    decoder: Decoder,
    /// Deliveries from the queues of this connection's subscriptions (made by the first).
    pub(crate) events: LazyChannel<ConsumerEvent>,
    /// The sending end every subscription of the connection shares, with its delivery budget.
    consumer_sink: Option<ConsumerSink>,
    /// The message store's reports on persistent SENDs, by their place in the receipts'
    /// ledger (made by the first persistent SEND).
    pub(crate) durable: LazyChannel<(Seq, Durability)>,
    session: Option<Session>,
    /// Negotiated heart-beats in milliseconds: (server sends, server expects).
    pub(crate) heartbeat: (u64, u64),
    has_published: bool,
    /// Set while credit flow holds this publisher: a queue it sent to has fallen behind.
    pub(crate) flow: Option<FlowHold>,
    alarm: bool,
    /// Queue acknowledgements collected while handling events, sent once per batch.
    queue_acks: Vec<(QueueHandle, MessageSeq)>,
    /// Deliveries that arrived for a subscription already gone: back to their queues.
    queue_returns: Vec<(QueueHandle, MessageSeq)>,
    /// The connection in the broker's list, once CONNECT is accepted.
    registration: Option<Registration>,
    /// An operator's request to close the connection.
    close_request: Arc<CloseRequest>,
}

impl Connection {
    /// A connection that has not sent CONNECT yet.
    pub(crate) fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
    ) -> Self {
        let id = broker.next_connection_id();
        // A stranger's frame is small: the configured limits apply once CONNECT is accepted.
        let decoder = Decoder::new(settings.limits.pre_login());
        Self {
            broker,
            settings,
            id,
            peer,
            tls: None,
            login_ticket: None,
            out: BytesMut::new(),
            decoder,
            events: LazyChannel::default(),
            consumer_sink: None,
            durable: LazyChannel::default(),
            session: None,
            heartbeat: (0, 0),
            has_published: false,
            flow: None,
            alarm: false,
            queue_acks: Vec::new(),
            queue_returns: Vec::new(),
            registration: None,
            close_request: Arc::new(CloseRequest::default()),
        }
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
    /// them (a queue they sent to has fallen behind).
    pub(crate) fn is_blocked(&self) -> bool {
        (self.alarm && self.has_published) || self.flow.is_some()
    }

    /// Ready when the queue that held this connection by credit flow has caught up (the hold
    /// is gone then); pending while there is none.
    pub(crate) fn poll_flow(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        junction_core::FlowHold::poll_release(&mut self.flow, cx)
    }

    /// Whether the next frame in `buffer` is a SEND that a resource alarm holds back. It
    /// stays in the buffer, unhandled, and the connection counts as a publisher from now on,
    /// so the driver stops reading it: the alarm blocks a connection's first SEND as well as
    /// later ones, and a stream of fresh connections cannot queue one message each.
    fn holds_send(&mut self, buffer: &[u8]) -> bool {
        let Some(session) = &mut self.session else {
            return false;
        };
        // Nothing can hold a SEND (the usual case): no look at the frame.
        if !self.alarm && session.limit_slot.is_none() {
            return false;
        }
        let send = next_command_is_send(buffer);
        let paused = send
            && session
                .limit_slot
                .as_mut()
                .is_some_and(|slot| slot.holds_publish(&mut self.flow));
        let held = send && (self.alarm || paused);
        self.has_published |= held;
        held
    }

    /// Whether there are bytes to write.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Takes the bytes to write.
    pub(crate) fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// How many bytes wait to be taken.
    pub(crate) fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Gives the output buffer's memory back (a quiet connection should hold none).
    pub(crate) fn release_output(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// The TLS session the client came over (see the field).
    pub fn set_tls(&mut self, tls: Option<Arc<junction_transport::TlsInfo>>) {
        self.tls = tls;
    }

    /// The user name the client's verified TLS certificate carries.
    fn certificate_user(&self) -> Option<&str> {
        self.tls.as_ref()?.certificate_user.as_deref()
    }

    /// The connection's place among those logging in, given back at CONNECTED.
    pub fn set_login_ticket(&mut self, ticket: Option<Arc<junction_transport::LoginTicket>>) {
        self.login_ticket = ticket;
    }

    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Queues a heart-beat (an end of line).
    pub(crate) fn send_heartbeat(&mut self) {
        self.out.extend_from_slice(b"\n");
    }

    /// Handles every whole frame in `buffer`.
    pub(crate) async fn on_bytes(&mut self, buffer: &mut BytesMut) -> Next {
        loop {
            if self.holds_send(buffer) {
                return Next::Continue;
            }
            let frame = match self.decoder.decode(buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Next::Continue,
                Err(error) => {
                    let message = match error {
                        codec::DecodeError::TooLarge(_) => "Frame too large",
                        _ => "Malformed frame",
                    };
                    self.refuse(None, Refusal::new(message, error.to_string()));
                    return Next::Close;
                }
            };
            let receipt = frame.get("receipt").map(str::to_owned);
            match self.on_frame(frame).await {
                Ok(Next::Continue) => {}
                Ok(Next::Close) => return Next::Close,
                Err(refusal) => {
                    self.refuse(receipt, refusal);
                    return Next::Close;
                }
            }
        }
    }

    /// Lists the connection in the broker's registry once CONNECT is accepted.
    pub(super) fn register(&mut self, version: Version) {
        let Some(session) = &self.session else {
            return;
        };
        let protocol = match version {
            Version::V1_0 => "STOMP 1.0",
            Version::V1_1 => "STOMP 1.1",
            Version::V1_2 => "STOMP 1.2",
        };
        let details = ConnectionDetails::new(
            Family::Stomp,
            protocol,
            self.peer,
            session.principal.user.name.clone(),
            session.vhost.name.clone(),
        )
        .with_tls(self.tls.as_deref().map(|tls| TlsSession {
            version: tls.version,
            cipher: tls.cipher,
        }));
        let close_request = self.close_request.clone();
        self.registration = Some(self.broker.connections().register(
            self.id,
            details,
            Box::new(move |reason| close_request.request(reason)),
        ));
    }

    /// The connection's counters, once it is registered.
    pub(crate) fn counters(&self) -> Option<&ConnectionCounters> {
        self.registration.as_ref().map(|r| &r.counters)
    }

    /// Ready with the reason once an operator asked to close the connection.
    pub(crate) fn poll_close_request(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<String> {
        self.close_request.poll(cx)
    }

    /// Tells the client an operator closed the connection (an ERROR frame); the driver then
    /// ends it.
    pub(crate) fn close_by_operator(&mut self, reason: String) {
        self.refuse(None, Refusal::new("Connection closed", reason));
    }

    /// Records the socket's traffic and what the connection is doing.
    pub(crate) fn report(&self, traffic: junction_transport::Traffic) {
        let Some(counters) = self.counters() else {
            return;
        };
        counters.set_traffic(junction_core::stats::Traffic {
            recv_oct: traffic.received,
            recv_cnt: traffic.reads,
            send_oct: traffic.sent,
            send_cnt: traffic.writes,
        });
        let state = if self.flow.is_some() {
            ConnectionState::Flow
        } else if self.is_blocked() {
            ConnectionState::Blocked
        } else {
            ConnectionState::Running
        };
        counters.set_state(state);
    }

    /// Sends an ERROR frame.
    fn refuse(&mut self, receipt: Option<String>, refusal: Refusal) {
        if let Some(left_out) = refusal.log {
            tracing::info!(peer = ?self.peer, message = %refusal.message, detail = %refusal.detail, left_out, "STOMP error; closing the connection");
        }
        let mut frame = Frame::new("ERROR")
            .header("message", refusal.message)
            .header("content-type", "text/plain")
            .header("version", "1.0,1.1,1.2");
        if let Some(receipt) = receipt {
            frame = frame.header("receipt-id", receipt);
        }
        frame.body = Bytes::from(refusal.detail.into_bytes());
        let version = self.session.as_ref().map(|s| s.version);
        codec::encode(&frame, version, &mut self.out);
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Next, Refusal> {
        if self.session.is_none() {
            return match frame.command.as_ref() {
                "CONNECT" | "STOMP" => self.on_connect(frame).await.map(|_| Next::Continue),
                _ => Err(Refusal::new(
                    "Illegal command",
                    "You must log in using CONNECT first",
                )),
            };
        }
        let mut receipt = frame.get("receipt").map(str::to_owned);
        match frame.command.as_ref() {
            "SEND" => {
                self.has_published = true;
                if self.on_send(frame).await? {
                    // Held in its transaction: its receipt comes at COMMIT.
                    receipt = None;
                }
            }
            "SUBSCRIBE" => self.on_subscribe(&frame).await?,
            "UNSUBSCRIBE" => self.on_unsubscribe(&frame).await?,
            "ACK" => self.on_ack(&frame, false).await?,
            "NACK" => self.on_ack(&frame, true).await?,
            "BEGIN" => self.on_begin(&frame)?,
            "COMMIT" => self.on_commit(&frame).await?,
            "ABORT" => self.on_abort(&frame)?,
            "DISCONNECT" => {
                if let Some(receipt) = receipt {
                    self.owe_receipt(receipt);
                }
                return Ok(Next::Close);
            }
            "CONNECT" | "STOMP" => {
                return Err(Refusal::new(
                    "Already connected",
                    "a connection sends CONNECT once",
                ));
            }
            other => {
                return Err(Refusal::new(
                    "Bad command",
                    format!("Could not interpret command \"{other}\"\n"),
                ));
            }
        }
        if let Some(receipt) = receipt {
            self.owe_receipt(receipt);
        }
        Ok(Next::Continue)
    }

    /// Owes a RECEIPT: it goes once every persistent SEND before it is on disk.
    pub(super) fn owe_receipt(&mut self, receipt: String) {
        if let Some(session) = self.session.as_mut() {
            session.receipts.owe_now(Some(receipt));
        }
        // Nothing failed since the last release: a failure is released when it is reported.
        let _ = self.release_receipts();
    }

    /// The message store reports on the persistent SEND at `seq` in the receipts' ledger;
    /// the receipts that may go now go (see [`Connection::release_receipts`]).
    pub(crate) fn on_durable(&mut self, seq: Seq, durability: Durability) -> Next {
        self.settle(seq, durability);
        self.release_receipts()
    }

    /// Records the message store's report on the persistent SEND at `seq`;
    /// [`Connection::release_receipts`] sends what it lets go.
    pub(crate) fn settle(&mut self, seq: Seq, durability: Durability) {
        if let Some(session) = self.session.as_mut() {
            session.receipts.settle(seq, durability);
        }
    }

    /// Writes the receipts that may go now, in frame order. If the store could not write a
    /// persistent SEND, no receipt owed from there on is sent: an ERROR frame (naming the
    /// first receipt owed) goes instead and the connection closes.
    pub(crate) fn release_receipts(&mut self) -> Next {
        let Some(session) = self.session.as_mut() else {
            return Next::Continue;
        };
        while let Some(answer) = session.receipts.next_answer() {
            match answer {
                Answer::Ready(_, Some(receipt)) => {
                    let frame = Frame::new("RECEIPT").header("receipt-id", receipt);
                    codec::encode(&frame, Some(session.version), &mut self.out);
                }
                // A persistent SEND on disk: what STOMP's confirms count.
                Answer::Ready(_, None) => {
                    if let Some(registration) = &self.registration {
                        registration.messages().confirmed(1);
                    }
                }
                Answer::Failed(_, failed) => {
                    // Receipts still owed wait for this or an earlier SEND: none of them goes.
                    let receipt = std::iter::once(failed)
                        .chain(session.receipts.abandon())
                        .find_map(|receipt| receipt);
                    self.refuse(receipt, not_stored());
                    return Next::Close;
                }
            }
        }
        Next::Continue
    }

    /// Handles one consumer event.
    pub(crate) fn on_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Deliver(delivery) => self.deliver(delivery),
            ConsumerEvent::Cancelled { consumer_tag, .. } => {
                if let Some(session) = self.session.as_mut() {
                    session.subscriptions.remove(&consumer_tag);
                }
            }
        }
    }

    /// Tells queues which deliveries are settled (auto-acknowledged subscriptions) and which
    /// go back (they arrived after their subscription ended).
    pub(crate) async fn flush_queue_acks(&mut self) {
        let Some(channel) = self.session.as_ref().map(|s| s.channel) else {
            return;
        };
        for requeue in [None, Some(true)] {
            let mut pending = match requeue {
                None => std::mem::take(&mut self.queue_acks),
                Some(_) => std::mem::take(&mut self.queue_returns),
            };
            while let Some((queue, _)) = pending.first() {
                let queue = queue.clone();
                let (same, rest): (Vec<_>, Vec<_>) =
                    pending.into_iter().partition(|(q, _)| q.same(&queue));
                let seqs = same.into_iter().map(|(_, seq)| seq).collect();
                match requeue {
                    None => queue.ack(channel, seqs).await,
                    Some(requeue) => queue.reject(channel, seqs, requeue).await,
                }
                pending = rest;
            }
        }
    }

    /// Whether RECEIPTs are still waiting for the disk.
    pub(crate) fn has_pending_receipts(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.receipts.owed().any(Option::is_some))
    }

    /// Ends the connection: unacknowledged messages go back to their queues, exclusive and
    /// temporary queues go away.
    pub(crate) async fn finish(&mut self) {
        self.flush_queue_acks().await;
        let Some(session) = self.session.take() else {
            return;
        };
        let mut touched: Vec<QueueHandle> = Vec::new();
        for (tag, subscription) in &session.subscriptions {
            subscription
                .queue
                .cancel(session.channel, tag.clone())
                .await;
            if !touched.iter().any(|q| q.same(&subscription.queue)) {
                touched.push(subscription.queue.clone());
            }
        }
        for unacked in session.unacked.values() {
            if !touched.iter().any(|q| q.same(&unacked.queue)) {
                touched.push(unacked.queue.clone());
            }
        }
        for queue in touched {
            queue.channel_closed(session.channel).await;
        }
        session.vhost.connection_closed(self.id).await;
    }
}

/// Whether the first frame in `buffer`, after any heart-beat EOLs and stray NULs, is a SEND.
/// Its command line is enough: the frame need not be whole.
fn next_command_is_send(buffer: &[u8]) -> bool {
    let Some(start) = buffer.iter().position(|b| !codec::is_between_frames(*b)) else {
        return false;
    };
    let command = &buffer[start..];
    command.starts_with(b"SEND") && matches!(command.get(4), None | Some(b'\n' | b'\r'))
}

#[cfg(test)]
mod tests;
