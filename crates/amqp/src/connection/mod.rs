//! The AMQP connection state machine: protocol header, start/tune/open handshake, frame
//! dispatch to channels and method classes, content assembly, errors turned into
//! channel.close or connection.close, and the delivery of consumer events.
//!
//! It does no I/O: [`Connection::on_bytes`] consumes a read buffer and leaves frames in the
//! session's outbox; the driver in `io.rs` moves bytes and keeps time.

use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::channel::{self as channel_methods, CloseOk, OpenOk as ChannelOpenOk};
use amq_protocol::protocol::connection::{self as conn, OpenOk, Start, Tune};
use amq_protocol::protocol::{AMQPClass, basic as basic_methods, parse_class};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable as WireTable, LongString};
use bytes::{BufMut, Bytes, BytesMut};
use junction_core::field::MAX_DEPTH;
use junction_core::persistence::Durability;
use junction_core::stats::ConnectionState;
use junction_core::{Broker, ChannelId, ConsumerEvent, LoginRequest, Protocol};
use junction_transport::LazyChannel;

use crate::channel::{Channel, ChannelState};
use crate::error::{AmqpError, AmqpResult, Scope, code};
use crate::frame::{
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER, RawFrame, method_ids,
    take_frame,
};
use crate::nesting::{self, NestingError};
use crate::properties::properties_from_wire;
use crate::session::Session;
use crate::settings::{FRAME_MIN_SIZE, Settings};
use crate::{basic, confirm, exchange, queue, tx};

mod content;
mod handshake;
#[cfg(test)]
mod tests;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for `AMQP 0 0 9 1`.
    AwaitingHeader,
    /// connection.start sent.
    AwaitingStartOk,
    /// connection.tune sent.
    AwaitingTuneOk,
    /// Tuned; waiting for connection.open.
    AwaitingOpen,
    /// Open.
    Open,
    /// The server sent connection.close and waits for close-ok.
    Closing,
    /// Done: flush the outbox and close the socket.
    Closed,
}

/// What the driver should do after feeding the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep going.
    Continue,
    /// Write what is in the outbox, then close the socket.
    Close,
}

/// One AMQP connection's protocol state.
pub struct Connection {
    session: Session,
    state: State,
    /// Boxed: a channel is taken out and put back on every frame, so it moves as a pointer.
    channels: Vec<Option<Box<Channel>>>,
    generation: u32,
    /// The resource alarm as last seen, and whether connection.blocked was sent for it.
    alarm: Option<String>,
    blocked_sent: bool,
    /// The client asked to close and got close-ok: closing the socket is its turn.
    peer_closes: bool,
}

/// The error for a method only a server may send, received from a client.
pub fn server_only(method: &AMQPClass) -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        format!("method {method:?} is not valid from a client"),
    )
    .during((method.get_amqp_class_id(), method.get_amqp_method_id()))
}

