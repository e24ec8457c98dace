//! A tiny AMQP 0-9-1 client over a blocking `TcpStream`, with frames built by hand, so tests can
//! send exactly the bytes they want (including wrong ones) and read exactly what comes back.
//!
//! Only the handful of methods the tests need are encoded; everything the broker sends is read as
//! raw frames. Every read has a timeout, so no test can hang on a broker that stays silent.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any single expectation may wait for the broker.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol header of AMQP 0-9-1.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A method frame.
pub const FRAME_METHOD: u8 = 1;
/// A content header frame.
pub const FRAME_HEADER: u8 = 2;
/// A content body frame.
pub const FRAME_BODY: u8 = 3;
/// A heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;

/// Encodes one frame: type, channel, size, payload, frame-end.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    frame_ending_with(kind, channel, payload, FRAME_END)
}

/// Encodes one frame with the given last octet instead of 0xCE.
pub fn frame_ending_with(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = frame_header(kind, channel, payload.len() as u32);
    out.extend_from_slice(payload);
    out.push(end);
    out
}

/// The seven octets that start a frame: type, channel and the payload size it announces.
pub fn frame_header(kind: u8, channel: u16, size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(7);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out
}

/// A content header frame for class basic (60) with no properties.
pub fn content_header(channel: u16, body_size: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(14);
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&body_size.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    frame(FRAME_HEADER, channel, &payload)
}

/// A content body frame.
pub fn body(channel: u16, data: &[u8]) -> Vec<u8> {
    frame(FRAME_BODY, channel, data)
}

/// The arguments of one method, encoded field by field after its class and method ids.
#[derive(Debug, Clone)]
pub struct Method(Vec<u8>);

impl Method {
    /// Starts a method payload with its class and method ids.
    pub fn new(class: u16, method: u16) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&class.to_be_bytes());
        bytes.extend_from_slice(&method.to_be_bytes());
        Self(bytes)
    }

    /// An octet (also a packed group of bits).
    pub fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    /// A short integer.
    pub fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A long integer.
    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A short string: one length octet, then the bytes.
    pub fn short(mut self, value: &str) -> Self {
        assert!(value.len() <= 255, "short string too long");
        self.0.push(value.len() as u8);
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    /// A long string: a 32-bit length, then the bytes.
    pub fn long(mut self, value: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// A field table given as its encoded entries (without the length prefix).
    pub fn table(self, entries: &[u8]) -> Self {
        self.long(entries)
    }

    /// Arbitrary raw bytes.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The payload so far.
    pub fn payload(&self) -> &[u8] {
        &self.0
    }

    /// The method frame for `channel`.
    pub fn frame(&self, channel: u16) -> Vec<u8> {
        frame(FRAME_METHOD, channel, &self.0)
    }
}

/// One field-table entry holding a boolean.
pub fn bool_entry(key: &str, value: bool) -> Vec<u8> {
    let mut out = vec![key.len() as u8];
    out.extend_from_slice(key.as_bytes());
    out.push(b't');
    out.push(u8::from(value));
    out
}

/// One field-table entry holding a nested table.
pub fn table_entry(key: &str, entries: &[u8]) -> Vec<u8> {
    let mut out = vec![key.len() as u8];
    out.extend_from_slice(key.as_bytes());
    out.push(b'F');
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(entries);
    out
}

/// connection.start-ok (10/11): a PLAIN login of `user` with `password`, announcing the client
/// `capabilities` (table entries, for example from [`bool_entry`]), locale en_US.
pub fn start_ok(user: &str, password: &str, capabilities: &[u8]) -> Method {
    let response = format!("\0{user}\0{password}");
    Method::new(10, 11)
        .table(&table_entry("capabilities", capabilities))
        .short("PLAIN")
        .long(response.as_bytes())
        .short("en_US")
}

/// connection.tune-ok (10/31).
pub fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Method {
    Method::new(10, 31)
        .u16(channel_max)
        .u32(frame_max)
        .u16(heartbeat)
}

/// connection.open (10/40) of `vhost`.
pub fn connection_open(vhost: &str) -> Method {
    Method::new(10, 40).short(vhost).short("").u8(0)
}

/// queue.declare (50/10), neither passive nor durable, with no arguments.
pub fn queue_declare(name: &str) -> Method {
    Method::new(50, 10).u16(0).short(name).u8(0).table(&[])
}

/// basic.publish (60/40) to `exchange` with `routing_key`, neither mandatory nor immediate.
pub fn basic_publish(exchange: &str, routing_key: &str) -> Method {
    Method::new(60, 40)
        .u16(0)
        .short(exchange)
        .short(routing_key)
        .u8(0)
}

/// channel.open (20/10).
pub fn channel_open() -> Method {
    Method::new(20, 10).short("")
}

/// A frame as read from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub kind: u8,
    /// Channel number.
    pub channel: u16,
    /// Payload without header and frame-end.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Class and method ids, for a method frame.
    pub fn method_ids(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let mut fields = Fields::new(&self.payload);
        Some((fields.u16(), fields.u16()))
    }

    /// The fields after the class and method ids.
    pub fn arguments(&self) -> Fields<'_> {
        Fields::new(&self.payload[4..])
    }
}

