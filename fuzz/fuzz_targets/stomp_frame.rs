//! STOMP frames: `Decoder::decode` on arbitrary bytes, with limits and the negotiated version
//! taken from the input. Never panics; feeding the bytes split at any point gives the same
//! frames and error as feeding them whole; every decoded frame (that has no bare carriage
//! return, which only STOMP 1.2 can escape) encodes and decodes back to itself.

#![no_main]

use bytes::BytesMut;
use junction_stomp::codec::{DecodeError, Decoder, Frame, Limits, Version, encode};
use libfuzzer_sys::fuzz_target;

/// Frames decoded off `buffer` until more bytes are needed or an error.
fn drain(decoder: &Decoder, buffer: &mut BytesMut, frames: &mut Vec<Frame>) -> Option<DecodeError> {
    loop {
        match decoder.decode(buffer) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return None,
            Err(error) => return Some(error),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, cut_hi, cut_lo, stream @ ..] = data else {
        return;
    };
    let version = match mode % 4 {
        0 => None,
        1 => Some(Version::V1_0),
        2 => Some(Version::V1_1),
        _ => Some(Version::V1_2),
    };
    let limits = if mode & 0x80 == 0 {
        Limits::default()
    } else {
        Limits {
            max_header_bytes: usize::from(*limit) * 4,
            max_headers: usize::from(limit % 16),
            max_body_bytes: usize::from(*limit),
        }
    };
    let decoder = Decoder { limits, version };

    let mut whole = BytesMut::from(stream);
    let mut frames = Vec::new();
    let error = drain(&decoder, &mut whole, &mut frames);

    let cut = usize::from(u16::from_be_bytes([*cut_hi, *cut_lo])) % (stream.len() + 1);
    let mut split = BytesMut::from(&stream[..cut]);
    let mut split_frames = Vec::new();
    let mut split_error = drain(&decoder, &mut split, &mut split_frames);
    if split_error.is_none() {
        split.extend_from_slice(&stream[cut..]);
        split_error = drain(&decoder, &mut split, &mut split_frames);
    }
    assert_eq!(frames, split_frames, "split at {cut}");
    assert_eq!(error, split_error, "split at {cut}");
    if error.is_none() {
        assert_eq!(whole, split, "split at {cut}: bytes left");
    }

    let roomy = Decoder {
        limits: Limits {
            max_header_bytes: usize::MAX / 4,
            max_headers: usize::MAX,
            max_body_bytes: usize::MAX / 4,
        },
        version,
    };
    for frame in frames {
        let has_cr = frame.command.contains('\r')
            || frame
                .headers
                .iter()
                .any(|(n, v)| n.contains('\r') || v.contains('\r'));
        if has_cr {
            continue;
        }
        let mut encoded = BytesMut::new();
        encode(&frame, version, &mut encoded);
        let mut again = roomy
            .decode(&mut encoded)
            .expect("a decoded frame re-encodes validly")
            .expect("a whole frame");
        assert!(encoded.is_empty(), "one frame, nothing after it");
        if frame.get("content-length").is_none() && !frame.body.is_empty() {
            // The encoder adds the body's length.
            let added = again.headers.pop().expect("content-length added");
            assert_eq!(added.0, "content-length");
        }
        assert_eq!(frame, again);
    }
});
