//! The first bytes of every message: when it was sent and which message it is.
//!
//! Layout (little-endian): bytes 0..8 the send time in nanoseconds since the process's clock
//! origin ([`now_nanos`]), bytes 8..10 the run tag, 10..12 the producer, 12..16 the producer's
//! sequence number; the rest is padding up to `--size`. Producers and consumers run in the
//! same process, so a monotonic clock shared by both gives end-to-end latency.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes at the start of every message that the tool reads back.
pub const HEADER_LEN: usize = 16;

/// The padding byte.
const PAD: u8 = b'.';

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the process's clock origin (monotonic, shared by all tasks).
pub fn now_nanos() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A fresh body of `size` bytes of padding (stamp it with [`stamp`]).
pub fn blank(size: usize) -> Vec<u8> {
    vec![PAD; size.max(HEADER_LEN)]
}

/// Writes the header of message `seq` of `producer` into `body` (at least [`HEADER_LEN`]
/// bytes), with the current time.
pub fn stamp(body: &mut [u8], run_tag: u16, producer: u16, seq: u32) {
    body[0..8].copy_from_slice(&now_nanos().to_le_bytes());
    body[8..10].copy_from_slice(&run_tag.to_le_bytes());
    body[10..12].copy_from_slice(&producer.to_le_bytes());
    body[12..16].copy_from_slice(&seq.to_le_bytes());
}

/// What a received message's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, nanoseconds since the clock origin.
    pub sent_nanos: u64,
    /// The run that sent it.
    pub run_tag: u16,
    /// The producer that sent it.
    pub producer: u16,
    /// The producer's sequence number.
    pub seq: u32,
}

/// Reads the header of a received body; `None` if it is too short to have one.
pub fn read(body: &[u8]) -> Option<Stamp> {
    let header: &[u8; HEADER_LEN] = body.get(..HEADER_LEN)?.try_into().ok()?;
    let [
        t0,
        t1,
        t2,
        t3,
        t4,
        t5,
        t6,
        t7,
        r0,
        r1,
        p0,
        p1,
        s0,
        s1,
        s2,
        s3,
    ] = *header;
    Some(Stamp {
        sent_nanos: u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        run_tag: u16::from_le_bytes([r0, r1]),
        producer: u16::from_le_bytes([p0, p1]),
        seq: u32::from_le_bytes([s0, s1, s2, s3]),
    })
}

/// A 16-bit tag derived from the run id, carried by every message of the run.
pub fn run_tag(run_id: &str) -> u16 {
    // FNV-1a, folded to 16 bits.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in run_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    ((hash >> 16) ^ (hash & 0xffff)) as u16
}

/// A short random-enough run id: the process id and the clock, in hex.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("{:x}{:06x}", std::process::id() & 0xffff, nanos & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back() {
        let mut body = blank(40);
        stamp(&mut body, 7, 3, 99);
        let read = read(&body).unwrap();
        assert_eq!((read.run_tag, read.producer, read.seq), (7, 3, 99));
        assert!(read.sent_nanos <= now_nanos());
        assert_eq!(&body[16..], &[PAD; 24][..]);
        assert!(super::read(&body[..15]).is_none());
    }

    #[test]
    fn run_tags_differ() {
        assert_ne!(run_tag("a"), run_tag("b"));
        assert_eq!(run_tag("abc"), run_tag("abc"));
    }
}
