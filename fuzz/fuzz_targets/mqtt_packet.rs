//! MQTT 3.1.1 packets: the streaming `decode` on arbitrary bytes. Never panics; feeding the
//! bytes split at any point gives the same packets and error as feeding them whole; every
//! decoded packet encodes and decodes back to itself.

#![no_main]

use bytes::BytesMut;
use junction_mqtt::codec::{DecodeError, Packet, decode, encode};
use libfuzzer_sys::fuzz_target;

/// Packets decoded off `buffer` until more bytes are needed or an error.
fn drain(buffer: &mut BytesMut, max: usize, packets: &mut Vec<Packet>) -> Option<DecodeError> {
    loop {
        match decode(buffer, max) {
            Ok(Some(packet)) => packets.push(packet),
            Ok(None) => return None,
            Err(error) => return Some(error),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, cut_hi, cut_lo, stream @ ..] = data else {
        return;
    };
    let max = match mode % 4 {
        0 => 268_435_455 + 5,
        1 => 1024 * 1024,
        2 => 4096,
        _ => usize::from(*mode),
    };

    let mut whole = BytesMut::from(stream);
    let mut packets = Vec::new();
    let error = drain(&mut whole, max, &mut packets);

    let cut = usize::from(u16::from_be_bytes([*cut_hi, *cut_lo])) % (stream.len() + 1);
    let mut split = BytesMut::from(&stream[..cut]);
    let mut split_packets = Vec::new();
    let mut split_error = drain(&mut split, max, &mut split_packets);
    if split_error.is_none() {
        split.extend_from_slice(&stream[cut..]);
        split_error = drain(&mut split, max, &mut split_packets);
    }
    assert_eq!(packets, split_packets, "split at {cut}");
    assert_eq!(error, split_error, "split at {cut}");
    if error.is_none() {
        assert_eq!(whole, split, "split at {cut}: bytes left");
    }

    for packet in packets {
        let mut encoded = BytesMut::new();
        encode(&packet, &mut encoded);
        let again = decode(&mut encoded, usize::MAX)
            .expect("a decoded packet re-encodes validly")
            .expect("a whole packet");
        assert_eq!(packet, again);
        assert!(encoded.is_empty(), "one packet, nothing after it");
    }
});
