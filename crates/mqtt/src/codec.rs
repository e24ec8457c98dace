//! The MQTT 3.1.1 wire format: [`Packet`]s, a streaming decoder and an encoder. Pure: no I/O,
//! no session state.
//!
//! [`decode`] looks at the read buffer and either finds one whole packet (splitting it off the
//! buffer), says more bytes are needed (`Ok(None)`), or names what is malformed. It checks the
//! declared length against the size limit before buffering the rest, so an oversized packet
//! is refused from its first bytes. A PUBLISH payload is a `Bytes` slice of the read buffer, not
//! a copy. Everything the specification calls malformed (reserved flags, invalid UTF-8, a
//! remaining length longer than four bytes, a zero packet identifier, QoS 3) is a
//! [`DecodeError`]; the connection's answer to any of them is to close.
//!
//! We use our own decoder rather than `mqttbytes` (DESIGN.md's starting point): that crate is
//! frozen, and these checks (reserved flags per packet type, the size limit before buffering,
//! "incomplete" versus "malformed") are the ones a broker must own anyway.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Quality of service of a publication or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value (0, 1 or 2).
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The last will a client leaves in its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Where it is published.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
}

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol name (`MQTT` for 3.1.1).
    pub protocol_name: String,
    /// The protocol level (4 for 3.1.1).
    pub protocol_level: u8,
    /// Start a new session (discarding any stored one) and drop it on disconnect.
    pub clean_session: bool,
    /// Keep-alive interval in seconds (0 = none).
    pub keep_alive: u16,
    /// The client identifier (possibly empty).
    pub client_id: String,
    /// The will, if any.
    pub will: Option<LastWill>,
    /// The user name, if any.
    pub username: Option<String>,
    /// The password, if any (binary data in 3.1.1).
    pub password: Option<Bytes>,
}

/// CONNACK return codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted = 0,
    /// The server does not support the protocol level.
    UnacceptableProtocolVersion = 1,
    /// The client identifier is not allowed.
    IdentifierRejected = 2,
    /// The service is unavailable.
    ServerUnavailable = 3,
    /// Bad user name or password.
    BadUserNameOrPassword = 4,
    /// The client is not authorised to connect.
    NotAuthorized = 5,
}

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Re-delivery of an earlier attempt.
    pub dup: bool,
    /// Its QoS.
    pub qos: QoS,
    /// The retain flag.
    pub retain: bool,
    /// The topic name.
    pub topic: String,
    /// The packet identifier (QoS 1 and 2 only).
    pub packet_id: Option<u16>,
    /// The application message.
    pub payload: Bytes,
}

/// One MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK: session present, return code.
    ConnAck {
        /// Whether the server had a session for the client.
        session_present: bool,
        /// The answer.
        code: ConnectReturnCode,
    },
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK (QoS 1 acknowledgement).
    PubAck(u16),
    /// PUBREC (QoS 2, part 1).
    PubRec(u16),
    /// PUBREL (QoS 2, part 2).
    PubRel(u16),
    /// PUBCOMP (QoS 2, part 3).
    PubComp(u16),
    /// SUBSCRIBE: packet id and (filter, requested QoS) pairs.
    Subscribe {
        /// The packet identifier.
        packet_id: u16,
        /// The filters and the QoS asked for each.
        filters: Vec<(String, QoS)>,
    },
    /// SUBACK: packet id and one return code per filter (0, 1, 2 or 0x80).
    SubAck {
        /// The packet identifier.
        packet_id: u16,
        /// Granted QoS or 0x80 (failure), one per filter.
        codes: Vec<u8>,
    },
    /// UNSUBSCRIBE: packet id and filters.
    Unsubscribe {
        /// The packet identifier.
        packet_id: u16,
        /// The filters to remove.
        filters: Vec<String>,
    },
    /// UNSUBACK.
    UnsubAck(u16),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
}

/// Why a packet could not be decoded. Every one is a protocol violation: the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet is larger than allowed.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its declared size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The remaining-length field runs past four bytes.
    #[error("malformed remaining length")]
    BadLength,
    /// Packet type 0 or 15.
    #[error("reserved packet type {0}")]
    ReservedType(u8),
    /// The fixed header's flags are wrong for the type.
    #[error("invalid flags {flags:#x} for packet type {kind}")]
    BadFlags {
        /// The packet type.
        kind: u8,
        /// The flags.
        flags: u8,
    },
    /// The body does not match the packet's grammar.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A string is not valid UTF-8 (or contains U+0000).
    #[error("invalid UTF-8 string")]
    BadUtf8,
}

