//! The record format: `[length u32][crc32c u32][payload]`, payload a publish or a removal
//! (the message log) or a paged message (the overflow, [`crate::overflow`]). Every read is
//! bounds-checked: a damaged record decodes to None, never a panic.

use bytes::Bytes;
use junction_core::persistence::QueueKey;
use junction_core::{Message, Properties};

/// Record type tags.
const PUBLISH: u8 = 1;
const REMOVE: u8 = 2;
const PAGED: u8 = 3;
/// Bytes before a record's payload: its length and checksum.
pub const HEADER: usize = 8;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the fields of a record payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn key(&mut self) -> Option<QueueKey> {
        Some(QueueKey {
            vhost: self.string()?,
            queue: self.string()?,
        })
    }
}

/// A framed publish record: the message id, the durable queues it went to, the message.
pub fn publish(id: u64, queues: &[QueueKey], message: &Message) -> Vec<u8> {
    let properties = serde_json::to_vec(&message.properties).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + 64 + message.body.len() + properties.len());
    out.extend_from_slice(&[0; HEADER]);
    out.push(PUBLISH);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(queues.len() as u32).to_be_bytes());
    for key in queues {
        put_str(&mut out, &key.vhost);
        put_str(&mut out, &key.queue);
    }
    put_str(&mut out, &message.exchange);
    put_str(&mut out, &message.routing_key);
    out.extend_from_slice(&(properties.len() as u32).to_be_bytes());
    out.extend_from_slice(&properties);
    out.extend_from_slice(&(message.body.len() as u32).to_be_bytes());
    out.extend_from_slice(&message.body);
    seal(out)
}

/// A framed removal record: message `id`, published in `segment`, left `queue`.
pub fn remove(queue: &QueueKey, id: u64, segment: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 32 + queue.queue.len() + queue.vhost.len());
    out.extend_from_slice(&[0; HEADER]);
    out.push(REMOVE);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&segment.to_be_bytes());
    put_str(&mut out, &queue.vhost);
    put_str(&mut out, &queue.queue);
    seal(out)
}

/// The properties of a paged record, compactly: a bit per field present, then the fields
/// present in order (strings length-prefixed, the headers as JSON). Most messages carry few
/// properties, and JSON would spend 250 bytes on their absence.
pub fn paged_properties(properties: &Properties) -> Vec<u8> {
    let strings = [
        &properties.content_type,
        &properties.content_encoding,
        &properties.correlation_id,
        &properties.reply_to,
        &properties.expiration,
        &properties.message_id,
        &properties.kind,
        &properties.user_id,
        &properties.app_id,
        &properties.cluster_id,
    ];
    let mut present = 0u16;
    for (bit, field) in strings.iter().enumerate() {
        if field.is_some() {
            present |= 1 << bit;
        }
    }
    let headers = properties
        .headers
        .as_ref()
        .map(|headers| serde_json::to_vec(headers).unwrap_or_default());
    for (bit, set) in [
        (10, headers.is_some()),
        (11, properties.delivery_mode.is_some()),
        (12, properties.priority.is_some()),
        (13, properties.timestamp.is_some()),
    ] {
        if set {
            present |= 1 << bit;
        }
    }
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&present.to_be_bytes());
    for field in strings.into_iter().flatten() {
        put_str(&mut out, field);
    }
    if let Some(headers) = headers {
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        out.extend_from_slice(&headers);
    }
    out.extend(properties.delivery_mode);
    out.extend(properties.priority);
    if let Some(timestamp) = properties.timestamp {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    out
}

/// Reads properties written by [`paged_properties`].
fn read_paged_properties(data: &[u8]) -> Option<Properties> {
    let mut r = Reader(data);
    let present = u16::from_be_bytes([r.u8()?, r.u8()?]);
    let has = |bit: u16| present & (1 << bit) != 0;
    let mut string = |bit: u16| -> Option<Option<String>> {
        if has(bit) {
            r.string().map(Some)
        } else {
            Some(None)
        }
    };
    let mut properties = Properties::default();
    properties.content_type = string(0)?;
    properties.content_encoding = string(1)?;
    properties.correlation_id = string(2)?;
    properties.reply_to = string(3)?;
    properties.expiration = string(4)?;
    properties.message_id = string(5)?;
    properties.kind = string(6)?;
    properties.user_id = string(7)?;
    properties.app_id = string(8)?;
    properties.cluster_id = string(9)?;
    if has(10) {
        properties.headers = Some(serde_json::from_slice(r.bytes()?).ok()?);
    }
    if has(11) {
        properties.delivery_mode = Some(r.u8()?);
    }
    if has(12) {
        properties.priority = Some(r.u8()?);
    }
    if has(13) {
        properties.timestamp = Some(r.u64()?);
    }
    r.0.is_empty().then_some(properties)
}