/// Takes one whole frame off the front of `buffer`; `None` if it holds only part of one.
/// Panics on a frame that breaks the framing rules: the broker must never send one.
pub fn split_frame(buffer: &mut Vec<u8>) -> Option<Frame> {
    if buffer.len() < 7 {
        return None;
    }
    let kind = buffer[0];
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
    if buffer.len() < size + 8 {
        return None;
    }
    assert!(
        matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ),
        "broker sent a frame of unknown type {kind}: {buffer:02x?}"
    );
    assert_eq!(
        buffer[size + 7],
        FRAME_END,
        "broker sent a frame without 0xCE at its end: {buffer:02x?}"
    );
    let payload = buffer[7..7 + size].to_vec();
    buffer.drain(..size + 8);
    Some(Frame {
        kind,
        channel,
        payload,
    })
}

/// A reader of method arguments; panics if the broker's method is shorter than it should be.
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            self.bytes.len() >= n,
            "method from the broker is truncated: wanted {n} more bytes, have {:02x?}",
            self.bytes
        );
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }

    /// An octet.
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    /// A short integer.
    pub fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }

    /// A long integer.
    pub fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// A short string, which must be UTF-8.
    pub fn short(&mut self) -> String {
        let len = usize::from(self.u8());
        String::from_utf8(self.take(len).to_vec()).expect("short string is UTF-8")
    }

    /// A long string (or a field table, whose encoding is the same), as raw bytes.
    pub fn long(&mut self) -> &'a [u8] {
        let len = self.u32() as usize;
        self.take(len)
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A decoded connection.close (10/50) or channel.close (20/40).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The reply code.
    pub code: u16,
    /// The reply text.
    pub text: String,
    /// The class of the method that caused it (0 if none).
    pub class_id: u16,
    /// The method that caused it (0 if none).
    pub method_id: u16,
}

impl Close {
    /// Decodes the arguments of a close method frame.
    pub fn decode(frame: &Frame) -> Close {
        let mut fields = frame.arguments();
        let close = Close {
            code: fields.u16(),
            text: fields.short(),
            class_id: fields.u16(),
            method_id: fields.u16(),
        };
        assert!(
            fields.is_empty(),
            "trailing bytes after close arguments: {frame:?}"
        );
        close
    }
}

/// What happened to a read that came back empty-handed.
#[derive(Debug)]
pub enum ReadEnd {
    /// The broker closed the socket (end of file, or a reset after it closed).
    Closed,
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// A blocking connection to the broker.
pub struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The frame_max in force once tuned (0 before).
    pub frame_max: u32,
}

