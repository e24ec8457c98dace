//! The nesting check: how deeply the field tables and arrays of a method or content-header
//! payload nest, measured on the raw bytes with an explicit stack before `amq-protocol` parses
//! them. That parser recurses once per level, so a table nested a few thousand levels deep
//! would overflow a worker's stack; this check refuses anything deeper than
//! [`MAX_DEPTH`](junction_core::field::MAX_DEPTH) first, whoever sent it and whatever their
//! permissions.
//!
//! It only walks structure (lengths, type tags, bounds); it builds nothing and leaves every
//! other check of the payload (UTF-8 keys, the fields after the table) to the parser.

/// Why a payload was refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NestingError {
    /// Tables and arrays nest deeper than the limit.
    #[error("field tables nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A length, tag or bound does not add up: the payload is malformed.
    #[error("malformed field table")]
    Malformed,
}

/// One argument of a method that comes before its field table.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// One octet (also a packed group of up to 8 bits).
    Octet,
    /// Two octets.
    Short,
    /// A short string: a length octet and that many bytes.
    ShortStr,
}

use Field::{Octet, Short, ShortStr};

/// The arguments that precede the field table of each method that carries one, from the
/// AMQP 0-9-1 specification; None for methods without a table.
fn fields_before_table(class: u16, method: u16) -> Option<&'static [Field]> {
    Some(match (class, method) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: reserved, exchange, type, flags, arguments.
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],
        // exchange.bind / unbind: reserved, destination, source, routing-key, no-wait.
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.declare: reserved, queue, flags, arguments.
        (50, 10) => &[Short, ShortStr, Octet],
        // queue.bind: reserved, queue, exchange, routing-key, no-wait.
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.unbind: reserved, queue, exchange, routing-key (no no-wait).
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved, queue, consumer-tag, flags, arguments.
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],
        _ => return None,
    })
}

/// Checks the field table of a method payload (class and method ids first), if it has one.
pub fn check_method(payload: &[u8], max: usize) -> Result<(), NestingError> {
    let (Some(class), Some(method)) = (u16_at(payload, 0), u16_at(payload, 2)) else {
        return Err(NestingError::Malformed);
    };
    let Some(fields) = fields_before_table(class, method) else {
        return Ok(());
    };
    let mut at = 4;
    for field in fields {
        at = skip(payload, at, *field)?;
    }
    check_table(payload, at, max).map(|_| ())
}

/// Checks the headers table of a content-header payload: class, weight, body size, property
/// flags, then content-type and content-encoding (short strings) when present, then headers.
pub fn check_content_header(payload: &[u8], max: usize) -> Result<(), NestingError> {
    let flags = u16_at(payload, 12).ok_or(NestingError::Malformed)?;
    let mut at = 14;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            at = skip(payload, at, ShortStr)?;
        }
    }
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    check_table(payload, at, max).map(|_| ())
}