/// The length of the framed paged record of `message`, whose properties encode to
/// `properties` (see [`page_into`] and [`paged_properties`]).
pub fn paged_len(message: &Message, properties: &[u8]) -> usize {
    HEADER
        + 1
        + 1
        + 8
        + 4
        + message.exchange.len()
        + 4
        + message.routing_key.len()
        + 4
        + properties.len()
        + 4
        + message.body.len()
}

/// Appends the framed paged record of `message` (its properties already encoded with
/// [`paged_properties`]) to `out`:
/// the message and its store id, if it has one.
pub fn page_into(out: &mut Vec<u8>, message: &Message, properties: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(PAGED);
    out.push(u8::from(message.store_id.is_some()));
    out.extend_from_slice(&message.store_id.unwrap_or(0).to_be_bytes());
    put_str(out, &message.exchange);
    put_str(out, &message.routing_key);
    out.extend_from_slice(&(properties.len() as u32).to_be_bytes());
    out.extend_from_slice(properties);
    out.extend_from_slice(&(message.body.len() as u32).to_be_bytes());
    out.extend_from_slice(&message.body);
    let payload_len = (out.len() - start - HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_be_bytes());
}

/// Reads the message of a paged payload.
pub fn paged_message(payload: &[u8]) -> Option<Message> {
    let mut r = Reader(payload);
    if r.u8()? != PAGED {
        return None;
    }
    let has_id = r.u8()? != 0;
    let id = r.u64()?;
    let exchange = r.string()?;
    let routing_key = r.string()?;
    let properties = read_paged_properties(r.bytes()?)?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    let mut message = Message::new(exchange, routing_key, properties, body);
    message.store_id = has_id.then_some(id);
    Some(message)
}

/// Fills in the length and checksum of a record built behind a placeholder header.
fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let payload_len = (out.len() - HEADER) as u32;
    let crc = crc32c::crc32c(&out[HEADER..]);
    out[..4].copy_from_slice(&payload_len.to_be_bytes());
    out[4..HEADER].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The payload of the record at the start of `data`, if it is whole and its checksum holds.
/// `max` bounds the length field, so a corrupt length never asks for a huge buffer.
pub fn checked_payload(data: &[u8], max: usize) -> Option<&[u8]> {
    let header = data.get(..HEADER)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > max {
        return None;
    }
    let payload = data.get(HEADER..HEADER + len)?;
    (crc32c::crc32c(payload) == crc).then_some(payload)
}

/// The length a record's header announces (for reading it back from a file).
pub fn announced_len(header: &[u8; HEADER]) -> usize {
    u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize
}

/// What a record says, without the message body (enough for recovery's bookkeeping).
pub enum Summary {
    /// A publish of `id` to `queues`.
    Publish {
        /// The message id.
        id: u64,
        /// Its durable queues.
        queues: Vec<QueueKey>,
    },
    /// A removal of `id`, published in `segment`, from `queue`.
    Remove {
        /// The message id.
        id: u64,
        /// Where it was published.
        segment: u32,
        /// The queue it left.
        queue: QueueKey,
    },
}

/// Reads the bookkeeping part of a payload.
pub fn summary(payload: &[u8]) -> Option<Summary> {
    let mut r = Reader(payload);
    match r.u8()? {
        PUBLISH => {
            let id = r.u64()?;
            let count = r.u32()? as usize;
            let mut queues = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                queues.push(r.key()?);
            }
            Some(Summary::Publish { id, queues })
        }
        REMOVE => Some(Summary::Remove {
            id: r.u64()?,
            segment: r.u32()?,
            queue: r.key()?,
        }),
        _ => None,
    }
}

/// Reads the message of a publish payload.
pub fn message(payload: &[u8]) -> Option<Message> {
    let mut r = Reader(payload);
    if r.u8()? != PUBLISH {
        return None;
    }
    let id = r.u64()?;
    let count = r.u32()? as usize;
    for _ in 0..count {
        r.key()?;
    }
    let exchange = r.string()?;
    let routing_key = r.string()?;
    let properties: Properties = serde_json::from_slice(r.bytes()?).ok()?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    let mut message = Message::new(exchange, routing_key, properties, body);
    message.store_id = Some(id);
    Some(message)
}