/// Finds one whole packet at the start of `buffer`, splits it off and decodes it. `Ok(None)`
/// means more bytes are needed; `max_size` bounds the whole packet.
pub fn decode(buffer: &mut BytesMut, max_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    let mut length = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buffer.get(header_len) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(DecodeError::BadLength);
        }
    }
    let size = header_len + length;
    if size > max_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_size,
        });
    }
    let kind = first >> 4;
    check_flags(kind, first & 0x0f)?;
    if buffer.len() < size {
        return Ok(None);
    }
    let mut packet = buffer.split_to(size);
    packet.advance(header_len);
    parse(kind, first & 0x0f, packet.freeze()).map(Some)
}

fn check_flags(kind: u8, flags: u8) -> Result<(), DecodeError> {
    let expected = match kind {
        0 | 15 => return Err(DecodeError::ReservedType(kind)),
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::BadFlags { kind, flags })
    }
}

fn parse(kind: u8, flags: u8, mut body: Bytes) -> Result<Packet, DecodeError> {
    let packet = match kind {
        1 => Packet::Connect(Box::new(parse_connect(&mut body)?)),
        2 => {
            let ack_flags = take_u8(&mut body)?;
            let code = match take_u8(&mut body)? {
                0 => ConnectReturnCode::Accepted,
                1 => ConnectReturnCode::UnacceptableProtocolVersion,
                2 => ConnectReturnCode::IdentifierRejected,
                3 => ConnectReturnCode::ServerUnavailable,
                4 => ConnectReturnCode::BadUserNameOrPassword,
                5 => ConnectReturnCode::NotAuthorized,
                _ => return Err(DecodeError::Malformed("CONNACK return code")),
            };
            Packet::ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
            }
        }
        3 => Packet::Publish(parse_publish(flags, &mut body)?),
        4 => Packet::PubAck(take_packet_id(&mut body)?),
        5 => Packet::PubRec(take_packet_id(&mut body)?),
        6 => Packet::PubRel(take_packet_id(&mut body)?),
        7 => Packet::PubComp(take_packet_id(&mut body)?),
        8 => {
            let packet_id = take_packet_id(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let filter = take_string(&mut body)?;
                let options = take_u8(&mut body)?;
                if options & 0xfc != 0 {
                    return Err(DecodeError::Malformed("SUBSCRIBE reserved bits"));
                }
                let qos = QoS::from_u8(options).ok_or(DecodeError::Malformed("SUBSCRIBE QoS"))?;
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::Malformed("SUBSCRIBE without filters"));
            }
            return Ok(Packet::Subscribe { packet_id, filters });
        }
        9 => {
            let packet_id = take_packet_id(&mut body)?;
            let codes = body.to_vec();
            body.clear();
            Packet::SubAck { packet_id, codes }
        }
        10 => {
            let packet_id = take_packet_id(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(take_string(&mut body)?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Malformed("UNSUBSCRIBE without filters"));
            }
            return Ok(Packet::Unsubscribe { packet_id, filters });
        }
        11 => Packet::UnsubAck(take_packet_id(&mut body)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(DecodeError::ReservedType(kind)),
    };
    if body.has_remaining() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(packet)
}

fn parse_connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    let protocol_name = take_string(body)?;
    let protocol_level = take_u8(body)?;
    if protocol_name != "MQTT" || protocol_level != 4 {
        // Another version's CONNECT (MQTT 5 adds properties, 3.1 is "MQIsdp"): the rest is
        // laid out differently, and the answer only needs the name and level (CONNACK 1).
        body.clear();
        return Ok(Connect {
            protocol_name,
            protocol_level,
            clean_session: true,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
        });
    }
    let flags = take_u8(body)?;
    if flags & 1 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag"));
    }
    let keep_alive = take_u16(body)?;
    let client_id = take_string(body)?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let will = if will_flag {
        let topic = take_string(body)?;
        let payload = take_binary(body)?;
        let qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS"))?;
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: will_retain,
        })
    } else {
        if will_qos != 0 || will_retain {
            return Err(DecodeError::Malformed("will QoS or retain without a will"));
        }
        None
    };
    let has_username = flags & 0x80 != 0;
    let has_password = flags & 0x40 != 0;
    if has_password && !has_username {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let username = has_username.then(|| take_string(body)).transpose()?;
    let password = has_password.then(|| take_binary(body)).transpose()?;
    Ok(Connect {
        protocol_name,
        protocol_level,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn parse_publish(flags: u8, body: &mut Bytes) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS"))?;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = take_string(body)?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(take_packet_id(body)?),
    };
    let payload = std::mem::take(body);
    Ok(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload,
    })
}

fn take_u8(body: &mut Bytes) -> Result<u8, DecodeError> {
    if body.has_remaining() {
        Ok(body.get_u8())
    } else {
        Err(DecodeError::Malformed("packet ends early"))
    }
}

