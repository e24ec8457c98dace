//! Topic permissions (RabbitMQ's topic authorisation): per user, vhost and topic exchange, a
//! `write` pattern for the routing keys the user may publish with and a `read` pattern for the
//! keys it may bind or subscribe with. Patterns are unanchored regular expressions in which
//! `{username}`, `{vhost}` and `{client_id}` stand for the asking connection's values; the
//! values are escaped, so a user called `a.b` matches only `a.b` (RabbitMQ inserts them as
//! they are, where the dot matches any character).

use std::collections::HashMap;

use parking_lot::Mutex;
use regex::Regex;

use super::Permission;

/// What the variables of a topic pattern stand for.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TopicVariables {
    /// The user name.
    pub username: String,
    /// The vhost.
    pub vhost: String,
    /// The client identifier (MQTT's client id), when the protocol has one.
    pub client_id: Option<String>,
}

impl TopicVariables {
    /// The values for `username` in `vhost`, with `client_id` when there is one.
    pub fn new(username: &str, vhost: &str, client_id: Option<&str>) -> Self {
        Self {
            username: username.to_owned(),
            vhost: vhost.to_owned(),
            client_id: client_id.map(str::to_owned),
        }
    }
}

/// Whether topic permissions apply to `exchange`: only to topic exchanges, as in RabbitMQ.
pub(crate) fn limits_topics(exchange: &crate::exchange::Exchange) -> bool {
    exchange.spec.kind == "topic"
}

/// RabbitMQ's words for a refused topic permission, shared by every protocol's refusal.
pub fn topic_refusal(
    permission: Permission,
    routing_key: &str,
    exchange: &str,
    vhost: &str,
    user: &str,
) -> String {
    format!(
        "{} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
        permission.as_str()
    )
}

/// Compiled patterns kept at most; beyond it the cache starts again.
const MAX_COMPILED: usize = 1024;

/// One topic permission of a user: the exchange and vhost it applies to and its two patterns.
#[derive(Debug)]
pub struct TopicPermission {
    vhost: String,
    exchange: String,
    write: Pattern,
    read: Pattern,
}

/// A pattern, compiled once when it has no variables, else per set of values.
#[derive(Debug)]
enum Pattern {
    Fixed(Regex),
    WithVariables {
        source: String,
        compiled: Mutex<HashMap<String, Regex>>,
    },
}

fn has_variables(source: &str) -> bool {
    ["{username}", "{vhost}", "{client_id}"]
        .iter()
        .any(|variable| source.contains(variable))
}

impl Pattern {
    fn source(&self) -> &str {
        match self {
            Pattern::Fixed(regex) => regex.as_str(),
            Pattern::WithVariables { source, .. } => source,
        }
    }

    fn new(source: &str) -> Result<Self, regex::Error> {
        if has_variables(source) {
            // Checked with placeholder values, so a broken pattern fails at start-up.
            Regex::new(&expand(source, &TopicVariables::default()))?;
            Ok(Pattern::WithVariables {
                source: source.to_owned(),
                compiled: Mutex::new(HashMap::new()),
            })
        } else {
            Ok(Pattern::Fixed(Regex::new(source)?))
        }
    }

    fn is_match(&self, key: &str, variables: &TopicVariables) -> bool {
        match self {
            Pattern::Fixed(regex) => regex.is_match(key),
            Pattern::WithVariables { source, compiled } => {
                let expanded = expand(source, variables);
                let mut compiled = compiled.lock();
                if let Some(regex) = compiled.get(&expanded) {
                    return regex.is_match(key);
                }
                let Ok(regex) = Regex::new(&expanded) else {
                    return false;
                };
                let matched = regex.is_match(key);
                if compiled.len() >= MAX_COMPILED {
                    compiled.clear();
                }
                compiled.insert(expanded, regex);
                matched
            }
        }
    }
}

fn expand(source: &str, variables: &TopicVariables) -> String {
    source
        .replace("{username}", &regex::escape(&variables.username))
        .replace("{vhost}", &regex::escape(&variables.vhost))
        .replace(
            "{client_id}",
            &regex::escape(variables.client_id.as_deref().unwrap_or("")),
        )
}

impl TopicPermission {
    /// A permission on `exchange` in `vhost` with its `write` and `read` patterns.
    pub fn new(vhost: &str, exchange: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            vhost: vhost.to_owned(),
            exchange: exchange.to_owned(),
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// The vhost it applies in.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The exchange it applies to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The write pattern, as given.
    pub fn write_pattern(&self) -> &str {
        self.write.source()
    }

    /// The read pattern, as given.
    pub fn read_pattern(&self) -> &str {
        self.read.source()
    }

    /// Whether it applies to `exchange` in `vhost`.
    pub fn applies_to(&self, vhost: &str, exchange: &str) -> bool {
        self.vhost == vhost && self.exchange == exchange
    }

    /// Whether it lets `routing_key` be used for `permission` (configure is not a topic
    /// permission and is refused).
    pub fn allows(
        &self,
        permission: Permission,
        routing_key: &str,
        variables: &TopicVariables,
    ) -> bool {
        match permission {
            Permission::Write => self.write.is_match(routing_key, variables),
            Permission::Read => self.read.is_match(routing_key, variables),
            Permission::Configure => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_escaped_and_patterns_stay_unanchored() {
        let permission =
            TopicPermission::new("/", "amq.topic", "^sensors\\.{client_id}\\.", "{username}")
                .expect("valid");
        let device = TopicVariables::new("ann.b", "/", Some("dev-1"));
        assert!(permission.allows(Permission::Write, "sensors.dev-1.temp", &device));
        assert!(!permission.allows(Permission::Write, "sensors.dev-2.temp", &device));
        assert!(permission.allows(Permission::Read, "x.ann.b.y", &device));
        assert!(
            !permission.allows(Permission::Read, "x.annxb.y", &device),
            "escaped"
        );
        assert!(!permission.allows(Permission::Configure, "anything", &device));
        assert!(permission.applies_to("/", "amq.topic"));
        assert!(!permission.applies_to("/", "other"));
        assert!(TopicPermission::new("/", "e", "(", ".*").is_err());
        assert!(TopicPermission::new("/", "e", "({username}", ".*").is_err());
    }
}