#[cfg(test)]
mod tests {
    use junction_core::field::MAX_DEPTH;
    use junction_core::{FieldTable, FieldValue};

    use super::*;

    /// Headers nesting tables and arrays, alternating, `depth` levels deep (the headers table
    /// is level 1), with a string leaf: the deepest JSON a record can hold.
    fn nested_headers(depth: usize) -> FieldTable {
        let mut value = FieldValue::string("leaf");
        for level in (2..=depth).rev() {
            value = if level % 2 == 0 {
                FieldValue::Table(FieldTable::from_iter([("k".to_owned(), value)]))
            } else {
                FieldValue::Array(vec![FieldValue::I8(-1), value])
            };
        }
        FieldTable::from_iter([("k".to_owned(), value)])
    }

    fn deep_message() -> Message {
        let headers = nested_headers(MAX_DEPTH);
        assert_eq!(headers.depth(), MAX_DEPTH);
        let properties = {
            let mut properties = Properties::default();
            properties.headers = Some(headers);
            properties.delivery_mode = Some(2);
            properties
        };
        Message::new("amq.direct", "k", properties, Bytes::from_static(b"body"))
    }

    #[test]
    fn a_message_with_headers_at_the_maximum_depth_reads_back() {
        let message = deep_message();
        let queues = [QueueKey {
            vhost: "/".into(),
            queue: "q".into(),
        }];
        let record = publish(7, &queues, &message);
        let payload = checked_payload(&record, record.len()).expect("whole and checked");
        let read = super::message(payload).expect("reads back");
        assert_eq!(read.properties, message.properties);
        assert_eq!(read.body, message.body);
        assert_eq!(read.store_id, Some(7));
    }

    #[test]
    fn a_paged_message_reads_back_with_its_store_id_or_without() {
        let mut message = deep_message();
        let everything = {
            let mut properties = Properties::default();
            properties.content_type = Some("text/plain".into());
            properties.content_encoding = Some("gzip".into());
            properties.delivery_mode = Some(1);
            properties.priority = Some(7);
            properties.correlation_id = Some("c".into());
            properties.reply_to = Some("r".into());
            properties.expiration = Some("60000".into());
            properties.message_id = Some("m".into());
            properties.timestamp = Some(1_700_000_000);
            properties.kind = Some("k".into());
            properties.user_id = Some("guest".into());
            properties.app_id = Some("a".into());
            properties.cluster_id = Some("x".into());
            properties
        };
        for (store_id, properties) in [
            (None, message.properties.clone()),
            (Some(9), everything),
            (None, Properties::default()),
        ] {
            message.store_id = store_id;
            message.properties = properties;
            let properties = paged_properties(&message.properties);
            let mut out = vec![1, 2, 3];
            page_into(&mut out, &message, &properties);
            assert_eq!(out.len(), 3 + paged_len(&message, &properties));
            let payload = checked_payload(&out[3..], out.len()).expect("whole and checked");
            let read = paged_message(payload).expect("reads back");
            assert_eq!(read.properties, message.properties);
            assert_eq!(read.body, message.body);
            assert_eq!(read.exchange, message.exchange);
            assert_eq!(read.store_id, store_id);
            for cut in 0..payload.len() {
                assert!(paged_message(&payload[..cut]).is_none(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_damaged_record_reads_as_nothing_and_never_panics() {
        let queues = [QueueKey {
            vhost: "/".into(),
            queue: "q".into(),
        }];
        let record = publish(7, &queues, &deep_message());
        let payload = &record[HEADER..];
        for cut in 0..payload.len() {
            let _ = summary(&payload[..cut]);
            assert!(super::message(&payload[..cut]).is_none(), "cut at {cut}");
        }
        for at in 0..payload.len() {
            let mut damaged = payload.to_vec();
            damaged[at] ^= 0xff;
            let _ = summary(&damaged);
            let _ = super::message(&damaged);
            let mut sealed = record.clone();
            sealed[HEADER + at] ^= 0xff;
            assert!(
                checked_payload(&sealed, sealed.len()).is_none(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2_000 {
            let len = (next() % 300) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(tag) = data.first_mut() {
                *tag = [PUBLISH, REMOVE][(next() % 2) as usize];
            }
            let _ = summary(&data);
            let _ = super::message(&data);
            let _ = checked_payload(&data, 1 << 20);
        }
    }
}