fn take_u16(body: &mut Bytes) -> Result<u16, DecodeError> {
    if body.remaining() >= 2 {
        Ok(body.get_u16())
    } else {
        Err(DecodeError::Malformed("packet ends early"))
    }
}

fn take_packet_id(body: &mut Bytes) -> Result<u16, DecodeError> {
    match take_u16(body)? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn take_binary(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(take_u16(body)?);
    if body.remaining() < len {
        return Err(DecodeError::Malformed("packet ends early"));
    }
    Ok(body.split_to(len))
}

fn take_string(body: &mut Bytes) -> Result<String, DecodeError> {
    let bytes = take_binary(body)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| DecodeError::BadUtf8)?;
    if text.contains('\0') {
        return Err(DecodeError::BadUtf8);
    }
    Ok(text.to_owned())
}

/// Appends `packet`'s encoding to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => encode_connect(connect, out),
        Packet::ConnAck {
            session_present,
            code,
        } => {
            out.put_slice(&[0x20, 2, u8::from(*session_present), *code as u8]);
        }
        Packet::Publish(publish) => encode_publish(publish, out),
        Packet::PubAck(id) => put_ack(out, 0x40, *id),
        Packet::PubRec(id) => put_ack(out, 0x50, *id),
        Packet::PubRel(id) => put_ack(out, 0x62, *id),
        Packet::PubComp(id) => put_ack(out, 0x70, *id),
        Packet::Subscribe { packet_id, filters } => {
            let length = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            out.put_u8(0x82);
            put_length(out, length);
            out.put_u16(*packet_id);
            for (filter, qos) in filters {
                put_string(out, filter);
                out.put_u8(*qos as u8);
            }
        }
        Packet::SubAck { packet_id, codes } => {
            out.put_u8(0x90);
            put_length(out, 2 + codes.len());
            out.put_u16(*packet_id);
            out.put_slice(codes);
        }
        Packet::Unsubscribe { packet_id, filters } => {
            let length = 2 + filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            out.put_u8(0xa2);
            put_length(out, length);
            out.put_u16(*packet_id);
            for filter in filters {
                put_string(out, filter);
            }
        }
        Packet::UnsubAck(id) => put_ack(out, 0xb0, *id),
        Packet::PingReq => out.put_slice(&[0xc0, 0]),
        Packet::PingResp => out.put_slice(&[0xd0, 0]),
        Packet::Disconnect => out.put_slice(&[0xe0, 0]),
    }
}

/// Appends a PUBLISH without building a [`Publish`] (the delivery path).
pub fn encode_publish_parts(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: Option<u16>,
    dup: bool,
    retain: bool,
) {
    let mut flags = 0x30 | ((qos as u8) << 1);
    if dup {
        flags |= 0x08;
    }
    if retain {
        flags |= 0x01;
    }
    let id_len = if packet_id.is_some() { 2 } else { 0 };
    out.put_u8(flags);
    put_length(out, 2 + topic.len() + id_len + payload.len());
    put_string(out, topic);
    if let Some(id) = packet_id {
        out.put_u16(id);
    }
    out.put_slice(payload);
}

fn encode_publish(publish: &Publish, out: &mut BytesMut) {
    encode_publish_parts(
        out,
        &publish.topic,
        &publish.payload,
        publish.qos,
        publish.packet_id,
        publish.dup,
        publish.retain,
    );
}

fn encode_connect(connect: &Connect, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    put_string(&mut body, &connect.protocol_name);
    body.put_u8(connect.protocol_level);
    let mut flags = 0u8;
    if connect.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &connect.will {
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    body.put_u8(flags);
    body.put_u16(connect.keep_alive);
    put_string(&mut body, &connect.client_id);
    if let Some(will) = &connect.will {
        put_string(&mut body, &will.topic);
        put_binary(&mut body, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_string(&mut body, username);
    }
    if let Some(password) = &connect.password {
        put_binary(&mut body, password);
    }
    out.put_u8(0x10);
    put_length(out, body.len());
    out.put_slice(&body);
}

fn put_ack(out: &mut BytesMut, first: u8, id: u16) {
    out.put_slice(&[first, 2]);
    out.put_u16(id);
}

fn put_length(out: &mut BytesMut, mut length: usize) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if length == 0 {
            break;
        }
    }
}

fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    // Strings and binary fields are at most 65535 bytes; the callers' inputs came through
    // the decoder or are topic names of that size.
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

fn put_string(out: &mut BytesMut, text: &str) {
    put_binary(out, text.as_bytes());
}

#[cfg(test)]
mod tests;
