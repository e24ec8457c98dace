//! MQTT 3.1.1 packets written by hand, and the split of a read buffer into packets, so tests
//! can send exactly what they want (deeper filters, longer topics than any client library
//! allows) over a plain socket. Reading the socket is the test's business.

// Each test file uses a few of these.
#![allow(dead_code)]

/// A UTF-8 string: two length bytes, then the text.
pub fn string(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("an MQTT string is at most 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A packet: fixed-header byte `first`, the remaining length, then `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT as guest with a clean or a persistent (`clean` false) session, keep-alive 60 s.
pub fn connect(client_id: &str, clean: bool) -> Vec<u8> {
    connect_as(client_id, "guest", "guest", clean)
}

/// CONNECT as `user` with `password`, with a clean or a persistent session, keep-alive 60 s.
pub fn connect_as(client_id: &str, user: &str, password: &str, clean: bool) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.extend_from_slice(&[4, if clean { 0xC2 } else { 0xC0 }, 0, 60]);
    string(&mut body, client_id);
    string(&mut body, user);
    string(&mut body, password);
    packet(0x10, &body)
}

/// SUBSCRIBE to `filters`, each at QoS 0.
pub fn subscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        string(&mut body, filter);
        body.push(0);
    }
    packet(0x82, &body)
}

/// UNSUBSCRIBE from `filters`.
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        string(&mut body, filter);
    }
    packet(0xA2, &body)
}

/// PUBLISH at QoS 0.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// PUBLISH with a packet id (QoS 1 or 2): `first` carries the type, DUP, QoS and RETAIN bits.
pub fn publish_with_id(first: u8, topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(payload);
    packet(first, &body)
}

pub const PINGREQ: [u8; 2] = [0xC0, 0];

/// Splits one whole packet off the front of `buffer`: its first byte and its body.
pub fn split(buffer: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let byte = *buffer.get(at)?;
        len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if buffer.len() < at + len {
        return None;
    }
    let first = buffer[0];
    let body = buffer[at..at + len].to_vec();
    buffer.drain(..at + len);
    Some((first, body))
}

/// The topic and payload of a PUBLISH body (QoS 0).
pub fn topic_and_payload(body: &[u8]) -> (String, Vec<u8>) {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
    (topic, body[2 + len..].to_vec())
}
