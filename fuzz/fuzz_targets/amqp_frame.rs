//! AMQP frame layer: `take_frame` on arbitrary bytes. Never panics; feeding the bytes split
//! at any point gives the same frames and the same error as feeding them whole; the bytes
//! taken are exactly the frames re-encoded.

#![no_main]

use bytes::{BufMut, BytesMut};
use junction_amqp::frame::{FRAME_END, FRAME_OVERHEAD, FrameError, RawFrame, take_frame};
use libfuzzer_sys::fuzz_target;

/// Frames taken off `buffer` until more bytes are needed or an error.
fn drain(
    buffer: &mut BytesMut,
    frame_max: usize,
    frames: &mut Vec<RawFrame>,
) -> Option<FrameError> {
    loop {
        match take_frame(buffer, frame_max) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return None,
            Err(error) => return Some(error),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, cut_hi, cut_lo, stream @ ..] = data else {
        return;
    };
    let frame_max = match mode % 4 {
        0 => 0,
        1 => 4096,
        2 => 131_072,
        _ => FRAME_OVERHEAD + usize::from(*mode),
    };

    let mut whole = BytesMut::from(stream);
    let mut frames = Vec::new();
    let error = drain(&mut whole, frame_max, &mut frames);

    let cut = usize::from(u16::from_be_bytes([*cut_hi, *cut_lo])) % (stream.len() + 1);
    let mut split = BytesMut::from(&stream[..cut]);
    let mut split_frames = Vec::new();
    let mut split_error = drain(&mut split, frame_max, &mut split_frames);
    if split_error.is_none() {
        split.extend_from_slice(&stream[cut..]);
        split_error = drain(&mut split, frame_max, &mut split_frames);
    }
    assert_eq!(frames, split_frames, "split at {cut}");
    assert_eq!(error, split_error, "split at {cut}");
    if error.is_none() {
        assert_eq!(whole, split, "split at {cut}: bytes left");
    }

    let mut encoded = BytesMut::new();
    for frame in &frames {
        assert!(frame_max == 0 || frame.payload.len() + FRAME_OVERHEAD <= frame_max);
        encoded.put_u8(frame.kind);
        encoded.put_u16(frame.channel);
        encoded.put_u32(u32::try_from(frame.payload.len()).expect("payload fits a u32"));
        encoded.extend_from_slice(&frame.payload);
        encoded.put_u8(FRAME_END);
    }
    if error.is_none() {
        assert_eq!(&encoded[..], &stream[..stream.len() - whole.len()]);
    } else {
        assert!(stream.starts_with(&encoded));
    }
});