/// Class and method ids of AMQP 0-9-1 methods a client may legitimately send, plus those of
/// RabbitMQ's extensions; anything else is answered with 540 (not-implemented).
fn is_known_method(class: u16, method: u16) -> bool {
    match class {
        10 => matches!(
            method,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method, 10 | 11),
        40 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 51
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method, 10 | 11),
        90 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Class and method ids of basic.publish.
const BASIC_PUBLISH: (u16, u16) = (60, 40);

fn str_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl Connection {
    /// A connection that has just been accepted. Queues deliver through
    /// [`Connection::events`]; the message store reports persistent messages on disk through
    /// [`Connection::durable_notices`].
    pub fn new(broker: Arc<Broker>, settings: Arc<Settings>, peer: Option<SocketAddr>) -> Self {
        Self {
            session: Session::new(broker, settings, peer),
            state: State::AwaitingHeader,
            peer_closes: false,
            channels: Vec::new(),
            generation: 0,
            alarm: None,
            blocked_sent: false,
        }
    }

    /// A persistent message published on `channel` with confirm sequence `seq` is on disk, or
    /// failed to get there (then it is nacked); the confirms that may go now go.
    pub fn on_durable(&mut self, channel: ChannelId, seq: u64, durability: Durability) {
        self.settle_durable(channel, seq, durability);
        self.flush_confirms();
    }

    /// Records a durability notice without sending anything: a driver that passes many
    /// notices at once then sends their confirms together with [`Connection::flush_confirms`]
    /// (one basic.ack for the lot).
    pub fn settle_durable(&mut self, channel: ChannelId, seq: u64, durability: Durability) {
        let Some(Some(open)) = self.channels.get_mut(usize::from(channel.number)) else {
            return;
        };
        if open.id == channel && open.state == ChannelState::Open {
            confirm::durable(open, seq, durability);
        }
    }

    /// Records the broker's resource alarm (`Some(reason)` while raised) and tells the client
    /// with connection.blocked / unblocked when it asked for that.
    pub fn set_alarm(&mut self, alarm: Option<String>) {
        self.alarm = alarm;
        self.notify_blocked();
    }

    /// Whether the socket should not be read now: a publisher during a resource alarm, or
    /// one held by credit flow (a queue it published to has fallen behind; no
    /// connection.blocked is sent for that, as in RabbitMQ).
    pub fn is_blocked(&self) -> bool {
        (self.alarm.is_some() && self.session.has_published && self.state == State::Open)
            || self.session.flow.is_some()
    }

    /// Ready with the reason once an operator asked to close the connection.
    pub fn poll_close_request(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<String> {
        self.session.close_request.poll(cx)
    }

    /// Records the socket's traffic and what the connection is doing, for the broker's
    /// connection list.
    pub fn report(&self, traffic: junction_transport::Traffic) {
        let Some(counters) = self.session.counters() else {
            return;
        };
        counters.set_traffic(junction_core::stats::Traffic {
            recv_oct: traffic.received,
            recv_cnt: traffic.reads,
            send_oct: traffic.sent,
            send_cnt: traffic.writes,
        });
        let state = if self.session.flow.is_some() {
            ConnectionState::Flow
        } else if self.is_blocked() {
            ConnectionState::Blocked
        } else {
            ConnectionState::Running
        };
        counters.set_state(state);
    }

    /// Ready when the queue that held this connection by credit flow has caught up (the hold
    /// is gone then); pending while there is none.
    pub fn poll_flow(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        junction_core::FlowHold::poll_release(&mut self.session.flow, cx)
    }

    /// Whether the next frame in `buffer` is a basic.publish that a resource alarm holds back.
    /// It stays in the buffer, unhandled, and the connection counts as a publisher from now
    /// on, so the driver stops reading it: the alarm blocks a connection's first publish as
    /// well as later ones.
    fn holds_publish(&mut self, buffer: &[u8]) -> bool {
        /// Frame type, channel and payload size come before a method frame's class and method.
        const METHOD_IDS_AT: usize = 7;
        // Nothing can hold a publish (the usual case): no look at the frame.
        if self.alarm.is_none() && self.session.limit_slot.is_none() {
            return false;
        }
        let publish = self.state == State::Open
            && buffer.first() == Some(&FRAME_METHOD)
            && buffer
                .get(METHOD_IDS_AT..)
                .and_then(method_ids)
                .is_some_and(|ids| ids == BASIC_PUBLISH);
        let session = &mut self.session;
        let paused = publish
            && session
                .limit_slot
                .as_mut()
                .is_some_and(|slot| slot.holds_publish(&mut session.flow));
        let held = publish && (self.alarm.is_some() || paused);
        self.session.has_published |= held;
        held
    }

    /// Sends connection.blocked to a publishing connection the first time it publishes during
    /// an alarm (as RabbitMQ does), and connection.unblocked when the alarm clears.
    fn notify_blocked(&mut self) {
        if self.state != State::Open
            || !self.session.capabilities.connection_blocked
            || !self.session.has_published
        {
            return;
        }
        match (&self.alarm, self.blocked_sent) {
            (Some(reason), false) => {
                let reason = reason.clone();
                self.session.send(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::Blocked(conn::Blocked {
                        reason: reason.as_str().into(),
                    })),
                );
                self.blocked_sent = true;
            }
            (None, true) => {
                self.session.send(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::Unblocked(conn::Unblocked {})),
                );
                self.blocked_sent = false;
            }
            _ => {}
        }
    }

    /// The state of the connection.
    pub fn state(&self) -> State {
        self.state
    }

    /// The TLS session the client came over: when its verified certificate names a user, the
    /// connection offers the `EXTERNAL` mechanism, which logs in as that user without a
    /// password.
    pub fn set_tls(&mut self, tls: Option<Arc<junction_transport::TlsInfo>>) {
        self.session.tls = tls;
    }

    /// The connection's place among those logging in, given back at `connection.open`.
    pub fn set_login_ticket(&mut self, ticket: Option<Arc<junction_transport::LoginTicket>>) {
        self.session.login_ticket = ticket;
    }

    /// Whether the client closed the connection (its connection.close was answered with
    /// close-ok): as in RabbitMQ, the socket then stays open, what still arrives is dropped,
    /// and the client closes it. A client that closes while its publishes are still being
    /// written would otherwise hit a broken pipe and never read its close-ok.
    pub fn peer_closes(&self) -> bool {
        self.peer_closes
    }

    /// The negotiated heartbeat interval in seconds (0 = off).
    pub fn heartbeat(&self) -> u16 {
        self.session.heartbeat
    }

    /// Deliveries and cancellations from queues, for this connection's consumers.
    pub fn events(&mut self) -> &mut LazyChannel<ConsumerEvent> {
        &mut self.session.sink
    }

    /// Notices that persistent messages are on disk: (channel, confirm sequence).
    pub fn durable_notices(&mut self) -> &mut LazyChannel<(ChannelId, u64, Durability)> {
        &mut self.session.durable
    }

    /// How many bytes wait to be taken.
    pub fn output_len(&self) -> usize {
        self.session.out.len()
    }

    /// Gives the output buffers' memory back when nothing waits.
    pub fn release_output(&mut self) {
        self.session.out.release();
    }

    /// Takes the bytes waiting to be written.
    pub fn take_output(&mut self) -> Bytes {
        self.session.out.take()
    }

    /// Whether bytes are waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.session.out.is_empty()
    }

    /// Writes a heartbeat frame.
    pub fn send_heartbeat(&mut self) {
        if matches!(self.state, State::AwaitingOpen | State::Open) {
            self.session.out.heartbeat();
        }
    }

    /// Handles every whole frame in `buffer`, leaving a partial frame in place.
    pub async fn on_bytes(&mut self, buffer: &mut BytesMut) -> Next {
        if self.state == State::AwaitingHeader {
            if buffer.len() < PROTOCOL_HEADER.len() {
                // A client that sends something else entirely gets our header back at once.
                if !PROTOCOL_HEADER.starts_with(&buffer[..]) {
                    return self.refuse_protocol();
                }
                return Next::Continue;
            }
            let header = buffer.split_to(PROTOCOL_HEADER.len());
            if &header[..] != PROTOCOL_HEADER {
                return self.refuse_protocol();
            }
            self.send_start();
        }
        loop {
            if self.state == State::Closed {
                return Next::Close;
            }
            if self.holds_publish(buffer) {
                break;
            }
            let frame = match take_frame(buffer, self.session.frame_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    self.fail(AmqpError::connection(code::FRAME_ERROR, error.to_string()))
                        .await;
                    // Framing is lost: nothing after this can be read.
                    buffer.clear();
                    return Next::Close;
                }
            };
            if let Err(error) = self.on_frame(frame).await {
                self.fail(error).await;
            }
        }
        self.flush_confirms();
        self.notify_blocked();
        if self.state == State::Closed {
            Next::Close
        } else {
            Next::Continue
        }
    }

    fn refuse_protocol(&mut self) -> Next {
        self.session.out.raw(PROTOCOL_HEADER);
        self.state = State::Closed;
        Next::Close
    }

    /// Sends the confirms every channel may send now.
    pub fn flush_confirms(&mut self) {
        for channel in self.channels.iter_mut().flatten() {
            confirm::flush(&mut self.session, channel);
        }
    }

    async fn on_frame(&mut self, frame: RawFrame) -> AmqpResult<()> {
        if self.state == State::Closing {
            return self.on_frame_while_closing(frame);
        }
        match frame.kind {
            FRAME_HEARTBEAT => {
                if !frame.payload.is_empty() {
                    return Err(AmqpError::connection(
                        code::FRAME_ERROR,
                        format!(
                            "heartbeat frame with a {}-byte payload",
                            frame.payload.len()
                        ),
                    ));
                }
                if frame.channel != 0 {
                    return Err(AmqpError::connection(
                        code::FRAME_ERROR,
                        format!("heartbeat frame on channel {}", frame.channel),
                    ));
                }
                Ok(())
            }
            FRAME_METHOD => {
                let method = decode_method(&frame.payload)?;
                if frame.channel == 0 {
                    self.on_connection_method(method).await
                } else {
                    self.on_channel_method(frame.channel, method).await
                }
            }
            FRAME_HEADER => self.on_content_header(frame).await,
            FRAME_BODY => self.on_content_body(frame).await,
            other => Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("unknown frame type {other}"),
            )),
        }
    }

    fn on_frame_while_closing(&mut self, frame: RawFrame) -> AmqpResult<()> {
        if frame.kind == FRAME_METHOD && frame.channel == 0 {
            match method_ids(&frame.payload) {
                Some((10, 51)) => self.state = State::Closed,
                Some((10, 50)) => {
                    self.session.send(
                        0,
                        AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                    );
                    self.state = State::Closed;
                    self.peer_closes = true;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn on_connection_method(&mut self, method: AMQPClass) -> AmqpResult<()> {
        let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
        let AMQPClass::Connection(method) = method else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "only connection methods are allowed on channel 0",
            )
            .during(ids));
        };
        match (self.state, method) {
            (State::AwaitingStartOk, conn::AMQPMethod::StartOk(m)) => self.on_start_ok(m).await,
            (State::AwaitingTuneOk, conn::AMQPMethod::TuneOk(m)) => self.on_tune_ok(m),
            (State::AwaitingOpen, conn::AMQPMethod::Open(m)) => self.on_open(m).await,
            (_, conn::AMQPMethod::Close(m)) => {
                tracing::debug!(code = m.reply_code, text = %m.reply_text, "client closed connection");
                // Everything the connection held, exclusive queues included, is gone before
                // close-ok, so a client that reconnects at once can reuse the names.
                self.cleanup().await;
                self.session.send(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                );
                self.state = State::Closed;
                self.peer_closes = true;
                Ok(())
            }
            (_, conn::AMQPMethod::CloseOk(_)) => {
                self.state = State::Closed;
                Ok(())
            }
            (State::Open, conn::AMQPMethod::UpdateSecret(_)) => {
                self.session.send(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(
                        conn::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            (_, other) => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!("unexpected method {other:?} in state {:?}", self.state),
            )
            .during(ids)),
        }
    }

    /// Takes an open channel out of the table (to be put back with [`Self::put_channel`]).
    /// A number that was never opened costs nothing: the table only grows on channel.open.
    pub(super) fn take_channel(&mut self, number: u16) -> Option<Box<Channel>> {
        self.channels
            .get_mut(usize::from(number))
            .and_then(Option::take)
    }

    /// Puts a channel in its slot; numbers are bounded by channel_max at channel.open.
    pub(super) fn put_channel(&mut self, number: u16, channel: Box<Channel>) {
        let index = usize::from(number);
        if self.channels.len() <= index {
            self.channels.resize_with(index + 1, || None);
        }
        self.channels[index] = Some(channel);
    }

    async fn on_channel_method(&mut self, number: u16, method: AMQPClass) -> AmqpResult<()> {
        // Channels open and close only through the channel class.
        let channel_class = matches!(method, AMQPClass::Channel(_));
        let outcome = self.handle_channel_method(number, method).await;
        if channel_class {
            if let Some(slot) = &mut self.session.limit_slot {
                slot.channels_left(self.channels.iter().flatten().count());
            }
            if let Some(registration) = &self.session.registration {
                let numbers = self
                    .channels
                    .iter()
                    .flatten()
                    .map(|channel| channel.id.number)
                    .collect();
                registration.set_channel_numbers(numbers);
            }
        }
        outcome
    }

    async fn handle_channel_method(&mut self, number: u16, method: AMQPClass) -> AmqpResult<()> {
        let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if self.state != State::Open {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("channel {number} used before the connection was open"),
            )
            .during(ids));
        }
        if let AMQPClass::Connection(_) = method {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "connection methods are only allowed on channel 0",
            )
            .during(ids));
        }
        if let AMQPClass::Channel(channel_methods::AMQPMethod::Open(_)) = method {
            return self.open_channel(number).map_err(|e| e.during(ids));
        }
        let channel_max = self.session.channel_max;
        let Some(mut channel) = self.take_channel(number) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {number}"),
            )
            .during(ids));
        };
        debug_assert!(number <= channel_max || channel_max == 0);
        if channel.state == ChannelState::Closing {
            let keep = self.on_method_while_channel_closing(&channel, method);
            if keep {
                self.put_channel(number, channel);
            }
            return Ok(());
        }
        if channel.pending.is_some() {
            self.put_channel(number, channel);
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got method frame on channel {number}"
                ),
            )
            .during(ids));
        }
        let outcome = self.dispatch(&mut channel, method).await;
        let keep = match outcome {
            Ok(keep) => keep,
            Err(error) if error.scope == Scope::Channel => {
                self.close_channel_with(&mut channel, error.during(ids))
                    .await;
                true
            }
            Err(error) => {
                self.put_channel(number, channel);
                return Err(error.during(ids));
            }
        };
        if keep {
            self.put_channel(number, channel);
        }
        Ok(())
    }

    /// Runs one method on an open channel; returns whether the channel still exists.
    async fn dispatch(&mut self, channel: &mut Channel, method: AMQPClass) -> AmqpResult<bool> {
        let session = &mut self.session;
        match method {
            AMQPClass::Basic(m) => basic::handle(session, channel, m).await?,
            AMQPClass::Queue(m) => queue::handle(session, channel, m).await?,
            AMQPClass::Exchange(m) => exchange::handle(session, channel, m).await?,
            AMQPClass::Confirm(m) => confirm::handle(session, channel, m)?,
            AMQPClass::Tx(m) => tx::handle(session, channel, m).await?,
            AMQPClass::Access(access_method) => match access_method {
                amq_protocol::protocol::access::AMQPMethod::Request(_) => {
                    session.send(
                        channel.id.number,
                        AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                            amq_protocol::protocol::access::RequestOk {},
                        )),
                    );
                }
                other => return Err(server_only(&AMQPClass::Access(other))),
            },
            AMQPClass::Channel(m) => return self.on_channel_class(channel, m).await,
            AMQPClass::Connection(_) => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "connection methods are only allowed on channel 0",
                ));
            }
        }
        Ok(true)
    }

    async fn on_channel_class(
        &mut self,
        channel: &mut Channel,
        method: channel_methods::AMQPMethod,
    ) -> AmqpResult<bool> {
        let number = channel.id.number;
        match method {
            channel_methods::AMQPMethod::Close(_) => {
                self.release_channel(channel).await;
                self.session.send(
                    number,
                    AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(CloseOk {})),
                );
                Ok(false)
            }
            channel_methods::AMQPMethod::CloseOk(_) => Ok(true),
            channel_methods::AMQPMethod::Flow(m) => {
                channel.flow_active = m.active;
                if m.active {
                    while let Some(delivery) = channel.held.pop_front() {
                        basic::deliver(&mut self.session, channel, delivery);
                    }
                }
                self.session.send(
                    number,
                    AMQPClass::Channel(channel_methods::AMQPMethod::FlowOk(
                        channel_methods::FlowOk { active: m.active },
                    )),
                );
                Ok(true)
            }
            channel_methods::AMQPMethod::Open(_) => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            other => Err(server_only(&AMQPClass::Channel(other))),
        }
    }

    /// Handles a method on a channel the server is closing: only close and close-ok count.
    /// Returns whether the channel is still waiting. A channel.close from the client that
    /// crossed ours is answered with close-ok, and the channel still waits for the client's
    /// close-ok to ours (as RabbitMQ does): forgetting it there would make that close-ok a
    /// frame on an unknown channel, which ends the whole connection.
    fn on_method_while_channel_closing(&mut self, channel: &Channel, method: AMQPClass) -> bool {
        match method {
            AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(_)) => false,
            AMQPClass::Channel(channel_methods::AMQPMethod::Close(_)) => {
                self.session.send(
                    channel.id.number,
                    AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(CloseOk {})),
                );
                true
            }
            _ => true,
        }
    }

    fn open_channel(&mut self, number: u16) -> AmqpResult<()> {
        if number > self.session.channel_max && self.session.channel_max != 0 {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!(
                    "channel number {number} exceeds channel_max {}",
                    self.session.channel_max
                ),
            ));
        }
        if self
            .channels
            .get(usize::from(number))
            .is_some_and(Option::is_some)
        {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "second 'channel.open' seen",
            ));
        }
        if let Some(slot) = &mut self.session.limit_slot {
            slot.open_channel().map_err(|exceeded| {
                tracing::info!(peer = ?self.session.peer, %exceeded, "channel refused");
                AmqpError::connection(code::NOT_ALLOWED, exceeded.to_string())
            })?;
        }
        self.generation = self.generation.wrapping_add(1);
        let id = ChannelId {
            connection: self.session.id,
            number,
            generation: self.generation,
        };
        self.put_channel(number, Box::new(Channel::new(id)));
        self.session.send(
            number,
            AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(ChannelOpenOk {})),
        );
        Ok(())
    }

    /// Closes a channel because of a soft error: channel.close goes out, the channel's
    /// consumers and unacknowledged messages are released now, and close-ok is awaited.
    async fn close_channel_with(&mut self, channel: &mut Channel, error: AmqpError) {
        tracing::debug!(channel = channel.id.number, %error, "closing channel");
        self.release_channel(channel).await;
        self.session.send_channel_close(channel.id.number, &error);
        channel.state = ChannelState::Closing;
    }

    /// Gives back everything a channel holds in the core.
    async fn release_channel(&mut self, channel: &mut Channel) {
        for queue in channel.queues_touched() {
            queue.channel_closed(channel.id).await;
        }
        channel.consumers.clear();
        channel.unacked.clear();
        channel.pending = None;
        channel.held.clear();
        channel.tx = None;
    }

    async fn close_all_channels(&mut self) {
        let channels: Vec<Box<Channel>> =
            self.channels.iter_mut().filter_map(Option::take).collect();
        for mut channel in channels {
            self.release_channel(&mut channel).await;
        }
    }

    /// Closes the connection because of a hard error (or a soft one outside any channel).
    async fn fail(&mut self, error: AmqpError) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        tracing::info!(peer = ?self.session.peer, %error, "closing connection on error");
        self.close_all_channels().await;
        let before_tune = matches!(self.state, State::AwaitingHeader);
        if before_tune {
            self.state = State::Closed;
            return;
        }
        self.session.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                reply_code: error.code,
                reply_text: error.reply_text().into(),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        );
        self.state = State::Closing;
    }

    /// Starts a server-initiated close with `code` (connection-forced at shutdown).
    pub async fn close(&mut self, code: u16, text: &str) {
        self.fail(AmqpError::connection(code, text)).await;
    }

    /// Writes a consumer event: a delivery, or a broker-side cancel.
    pub fn on_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Deliver(delivery) => {
                let number = delivery.channel.number;
                let Some(Some(channel)) = self.channels.get_mut(usize::from(number)) else {
                    return;
                };
                if channel.id != delivery.channel || channel.state != ChannelState::Open {
                    return;
                }
                if !channel.flow_active {
                    channel.held.push_back(delivery);
                    return;
                }
                basic::deliver(&mut self.session, channel, delivery);
            }
            ConsumerEvent::Cancelled {
                channel: id,
                consumer_tag,
            } => {
                let Some(Some(channel)) = self.channels.get_mut(usize::from(id.number)) else {
                    return;
                };
                if channel.id != id || channel.consumers.remove(&consumer_tag).is_none() {
                    return;
                }
                if self.session.capabilities.consumer_cancel_notify {
                    self.session.send(
                        id.number,
                        AMQPClass::Basic(basic_methods::AMQPMethod::Cancel(
                            basic_methods::Cancel {
                                consumer_tag: consumer_tag.as_ref().into(),
                                nowait: true,
                            },
                        )),
                    );
                }
            }
        }
    }

    /// Releases everything the connection holds: called once its socket is gone.
    pub async fn cleanup(&mut self) {
        self.close_all_channels().await;
        if let Some(vhost) = self.session.vhost.take() {
            vhost.connection_closed(self.session.id).await;
        }
    }
}