/// Checks a whole field table (its length prefix first), as AMQPLAIN credentials carry one.
pub fn check_table_bytes(table: &[u8], max: usize) -> Result<(), NestingError> {
    check_table(table, 0, max).map(|_| ())
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn skip(bytes: &[u8], at: usize, field: Field) -> Result<usize, NestingError> {
    let next = match field {
        Octet => at.checked_add(1),
        Short => at.checked_add(2),
        ShortStr => bytes
            .get(at)
            .and_then(|len| at.checked_add(1 + usize::from(*len))),
    };
    next.filter(|next| *next <= bytes.len())
        .ok_or(NestingError::Malformed)
}

/// A table or array being walked: whether its entries have keys, and where it ends.
struct Open {
    keyed: bool,
    end: usize,
}

/// The start of a length-prefixed table or array at `at`, bounded by `limit`.
fn open(bytes: &[u8], at: usize, limit: usize, keyed: bool) -> Result<Open, NestingError> {
    let len = u32_at(bytes, at).ok_or(NestingError::Malformed)?;
    let end = at
        .checked_add(4)
        .and_then(|start| start.checked_add(len))
        .filter(|end| *end <= limit)
        .ok_or(NestingError::Malformed)?;
    Ok(Open { keyed, end })
}

/// Walks the field table starting at `at` (its length prefix) and returns where it ends.
fn check_table(bytes: &[u8], at: usize, max: usize) -> Result<usize, NestingError> {
    let outer = open(bytes, at, bytes.len(), true)?;
    let table_end = outer.end;
    let mut stack = vec![outer];
    let mut at = at + 4;
    if stack.len() > max {
        return Err(NestingError::TooDeep { max });
    }
    while let Some(top) = stack.last() {
        let end = top.end;
        if at == end {
            stack.pop();
            continue;
        }
        if top.keyed {
            at = skip(bytes, at, ShortStr)?;
        }
        let tag = *bytes
            .get(at)
            .filter(|_| at < end)
            .ok_or(NestingError::Malformed)?;
        at += 1;
        let width = match tag {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => {
                let len = u32_at(bytes, at).ok_or(NestingError::Malformed)?;
                len.checked_add(4).ok_or(NestingError::Malformed)?
            }
            b'F' | b'A' => {
                let inner = open(bytes, at, end, tag == b'F')?;
                stack.push(inner);
                if stack.len() > max {
                    return Err(NestingError::TooDeep { max });
                }
                at += 4;
                continue;
            }
            _ => return Err(NestingError::Malformed),
        };
        at = at
            .checked_add(width)
            .filter(|next| *next <= end)
            .ok_or(NestingError::Malformed)?;
    }
    Ok(table_end)
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic::gen_properties, gen_class};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
    use junction_core::field::MAX_DEPTH;

    use super::*;

    /// A table nesting tables and arrays, alternating, `depth` levels deep (1 is flat), with
    /// every scalar type on the way.
    fn nested(depth: usize) -> FieldTable {
        let mut value = AMQPValue::LongString("leaf".into());
        for level in (2..=depth).rev() {
            value = if level % 2 == 0 {
                let mut table = FieldTable::default();
                table.insert("n".into(), AMQPValue::LongLongInt(-1));
                table.insert("k".into(), value);
                AMQPValue::FieldTable(table)
            } else {
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::Boolean(true),
                    AMQPValue::DecimalValue(amq_protocol::types::DecimalValue {
                        scale: 2,
                        value: 5,
                    }),
                    value,
                    AMQPValue::Void,
                    AMQPValue::ByteArray(vec![1, 2, 3].into()),
                ]))
            };
        }
        let mut table = FieldTable::default();
        table.insert("d".into(), AMQPValue::Double(0.5));
        table.insert("k".into(), value);
        table.insert("s".into(), AMQPValue::ShortInt(-3));
        table
    }

    fn method_payload(method: &AMQPClass) -> Vec<u8> {
        gen_class(method)(WriteContext::from(Vec::new()))
            .expect("encodes")
            .into_inner()
            .0
    }

    fn header_payload(headers: FieldTable) -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let properties = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_priority(3);
        gen_properties(&properties)(WriteContext::from(std::mem::take(&mut out)))
            .expect("encodes")
            .into_inner()
            .0
    }

    fn declare(arguments: FieldTable) -> AMQPClass {
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: "q".into(),
                durable: true,
                arguments,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn tables_up_to_the_limit_pass_and_deeper_ones_are_refused() {
        for depth in [1, 2, 3, MAX_DEPTH] {
            assert_eq!(
                check_content_header(&header_payload(nested(depth)), MAX_DEPTH),
                Ok(())
            );
            assert_eq!(
                check_method(&method_payload(&declare(nested(depth))), MAX_DEPTH),
                Ok(())
            );
        }
        let too_deep = Err(NestingError::TooDeep { max: MAX_DEPTH });
        let deeper = nested(MAX_DEPTH + 1);
        assert_eq!(
            check_content_header(&header_payload(deeper.clone()), MAX_DEPTH),
            too_deep
        );
        assert_eq!(
            check_method(&method_payload(&declare(deeper)), MAX_DEPTH),
            too_deep
        );
    }

    #[test]
    fn every_method_with_a_table_is_checked_at_the_right_place() {
        use amq_protocol::protocol::{basic, connection, exchange, queue};
        let deep = nested(MAX_DEPTH + 1);
        let methods = [
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: deep.clone(),
                mechanism: "PLAIN".into(),
                response: "\0a\0b".into(),
                locale: "en_US".into(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "e".into(),
                kind: "topic".into(),
                arguments: deep.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: deep.clone(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: deep.clone(),
            })),
            declare(deep.clone()),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: deep.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "k".into(),
                arguments: deep.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "t".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: deep.clone(),
            })),
        ];
        for method in methods {
            assert_eq!(
                check_method(&method_payload(&method), MAX_DEPTH),
                Err(NestingError::TooDeep { max: MAX_DEPTH }),
                "{method:?}"
            );
        }
    }

    #[test]
    fn thousands_of_levels_are_refused_without_recursion() {
        // 100,000 tables, each the single entry `k` of its parent: level i (0 the outermost)
        // holds a key, an 'F' tag and level i + 1, so its length is 7 × (levels below it).
        let depth = 100_000u32;
        let mut framed = Vec::with_capacity(depth as usize * 7 + 4);
        for level in 0..depth {
            framed.extend_from_slice(&(7 * (depth - level)).to_be_bytes());
            framed.extend_from_slice(b"\x01kF");
        }
        framed.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            check_table_bytes(&framed, MAX_DEPTH),
            Err(NestingError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn lengths_that_do_not_add_up_are_malformed() {
        // An inner table longer than its parent.
        let bad = [0, 0, 0, 7, 1, b'k', b'F', 0, 0, 0, 9];
        assert_eq!(
            check_table_bytes(&bad, MAX_DEPTH),
            Err(NestingError::Malformed)
        );
        // An unknown type tag.
        let bad = [0, 0, 0, 3, 1, b'k', b'?'];
        assert_eq!(
            check_table_bytes(&bad, MAX_DEPTH),
            Err(NestingError::Malformed)
        );
        // A value running past the table.
        let bad = [0, 0, 0, 4, 1, b'k', b'I', 0, 0, 0, 0];
        assert_eq!(
            check_table_bytes(&bad, MAX_DEPTH),
            Err(NestingError::Malformed)
        );
        // A method cut before its table.
        assert_eq!(
            check_method(&[0, 50, 0, 10, 0], MAX_DEPTH),
            Err(NestingError::Malformed)
        );
        assert_eq!(
            check_content_header(&[0, 60, 0], MAX_DEPTH),
            Err(NestingError::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = check_table_bytes(&data, 4);
            let _ = check_content_header(&data, 4);
            let mut method = vec![0, 50, 0, 10];
            method.extend_from_slice(&data);
            let _ = check_method(&method, 4);
        }
    }
}