impl RawClient {
    /// Connects, without sending anything.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the broker");
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buffer: Vec::new(),
            frame_max: 0,
        }
    }

    /// Connects and completes the handshake as guest on `/`, accepting the broker's frame_max.
    pub fn open(addr: SocketAddr) -> RawClient {
        Self::open_with_frame_max(addr, None)
    }

    /// Connects and completes the handshake as guest on `/`, asking for `frame_max` (or taking
    /// the broker's proposal), with heartbeats off.
    pub fn open_with_frame_max(addr: SocketAddr, frame_max: Option<u32>) -> RawClient {
        let mut client = Self::connect(addr);
        client.send(PROTOCOL_HEADER);
        let start = client.expect_method(0, (10, 10), "connection.start");
        let mut fields = start.arguments();
        assert_eq!(
            (fields.u8(), fields.u8()),
            (0, 9),
            "protocol version in connection.start"
        );
        let _server_properties = fields.long();
        let mechanisms = String::from_utf8_lossy(fields.long()).into_owned();
        assert!(
            mechanisms.split(' ').any(|m| m == "PLAIN"),
            "PLAIN is offered: {mechanisms}"
        );
        let capabilities = [
            bool_entry("authentication_failure_close", true),
            bool_entry("consumer_cancel_notify", true),
        ]
        .concat();
        client.send(&start_ok("guest", "guest", &capabilities).frame(0));
        client.tune_and_open(frame_max, 0);
        client
    }

    /// After start-ok: answers connection.tune with its channel_max, `frame_max` (or the
    /// proposed one) and `heartbeat` seconds, then opens vhost `/` and waits for open-ok.
    pub fn tune_and_open(&mut self, frame_max: Option<u32>, heartbeat: u16) {
        let tune = self.expect_method(0, (10, 30), "connection.tune");
        let mut fields = tune.arguments();
        let channel_max = fields.u16();
        let proposed = fields.u32();
        let _heartbeat = fields.u16();
        let frame_max = frame_max.unwrap_or(proposed);
        self.send(&tune_ok(channel_max, frame_max, heartbeat).frame(0));
        self.frame_max = frame_max;
        self.send(&connection_open("/").frame(0));
        self.expect_method(0, (10, 41), "connection.open-ok");
    }

    /// Writes raw bytes; panics if the socket refuses them.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// Writes raw bytes, reporting whether the socket took them (it may be closed already).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Closes the sending half, as a client that stops mid-frame would.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads once, waiting no later than `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::TimedOut);
        }
        self.stream
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::TimedOut)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                Err(ReadEnd::Closed)
            }
            Err(e) => panic!("read from the broker failed: {e}"),
        }
    }

    /// Reads the next frame, waiting up to [`TIMEOUT`].
    pub fn read_frame(&mut self) -> Result<Frame, ReadEnd> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(frame) = split_frame(&mut self.buffer) {
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads the next frame other than a heartbeat; panics on end of file or timeout.
    pub fn expect_frame(&mut self, waiting_for: &str) -> Frame {
        loop {
            match self.read_frame() {
                Ok(frame) if frame.kind == FRAME_HEARTBEAT => continue,
                Ok(frame) => return frame,
                Err(end) => panic!("waiting for {waiting_for}: {end:?}"),
            }
        }
    }

    /// Reads the next frame and checks it is method `ids` on `channel`.
    pub fn expect_method(&mut self, channel: u16, ids: (u16, u16), name: &str) -> Frame {
        let frame = self.expect_frame(name);
        if frame.method_ids() == Some((10, 50)) && ids != (10, 50) {
            panic!(
                "expected {name}, got connection.close {:?}",
                Close::decode(&frame)
            );
        }
        if frame.method_ids() == Some((20, 40)) && ids != (20, 40) {
            panic!(
                "expected {name}, got channel.close {:?}",
                Close::decode(&frame)
            );
        }
        assert_eq!(
            (frame.channel, frame.method_ids()),
            (channel, Some(ids)),
            "expected {name} on channel {channel}, got {frame:?}"
        );
        frame
    }

    /// Reads the next frame and checks it is connection.close; returns its arguments.
    pub fn expect_connection_close(&mut self) -> Close {
        let frame = self.expect_method(0, (10, 50), "connection.close");
        Close::decode(&frame)
    }

    /// Opens channel `number` and waits for channel.open-ok.
    pub fn open_channel(&mut self, number: u16) {
        self.send(&channel_open().frame(number));
        self.expect_method(number, (20, 11), "channel.open-ok");
    }

    /// Declares queue `name` on `channel`; returns the message count in declare-ok.
    pub fn declare_queue(&mut self, channel: u16, name: &str) -> u32 {
        self.send(&queue_declare(name).frame(channel));
        let ok = self.expect_method(channel, (50, 11), "queue.declare-ok");
        let mut fields = ok.arguments();
        assert_eq!(fields.short(), name, "declare-ok names the queue");
        let messages = fields.u32();
        let _consumers = fields.u32();
        messages
    }

    /// Sends connection.close-ok (ignoring a socket the broker has already closed) and checks
    /// that the broker then closes the socket without sending anything more.
    pub fn close_ok_then_eof(&mut self) {
        let close_ok = Method::new(10, 51);
        let _ = self.try_send(&close_ok.frame(0));
        self.expect_eof();
    }

    /// Closes the connection the polite way: connection.close, close-ok, then the client
    /// closes its side (after close-ok the broker leaves that to the client, as RabbitMQ
    /// does) and the broker closes the socket.
    pub fn close(mut self) {
        let close = Method::new(10, 50).u16(200).short("bye").u16(0).u16(0);
        self.send(&close.frame(0));
        self.expect_method(0, (10, 51), "connection.close-ok");
        let _ = self.stream.shutdown(Shutdown::Write);
        self.expect_eof();
    }

    /// Waits for the broker to close the socket; panics if it sends more frames first or stays
    /// open past [`TIMEOUT`].
    pub fn expect_eof(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(
                self.buffer.is_empty(),
                "broker sent more after the close: {:02x?}",
                self.buffer
            );
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return,
                Err(ReadEnd::TimedOut) => panic!("the broker did not close the socket"),
            }
        }
    }

    /// Reads everything until the broker closes the socket; `None` if it is still open after
    /// `timeout`. Whatever was buffered already is included.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return Some(std::mem::take(&mut self.buffer)),
                Err(ReadEnd::TimedOut) => return None,
            }
        }
    }
}
