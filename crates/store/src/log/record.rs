//! The record format: `[length u32][crc32c u32][payload]`, payload a publish or a removal.
//! Every read is bounds-checked: a damaged record decodes to None, never a panic.

use bytes::Bytes;
use junction_core::persistence::QueueKey;
use junction_core::{Message, Properties};

/// Record type tags.
const PUBLISH: u8 = 1;
const REMOVE: u8 = 2;
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