/// Decodes a method frame's payload, telling unknown methods (540) from malformed ones (502).
/// Public so the `amqp_method` fuzz target drives the same checks (field-table depth first,
/// then `amq-protocol`) as a connection does.
pub fn decode_method(payload: &[u8]) -> AmqpResult<AMQPClass> {
    let Some((class, method)) = method_ids(payload) else {
        return Err(AmqpError::connection(
            code::FRAME_ERROR,
            "method frame too short",
        ));
    };
    if !is_known_method(class, method) {
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            format!("unknown method: class {class}, method {method}"),
        )
        .during((class, method)));
    }
    // amq-protocol drops basic.qos's prefetch-size; RabbitMQ refuses a non-zero one (540).
    if (class, method) == (60, 10)
        && let Some(size) = payload.get(4..8)
        && size != [0, 0, 0, 0]
    {
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            format!("prefetch_size!=0 ({size})"),
        )
        .during((class, method)));
    }
    let malformed = || {
        AmqpError::connection(
            code::SYNTAX_ERROR,
            format!("malformed arguments for method: class {class}, method {method}"),
        )
        .during((class, method))
    };
    // amq-protocol parses field tables recursively: measure their depth first, iteratively.
    match nesting::check_method(payload, MAX_DEPTH) {
        Ok(()) => {}
        Err(NestingError::Malformed) => return Err(malformed()),
        Err(too_deep @ NestingError::TooDeep { .. }) => {
            return Err(
                AmqpError::connection(code::SYNTAX_ERROR, too_deep.to_string())
                    .during((class, method)),
            );
        }
    }
    match parse_class(payload) {
        Ok(([], decoded)) => Ok(decoded),
        Ok(_) | Err(_) => Err(malformed()),
    }
}
