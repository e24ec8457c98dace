use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn decoder(version: Option<Version>) -> Decoder {
    Decoder {
        limits: Limits::default(),
        version,
    }
}

#[test]
fn a_frame_round_trips_with_escaped_headers() {
    let frame = Frame::new("MESSAGE")
        .header("destination", "/queue/a")
        .header("weird:name", "line1\nline2\\x\r");
    let mut out = BytesMut::new();
    encode(&frame, Some(Version::V1_2), &mut out);
    let mut with_length = frame.clone();
    with_length.body = Bytes::new();
    let decoded = decoder(Some(Version::V1_2))
        .decode(&mut out)
        .expect("valid")
        .expect("whole");
    assert_eq!(decoded, with_length);
    assert!(out.is_empty());
}

#[test]
fn content_length_bodies_may_contain_nul_bytes() {
    let mut input =
        BytesMut::from(&b"SEND\ndestination:/queue/a\ncontent-length:5\n\na\0b\0c\0"[..]);
    let frame = decoder(Some(Version::V1_2))
        .decode(&mut input)
        .expect("valid")
        .expect("whole");
    assert_eq!(&frame.body[..], b"a\0b\0c");
    assert!(input.is_empty());
}

#[test]
fn heart_beats_and_crlf_lines_are_accepted() {
    let mut input = BytesMut::from(&b"\n\r\nSEND\r\ndestination:/queue/a\r\n\r\nhi\0\n"[..]);
    let frame = decoder(Some(Version::V1_2))
        .decode(&mut input)
        .expect("valid")
        .expect("whole");
    assert_eq!(frame.command, "SEND");
    assert_eq!(frame.get("destination"), Some("/queue/a"));
    assert_eq!(&frame.body[..], b"hi");
    assert_eq!(decoder(None).decode(&mut input), Ok(None));
}

#[test]
fn partial_frames_are_incomplete() {
    let whole = b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\0";
    for cut in 1..whole.len() {
        let mut partial = BytesMut::from(&whole[..cut]);
        assert_eq!(decoder(None).decode(&mut partial), Ok(None), "cut at {cut}");
    }
}

#[test]
fn escapes_follow_the_version() {
    let input = b"SEND\ndestination:a\\cb\n\n\0";
    let frame = decoder(Some(Version::V1_1))
        .decode(&mut BytesMut::from(&input[..]))
        .expect("valid")
        .expect("whole");
    assert_eq!(frame.get("destination"), Some("a:b"));
    let frame = decoder(Some(Version::V1_0))
        .decode(&mut BytesMut::from(&input[..]))
        .expect("valid")
        .expect("whole");
    assert_eq!(frame.get("destination"), Some("a\\cb"));
    assert_eq!(
        decoder(Some(Version::V1_1)).decode(&mut BytesMut::from(&b"SEND\na:\\r\n\n\0"[..])),
        Err(DecodeError::BadEscape)
    );
    assert_eq!(
        decoder(Some(Version::V1_2)).decode(&mut BytesMut::from(&b"SEND\na:\\t\n\n\0"[..])),
        Err(DecodeError::BadEscape)
    );
}

#[test]
fn limits_and_malformations_are_named() {
    let small = Decoder {
        limits: Limits {
            max_header_bytes: 64,
            max_headers: 2,
            max_body_bytes: 8,
        },
        version: Some(Version::V1_2),
    };
    let long_header = format!("SEND\nx:{}\n", "y".repeat(100));
    assert_eq!(
        small.decode(&mut BytesMut::from(long_header.as_bytes())),
        Err(DecodeError::TooLarge("header block"))
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n\n\0"[..])),
        Err(DecodeError::TooLarge("too many headers"))
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\ncontent-length:100\n\n"[..])),
        Err(DecodeError::TooLarge("body"))
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\n\n0123456789"[..])),
        Err(DecodeError::TooLarge("body"))
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\n\n0123456789\0"[..])),
        Err(DecodeError::TooLarge("body")),
        "a body over the limit is refused even when its NUL arrived in the same read"
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\nnocolon\n\n\0"[..])),
        Err(DecodeError::Malformed("header line without ':'"))
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\ncontent-length:x\n\n\0"[..])),
        Err(DecodeError::BadContentLength)
    );
    assert_eq!(
        small.decode(&mut BytesMut::from(&b"SEND\ncontent-length:1\n\nab"[..])),
        Err(DecodeError::MissingNul)
    );
}

#[test]
fn a_header_block_of_the_largest_size_is_accepted_however_its_blank_line_arrives() {
    // Found by the stomp_frame fuzz target: with the blank line cut after its first bytes,
    // a header block of exactly `max_header_bytes` was refused as too large.
    let head = b"SEND\ndestination:/queue/a";
    for terminator in [&b"\n\n"[..], &b"\n\r\n"[..]] {
        let decoder = Decoder {
            limits: Limits {
                max_header_bytes: head.len(),
                ..Limits::default()
            },
            version: Some(Version::V1_2),
        };
        for cut in 1..terminator.len() {
            let mut input = BytesMut::from(&head[..]);
            input.extend_from_slice(&terminator[..cut]);
            assert_eq!(decoder.decode(&mut input), Ok(None), "cut after {cut}");
            input.extend_from_slice(&terminator[cut..]);
            input.extend_from_slice(b"body\0");
            let frame = decoder.decode(&mut input).expect("valid").expect("whole");
            assert_eq!(frame.get("destination"), Some("/queue/a"));
            assert_eq!(&frame.body[..], b"body");
        }
        let mut longer = BytesMut::from(&b"SEND\ndestination:/queue/ab\n\r"[..]);
        assert_eq!(
            decoder.decode(&mut longer),
            Err(DecodeError::TooLarge("header block"))
        );
    }
}

#[test]
fn versions_are_negotiated_to_the_highest_common_one() {
    assert_eq!(Version::negotiate(None), Some(Version::V1_0));
    assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
    assert_eq!(Version::negotiate(Some("1.1")), Some(Version::V1_1));
    assert_eq!(Version::negotiate(Some("2.0")), None);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let decoder = Decoder {
            limits: Limits { max_header_bytes: 128, max_headers: 8, max_body_bytes: 128 },
            version: Some(Version::V1_2),
        };
        let mut buffer = BytesMut::from(&bytes[..]);
        for _ in 0..10 {
            match decoder.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn frames_round_trip(
        value in "[ -~\n:\\\\]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let frame = Frame::new("MESSAGE").header("h", value.clone());
        let mut frame = frame;
        frame.body = Bytes::from(body);
        let mut out = BytesMut::new();
        encode(&frame, Some(Version::V1_2), &mut out);
        let decoded = decoder(Some(Version::V1_2)).decode(&mut out).expect("valid").expect("whole");
        prop_assert_eq!(decoded.get("h"), Some(value.as_str()));
        prop_assert_eq!(decoded.body, frame.body);
    }
}
