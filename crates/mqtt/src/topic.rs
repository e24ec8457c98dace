//! MQTT topic names and filters: validation, MQTT's own matching, and the mapping onto AMQP
//! topic routing keys.
//!
//! The mapping is RabbitMQ's: MQTT's level separator `/` becomes AMQP's `.`, and a `.` inside
//! an MQTT topic becomes `/`, so the mapping is its own inverse and no topic is lost. In
//! filters `+` becomes `*` and `#` stays `#`. Matching is done twice on purpose: the topic
//! exchange decides which sessions' queues get a message, and the session then matches the
//! topic against its own filters with MQTT's rules, which finds the highest granted QoS and
//! keeps `$`-topics away from filters that start with a wildcard.
//!
//! Topic names and filters have at most [`MAX_LEVELS`] levels (one routing-key word each, so
//! the topic exchange's limit): a longer topic in PUBLISH or a will closes the connection, a
//! longer filter gets the SUBACK failure code.

use junction_core::exchange::MAX_TOPIC_WORDS;

/// The most levels a topic name or filter may have: the topic exchange's word limit.
pub const MAX_LEVELS: usize = MAX_TOPIC_WORDS;

/// The number of levels of a topic name or filter (one more than its `/`s).
fn levels(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'/').count() + 1
}

/// At most the first 255 bytes of a topic or filter (cut on a character boundary), for logs
/// and error messages: a refused topic may be 64 KiB long.
pub fn shortened(text: &str) -> &str {
    &text[..text.floor_char_boundary(255)]
}

/// Whether `topic` may be published to: non-empty, no wildcards, at most [`MAX_LEVELS`]
/// levels.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#']) && levels(topic) <= MAX_LEVELS
}

/// Whether `filter` is a valid subscription filter: non-empty; `#` only as a whole last
/// level; `+` only as a whole level; at most [`MAX_LEVELS`] levels.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || levels(filter) > MAX_LEVELS {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == last,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `topic` matches `filter` under MQTT's rules (both already valid).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Swaps `/` and `.`: the MQTT topic `a/b.c` is the routing key `a.b/c`, and back.
fn swap_separators(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            other => other,
        })
        .collect()
}

/// The AMQP routing key for an MQTT topic name.
pub fn topic_to_routing_key(topic: &str) -> String {
    swap_separators(topic)
}

/// The MQTT topic name for an AMQP routing key.
pub fn routing_key_to_topic(key: &str) -> String {
    swap_separators(key)
}

/// The MQTT filter of an AMQP binding key (`*` becomes `+`): the inverse of
/// [`filter_to_binding_key`].
pub fn binding_key_to_filter(key: &str) -> String {
    key.split('.')
        .map(|word| match word {
            "*" => "+".to_owned(),
            other => other.replace('/', "."),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The AMQP binding key for an MQTT filter (`+` becomes `*`).
pub fn filter_to_binding_key(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "+" => "*".to_owned(),
            other => other.replace('.', "/"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_validated_as_the_specification_says() {
        for good in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "sport/tennis/#",
            "$SYS/#",
        ] {
            assert!(valid_filter(good), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a+/b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name(""));
    }

    #[test]
    fn topics_and_filters_have_at_most_the_level_limit() {
        let at_limit = vec!["l"; MAX_LEVELS].join("/");
        let over = vec!["l"; MAX_LEVELS + 1].join("/");
        assert!(valid_topic_name(&at_limit));
        assert!(!valid_topic_name(&over));
        assert!(valid_filter(&at_limit));
        assert!(!valid_filter(&over));
        assert!(!valid_filter(&(over + "/#")));
        assert_eq!(
            junction_core::exchange::topic_words(&filter_to_binding_key(&at_limit)),
            MAX_LEVELS
        );
    }

    #[test]
    fn matching_follows_mqtt_including_dollar_topics() {
        assert!(matches("sport/tennis/#", "sport/tennis"));
        assert!(matches("sport/#", "sport/tennis/player1"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(matches("+/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("sport/+", "sport/tennis/x"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }

    #[test]
    fn topics_map_to_routing_keys_and_back() {
        assert_eq!(topic_to_routing_key("a/b/c"), "a.b.c");
        assert_eq!(topic_to_routing_key("v1.2/x"), "v1/2.x");
        assert_eq!(routing_key_to_topic("v1/2.x"), "v1.2/x");
        assert_eq!(filter_to_binding_key("a/+/#"), "a.*.#");
        assert_eq!(filter_to_binding_key("v1.2/+"), "v1/2.*");
    }
}
