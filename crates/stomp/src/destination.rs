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

/// Why a destination is refused, as RabbitMQ's STOMP plugin words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDestination {
    /// A known kind with a name or key that is not valid: `/queue/a/b`, `/queue`, `/exchange//k`.
    /// `rest` is what follows the kind's prefix.
    #[error("'{rest}' is not a valid {kind} destination\n")]
    Invalid {
        /// The kind, in RabbitMQ's words (`queue`, `topic`, `exchange`, `amqqueue`,
        /// `temp_queue`, `reply_queue`).
        kind: &'static str,
        /// What follows the prefix.
        rest: String,
    },
    /// No destination kind at all: `/nowhere/a`.
    #[error(
        "'{0}' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n"
    )]
    Unknown(String),
}

impl InvalidDestination {
    /// The ERROR frame's `message` header for it.
    pub fn headline(&self) -> &'static str {
        match self {
            InvalidDestination::Invalid { .. } => "Invalid destination",
            InvalidDestination::Unknown(_) => "Unknown destination",
        }
    }
}

/// The kinds of destination: the path segments that name one, and RabbitMQ's word for it.
const KINDS: [(&[&str], &str); 5] = [
    (&["queue"], "queue"),
    (&["topic"], "topic"),
    (&["exchange"], "exchange"),
    (&["amq", "queue"], "amqqueue"),
    (&["temp-queue"], "temp_queue"),
];

impl Destination {
    /// Parses a destination header. A destination is `/<kind>/<name>` (a bare name, without
    /// any `/`, is a queue, as in RabbitMQ); a `/` inside a name must be percent-encoded.
    pub fn parse(text: &str) -> Result<Destination, InvalidDestination> {
        if let Some(name) = text.strip_prefix("/reply-queue/")
            && !name.is_empty()
        {
            let invalid = || InvalidDestination::Invalid {
                kind: "reply_queue",
                rest: shortened(name),
            };
            return Ok(Destination::ReplyQueue(
                decoded_name(name).ok_or_else(invalid)?,
            ));
        }
        if !text.contains('/') {
            let invalid = || InvalidDestination::Invalid {
                kind: "queue",
                rest: shortened(text),
            };
            return Ok(Destination::Queue(decoded_name(text).ok_or_else(invalid)?));
        }
        let segments: Vec<&str> = text.split('/').collect();
        let Some((prefix, kind)) = KINDS
            .into_iter()
            .find(|(prefix, _)| segments.first() == Some(&"") && segments[1..].starts_with(prefix))
        else {
            return Err(InvalidDestination::Unknown(shortened(text)));
        };
        // What follows the prefix, with its leading '/', as RabbitMQ quotes it.
        let prefix_len: usize = prefix.iter().map(|segment| 1 + segment.len()).sum();
        let rest_text = &text[prefix_len..];
        let invalid = || InvalidDestination::Invalid {
            kind,
            rest: shortened(rest_text),
        };
        let rest = &segments[1 + prefix.len()..];
        if kind == "exchange" {
            let (exchange, key) = match rest {
                [exchange] => (*exchange, ""),
                [exchange, key] => (*exchange, *key),
                _ => return Err(invalid()),
            };
            let exchange = decoded_name(exchange).ok_or_else(invalid)?;
            let key = percent_decode(key).ok_or_else(invalid)?;
            if topic_words(&key) > MAX_TOPIC_WORDS {
                return Err(invalid());
            }
            return Ok(Destination::Exchange { exchange, key });
        }
        let [name] = rest else {
            return Err(invalid());
        };
        let name = decoded_name(name).ok_or_else(invalid)?;
        Ok(match kind {
            "queue" => Destination::Queue(name),
            "topic" => Destination::Topic(name),
            "amqqueue" => Destination::AmqQueue(name),
            _ => Destination::TempQueue(name),
        })
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

/// A queue, exchange or topic name: percent-decoded, not empty, at most 255 bytes.
fn decoded_name(text: &str) -> Option<String> {
    let decoded = percent_decode(text)?;
    (!decoded.is_empty() && decoded.len() <= 255).then_some(decoded)
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
        assert_eq!(
            Destination::parse("orders"),
            Ok(Destination::Queue("orders".into()))
        );
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
    fn refusals_read_as_rabbitmq_words_them() {
        let refusal = |text: &str| Destination::parse(text).unwrap_err().to_string();
        assert_eq!(
            refusal("/queue/bah/baz"),
            "'/bah/baz' is not a valid queue destination\n"
        );
        assert_eq!(refusal("/queue"), "'' is not a valid queue destination\n");
        assert_eq!(refusal("/topic"), "'' is not a valid topic destination\n");
        assert_eq!(
            refusal("/exchange"),
            "'' is not a valid exchange destination\n"
        );
        assert_eq!(
            refusal("/exchange//foo"),
            "'//foo' is not a valid exchange destination\n"
        );
        assert_eq!(
            refusal("/exchange/bah/baz/boo"),
            "'/bah/baz/boo' is not a valid exchange destination\n"
        );
        assert_eq!(
            refusal("/amq/queue/a/b"),
            "'/a/b' is not a valid amqqueue destination\n"
        );
        assert_eq!(
            refusal("/bah/baz"),
            "'/bah/baz' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n"
        );
        assert_eq!(
            Destination::parse("/bah/baz").unwrap_err().headline(),
            "Unknown destination"
        );
        assert_eq!(
            Destination::parse("/queue").unwrap_err().headline(),
            "Invalid destination"
        );
    }

    #[test]
    fn messages_name_their_destination_by_exchange() {
        assert_eq!(Destination::for_message("", "q"), "/queue/q");
        assert_eq!(Destination::for_message("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::for_message("logs", "k"), "/exchange/logs/k");
        assert_eq!(Destination::for_message("logs", ""), "/exchange/logs");
    }
}
