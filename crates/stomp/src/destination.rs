//! STOMP destinations, as RabbitMQ's STOMP plugin defines them:
//!
//! | destination | SEND goes to | SUBSCRIBE reads from |
//! |---|---|---|
//! | `/queue/N` | default exchange, key N (queue N declared, durable) | queue N (declared) |
//! | `/topic/K` | `amq.topic`, key K | a private queue bound to `amq.topic` with K (durable and named with `durable:true` + `id`) |
//! | `/exchange/X/K` | exchange X, key K | a private queue bound to X with K |
//! | `/amq/queue/N` | default exchange, key N (no declaration) | queue N, which must exist |
//! | `/temp-queue/N` | (only in `reply-to`) | the connection's temporary queue N |
//! | `/reply-queue/Q` | default exchange, key Q | - |
//!
//! Queue and exchange names may be percent-encoded (`%2F` for `/`), as RabbitMQ allows.
//! Names are at most 255 bytes (an AMQP short string), and the routing key or binding pattern of
//! `/exchange/X/K` has at most [`MAX_TOPIC_WORDS`] dot-separated words, the topic exchange's
//! limit (a `/topic/` key is a name, so at most 255 bytes, which is never more words).

use junction_core::exchange::{MAX_TOPIC_WORDS, topic_words};

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/queue/N`.
    Queue(String),
    /// `/topic/K`.
    Topic(String),
    /// `/exchange/X/K` (K may be empty).
    Exchange {
        /// The exchange.
        exchange: String,
        /// The routing key or binding pattern.
        key: String,
    },
    /// `/amq/queue/N`.
    AmqQueue(String),
    /// `/temp-queue/N`.
    TempQueue(String),
    /// `/reply-queue/Q`.
    ReplyQueue(String),
}

/// Why a destination is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid destination")]
pub struct InvalidDestination(pub String);

impl Destination {
    /// Parses a destination header.
    pub fn parse(text: &str) -> Result<Destination, InvalidDestination> {
        let invalid = || InvalidDestination(shortened(text));
        // A name is one path segment: a '/' in it must be percent-encoded (`/queue/a/b` is
        // no queue, as in RabbitMQ).
        let name = |rest: &str| -> Result<String, InvalidDestination> {
            if rest.contains('/') {
                return Err(invalid());
            }
            let decoded = percent_decode(rest).ok_or_else(invalid)?;
            if decoded.is_empty() || decoded.len() > 255 {
                return Err(invalid());
            }
            Ok(decoded)
        };
        if let Some(rest) = text.strip_prefix("/queue/") {
            Ok(Destination::Queue(name(rest)?))
        } else if let Some(rest) = text.strip_prefix("/topic/") {
            Ok(Destination::Topic(name(rest)?))
        } else if let Some(rest) = text.strip_prefix("/amq/queue/") {
            Ok(Destination::AmqQueue(name(rest)?))
        } else if let Some(rest) = text.strip_prefix("/temp-queue/") {
            Ok(Destination::TempQueue(name(rest)?))
        } else if let Some(rest) = text.strip_prefix("/reply-queue/") {
            Ok(Destination::ReplyQueue(name(rest)?))
        } else if let Some(rest) = text.strip_prefix("/exchange/") {
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            let exchange = name(exchange)?;
            if key.contains('/') {
                return Err(invalid());
            }
            let key = percent_decode(key).ok_or_else(invalid)?;
            if topic_words(&key) > MAX_TOPIC_WORDS {
                return Err(invalid());
            }
            Ok(Destination::Exchange { exchange, key })
        } else {
            Err(invalid())
        }
    }

    /// Where a SEND to this destination is published: exchange and routing key.
    pub fn publish_target(&self) -> Option<(&str, &str)> {
        match self {
            Destination::Queue(n) | Destination::AmqQueue(n) | Destination::ReplyQueue(n) => {
                Some(("", n))
            }
            Destination::Topic(k) => Some(("amq.topic", k)),
            Destination::Exchange { exchange, key } => Some((exchange, key)),
            Destination::TempQueue(_) => None,
        }
    }

    /// The destination header for a message published to `exchange` with `key`, as a STOMP
    /// subscriber sees it.
    pub fn for_message(exchange: &str, key: &str) -> String {
        match exchange {
            "" => format!("/queue/{key}"),
            "amq.topic" => format!("/topic/{key}"),
            other if key.is_empty() => format!("/exchange/{other}"),
            other => format!("/exchange/{other}/{key}"),
        }
    }
}

/// `text`, cut to at most 255 bytes (on a character boundary) for error messages.
fn shortened(text: &str) -> String {
    let end = text.floor_char_boundary(255);
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_owned()
    }
}

fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_as_rabbitmq_defines_them() {
        assert_eq!(
            Destination::parse("/queue/orders"),
            Ok(Destination::Queue("orders".into()))
        );
        assert_eq!(
            Destination::parse("/topic/sensors.#"),
            Ok(Destination::Topic("sensors.#".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/logs/kern.*"),
            Ok(Destination::Exchange {
                exchange: "logs".into(),
                key: "kern.*".into()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/logs"),
            Ok(Destination::Exchange {
                exchange: "logs".into(),
                key: String::new()
            })
        );
        assert_eq!(
            Destination::parse("/amq/queue/a%2Fb"),
            Ok(Destination::AmqQueue("a/b".into()))
        );
        assert_eq!(
            Destination::parse("/temp-queue/replies"),
            Ok(Destination::TempQueue("replies".into()))
        );
        let long_key = format!(
            "/exchange/logs/{}",
            vec!["w"; MAX_TOPIC_WORDS + 1].join(".")
        );
        assert!(Destination::parse(&long_key).is_err());
        let key_at_limit = format!("/exchange/logs/{}", vec!["w"; MAX_TOPIC_WORDS].join("."));
        assert!(Destination::parse(&key_at_limit).is_ok());
        for bad in [
            "/queue/",
            "queue/a",
            "/nowhere/a",
            "/queue/%zz",
            "/exchange//k",
            "",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_name_their_destination_by_exchange() {
        assert_eq!(Destination::for_message("", "q"), "/queue/q");
        assert_eq!(Destination::for_message("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::for_message("logs", "k"), "/exchange/logs/k");
        assert_eq!(Destination::for_message("logs", ""), "/exchange/logs");
    }
}
