//! The few MQTT 3.1.1 packets the tool sends and reads, written and parsed by hand so that a
//! publisher can encode many PUBLISH packets into one buffer and write them with one call, and
//! a subscriber can parse every packet of a large read in place.
//!
//! Encoding appends to a `Vec<u8>`; [`next_packet`] finds the first whole packet at the start of
//! a buffer and says how long it is, without copying. Only what a load generator needs is here:
//! no will, no retained flag, no MQTT 5.

/// Packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
/// PUBLISH.
pub const PUBLISH: u8 = 3;
/// PUBACK.
pub const PUBACK: u8 = 4;
/// PUBREC.
pub const PUBREC: u8 = 5;
/// PUBREL.
pub const PUBREL: u8 = 6;
/// PUBCOMP.
pub const PUBCOMP: u8 = 7;
/// SUBACK.
pub const SUBACK: u8 = 9;

/// The largest packet the parser accepts (MQTT's own limit is 256 MiB).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Appends MQTT's variable-length "remaining length".
fn put_length(out: &mut Vec<u8>, mut length: usize) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
}

/// Appends a UTF-8 string or binary field (two-byte length, then the bytes).
fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

/// What a CONNECT carries.
#[derive(Debug, Clone)]
pub struct ConnectOptions<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// Start a new session and drop it on disconnect.
    pub clean_session: bool,
    /// Keep-alive in seconds (0: none, so the broker never times an idle client out).
    pub keep_alive: u16,
    /// User name and password, if any.
    pub credentials: Option<(&'a str, &'a str)>,
}

/// Appends a CONNECT packet (protocol level 4, MQTT 3.1.1).
pub fn connect(out: &mut Vec<u8>, options: &ConnectOptions<'_>) {
    let mut body = Vec::with_capacity(64);
    put_field(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0u8;
    if options.clean_session {
        flags |= 0x02;
    }
    if options.credentials.is_some() {
        flags |= 0xc0;
    }
    body.push(flags);
    body.extend_from_slice(&options.keep_alive.to_be_bytes());
    put_field(&mut body, options.client_id.as_bytes());
    if let Some((user, password)) = options.credentials {
        put_field(&mut body, user.as_bytes());
        put_field(&mut body, password.as_bytes());
    }
    out.push(0x10);
    put_length(out, body.len());
    out.extend_from_slice(&body);
}

/// Appends a SUBSCRIBE to one filter.
pub fn subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, qos: u8) {
    out.push(0x82);
    put_length(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_field(out, filter.as_bytes());
    out.push(qos);
}

/// Appends a PUBLISH whose payload is `payload_len` bytes, and returns where the payload
/// starts in `out` (the caller writes it there: it is zero-filled here).
pub fn publish(
    out: &mut Vec<u8>,
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload_len: usize,
) -> usize {
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_length(out, 2 + topic.len() + id_len + payload_len);
    put_field(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    let start = out.len();
    out.resize(start + payload_len, 0);
    start
}

/// Appends an acknowledgement that is a type and a packet id: PUBACK, PUBREC, PUBREL (whose
/// reserved flags are 0b0010) or PUBCOMP.
pub fn ack(out: &mut Vec<u8>, kind: u8, packet_id: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    out.push((kind << 4) | flags);
    out.push(2);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// Appends a DISCONNECT.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xe0, 0]);
}

/// One packet found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet type (high nibble of the first byte).
    pub kind: u8,
    /// The flags (low nibble of the first byte).
    pub flags: u8,
    /// What follows the fixed header.
    pub body: &'a [u8],
    /// The packet's whole length in the buffer, fixed header included.
    pub len: usize,
}

impl<'a> Packet<'a> {
    /// The packet id of an acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK).
    pub fn ack_id(&self) -> Option<u16> {
        let id = self.body.get(..2)?;
        Some(u16::from_be_bytes([id[0], id[1]]))
    }

    /// A PUBLISH's QoS, packet id (0 for QoS 0) and payload.
    pub fn publish(&self) -> Option<(u8, u16, &'a [u8])> {
        let qos = (self.flags >> 1) & 0x03;
        let topic_len = usize::from(u16::from_be_bytes([
            *self.body.first()?,
            *self.body.get(1)?,
        ]));
        let mut at = 2 + topic_len;
        let mut packet_id = 0;
        if qos > 0 {
            let id = self.body.get(at..at + 2)?;
            packet_id = u16::from_be_bytes([id[0], id[1]]);
            at += 2;
        }
        Some((qos, packet_id, self.body.get(at..)?))
    }
}

/// The first whole packet at the start of `buf`; `Ok(None)` if more bytes are needed.
pub fn next_packet(buf: &[u8]) -> anyhow::Result<Option<Packet<'_>>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut length = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        anyhow::ensure!(
            shift < 28,
            "an MQTT remaining length longer than four bytes"
        );
    }
    anyhow::ensure!(length <= MAX_PACKET, "an MQTT packet of {length} bytes");
    let Some(body) = buf.get(at..at + length) else {
        return Ok(None);
    };
    Ok(Some(Packet {
        kind: first >> 4,
        flags: first & 0x0f,
        body,
        len: at + length,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_parse_back_whatever_the_cut() {
        let mut out = Vec::new();
        for (i, size) in [(1u16, 16usize), (2, 200), (3, 20_000)] {
            let start = publish(&mut out, "perf/t", (i % 3) as u8, i, size);
            out[start] = i as u8;
        }
        ack(&mut out, PUBREL, 9);
        for cut in [1, 2, 5, 100, out.len()] {
            let mut buf: Vec<u8> = Vec::new();
            let mut found = Vec::new();
            for chunk in out.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(packet) = next_packet(&buf).unwrap() {
                    let len = packet.len;
                    match packet.kind {
                        PUBLISH => {
                            let (qos, id, payload) = packet.publish().unwrap();
                            found.push((qos, id, payload.len(), payload[0]));
                        }
                        PUBREL => {
                            assert_eq!(packet.flags, 2);
                            found.push((9, packet.ack_id().unwrap(), 0, 0));
                        }
                        other => panic!("packet type {other}"),
                    }
                    buf.drain(..len);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(
                found,
                vec![
                    (1, 1, 16, 1),
                    (2, 2, 200, 2),
                    (0, 0, 20_000, 3),
                    (9, 9, 0, 0)
                ],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn connect_and_subscribe_are_well_formed() {
        let mut out = Vec::new();
        connect(
            &mut out,
            &ConnectOptions {
                client_id: "c",
                clean_session: true,
                keep_alive: 0,
                credentials: Some(("u", "p")),
            },
        );
        assert_eq!(
            out,
            b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x00\x00\x01c\x00\x01u\x00\x01p".to_vec()
        );
        out.clear();
        subscribe(&mut out, 1, "a/b", 1);
        assert_eq!(out, b"\x82\x08\x00\x01\x00\x03a/b\x01".to_vec());
    }

    #[test]
    fn a_long_remaining_length_is_refused() {
        assert!(next_packet(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert_eq!(next_packet(&[0x30, 0x80]).unwrap(), None);
    }
}
