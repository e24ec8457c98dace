//! AMQP method and content-header payloads, field tables included: the connection's own
//! `decode_method` (depth check, then amq-protocol), and the content-header path (depth check,
//! amq-protocol, conversion to core properties). Never panics; whatever decodes, re-encodes
//! through `Outbox` and decodes to the same value.

#![no_main]

use amq_protocol::frame::parsing::parse_content_header;
use bytes::BytesMut;
use junction_amqp::connection::decode_method;
use junction_amqp::frame::{FRAME_HEADER, FRAME_METHOD, Outbox, take_frame};
use junction_amqp::nesting;
use junction_amqp::properties::{properties_from_wire, properties_to_wire};
use junction_core::Properties;
use junction_core::field::MAX_DEPTH;
use libfuzzer_sys::fuzz_target;

/// The payload of the one frame `outbox` holds, of type `kind`.
fn only_payload(outbox: &mut Outbox, kind: u8) -> bytes::Bytes {
    let mut bytes = BytesMut::from(&outbox.take()[..]);
    let frame = take_frame(&mut bytes, 0)
        .expect("the outbox writes valid frames")
        .expect("a whole frame");
    assert_eq!(frame.kind, kind);
    frame.payload
}

/// The content header path of `Connection::on_content_header`, up to core properties.
fn decode_header(payload: &[u8]) -> Option<(u16, u64, Properties)> {
    nesting::check_content_header(payload, MAX_DEPTH).ok()?;
    let (_, header) = parse_content_header(payload).ok()?;
    Some((
        header.class_id,
        header.body_size,
        properties_from_wire(&header.properties),
    ))
}

fuzz_target!(|data: &[u8]| {
    let [mode, payload @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(method) = decode_method(payload) else {
            return;
        };
        let mut outbox = Outbox::new();
        outbox.method(1, &method);
        let again = decode_method(&only_payload(&mut outbox, FRAME_METHOD))
            .expect("a decoded method re-encodes to one that decodes");
        // Debug, not PartialEq: a float NaN in a table is not equal to itself.
        assert_eq!(format!("{method:?}"), format!("{again:?}"));
    } else {
        let Some((class, _size, properties)) = decode_header(payload) else {
            return;
        };
        if class != 60 {
            return;
        }
        let mut outbox = Outbox::new();
        outbox.content(1, &properties_to_wire(&properties), &[], 131_072);
        let (_, size, again) = decode_header(&only_payload(&mut outbox, FRAME_HEADER))
            .expect("decoded properties re-encode to ones that decode");
        assert_eq!(size, 0);
        assert_eq!(format!("{properties:?}"), format!("{again:?}"));
    }
});
