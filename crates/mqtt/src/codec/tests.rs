use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn round_trip(packet: Packet) {
    let mut buffer = BytesMut::new();
    encode(&packet, &mut buffer);
    let decoded = decode(&mut buffer, 1 << 20).expect("valid").expect("whole");
    assert_eq!(decoded, packet);
    assert!(buffer.is_empty());
}

fn decode_bytes(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), 1 << 20)
}

#[test]
fn every_packet_type_round_trips() {
    round_trip(Packet::Connect(Box::new(Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        clean_session: true,
        keep_alive: 30,
        client_id: "dev-1".into(),
        will: Some(LastWill {
            topic: "status/dev-1".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some("guest".into()),
        password: Some(Bytes::from_static(b"guest")),
    })));
    round_trip(Packet::ConnAck {
        session_present: true,
        code: ConnectReturnCode::Accepted,
    });
    round_trip(Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(7),
        payload: Bytes::from(vec![0u8; 300]),
    }));
    round_trip(Packet::PubAck(1));
    round_trip(Packet::PubRec(2));
    round_trip(Packet::PubRel(3));
    round_trip(Packet::PubComp(65535));
    round_trip(Packet::Subscribe {
        packet_id: 9,
        filters: vec![
            ("a/+".into(), QoS::AtMostOnce),
            ("#".into(), QoS::ExactlyOnce),
        ],
    });
    round_trip(Packet::SubAck {
        packet_id: 9,
        codes: vec![0, 2, 0x80],
    });
    round_trip(Packet::Unsubscribe {
        packet_id: 10,
        filters: vec!["a/+".into()],
    });
    round_trip(Packet::UnsubAck(10));
    round_trip(Packet::PingReq);
    round_trip(Packet::PingResp);
    round_trip(Packet::Disconnect);
}

#[test]
fn partial_input_is_incomplete_not_an_error() {
    let mut whole = BytesMut::new();
    encode(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(1),
            payload: Bytes::from(vec![1u8; 200]),
        }),
        &mut whole,
    );
    for cut in 0..whole.len() {
        let mut partial = BytesMut::from(&whole[..cut]);
        assert_eq!(decode(&mut partial, 1 << 20), Ok(None), "cut at {cut}");
        assert_eq!(partial.len(), cut, "nothing consumed");
    }
}

#[test]
fn oversized_packets_are_refused_from_the_header() {
    // A PUBLISH announcing 1 MiB, with only its header buffered.
    let header = [0x30, 0x80, 0x80, 0x40];
    assert_eq!(
        decode(&mut BytesMut::from(&header[..]), 1024),
        Err(DecodeError::TooLarge {
            size: 4 + (1 << 20),
            max: 1024
        })
    );
}

#[test]
fn malformed_input_is_named() {
    // A remaining length of five bytes.
    assert_eq!(
        decode_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        decode_bytes(&[0x00, 0x00]),
        Err(DecodeError::ReservedType(0))
    );
    assert_eq!(
        decode_bytes(&[0xf0, 0x00]),
        Err(DecodeError::ReservedType(15))
    );
    // SUBSCRIBE must carry flags 0b0010; PINGREQ none.
    assert!(matches!(
        decode_bytes(&[0x80, 0x00]),
        Err(DecodeError::BadFlags { .. })
    ));
    assert!(matches!(
        decode_bytes(&[0xc1, 0x00]),
        Err(DecodeError::BadFlags { .. })
    ));
    // PUBLISH with QoS 3.
    assert!(decode_bytes(&[0x36, 0x05, 0, 1, b'a', 0, 1]).is_err());
    // PUBLISH QoS 1 with packet id 0.
    assert!(decode_bytes(&[0x32, 0x05, 0, 1, b'a', 0, 0]).is_err());
    // Invalid UTF-8 in a topic.
    assert_eq!(
        decode_bytes(&[0x30, 0x04, 0, 2, 0xc3, 0x28]),
        Err(DecodeError::BadUtf8)
    );
    // U+0000 in a topic.
    assert_eq!(
        decode_bytes(&[0x30, 0x03, 0, 1, 0]),
        Err(DecodeError::BadUtf8)
    );
    // SUBSCRIBE with no filter, and with reserved option bits.
    assert!(decode_bytes(&[0x82, 0x02, 0, 1]).is_err());
    assert!(decode_bytes(&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04]).is_err());
    // CONNECT with the reserved flag set.
    let mut connect = vec![
        0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0,
    ];
    assert!(decode_bytes(&connect).is_err());
    connect[9] = 0x02;
    assert!(decode_bytes(&connect).expect("valid").is_some());
    // A password without a user name.
    connect[9] = 0x42;
    assert!(decode_bytes(&connect).is_err());
    // Trailing bytes after a PINGREQ's empty body.
    assert!(decode_bytes(&[0xc0, 0x01, 0x00]).is_err());
}

#[test]
fn another_versions_connect_yields_its_name_and_level_only() {
    // An MQTT 5 CONNECT: a property length (0) after the keep-alive shifts what follows.
    let v5 = [
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0,
    ];
    let Ok(Some(Packet::Connect(connect))) = decode_bytes(&v5) else {
        panic!("an MQTT 5 CONNECT must decode far enough to be refused with CONNACK 1");
    };
    assert_eq!(
        (connect.protocol_name.as_str(), connect.protocol_level),
        ("MQTT", 5)
    );
}

#[test]
fn several_packets_in_one_buffer_are_taken_one_at_a_time() {
    let mut buffer = BytesMut::new();
    encode(&Packet::PingReq, &mut buffer);
    encode(&Packet::PubAck(5), &mut buffer);
    assert_eq!(decode(&mut buffer, 100), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buffer, 100), Ok(Some(Packet::PubAck(5))));
    assert_eq!(decode(&mut buffer, 100), Ok(None));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buffer = BytesMut::from(&bytes[..]);
        for _ in 0..10 {
            match decode(&mut buffer, 256) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn publishes_round_trip(
        topic in "[a-z/]{1,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..20000),
        qos in 0u8..3,
        retain in any::<bool>(),
        id in 1u16..,
    ) {
        let qos = QoS::from_u8(qos).expect("qos");
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            payload: Bytes::from(payload),
        });
        let mut buffer = BytesMut::new();
        encode(&packet, &mut buffer);
        prop_assert_eq!(decode(&mut buffer, 1 << 20), Ok(Some(packet)));
    }
}
