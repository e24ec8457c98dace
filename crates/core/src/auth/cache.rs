//! A connection's memo in front of the [`Authorizer`](super::Authorizer): the answers it was
//! given, looked up by `&str` without allocating, so a publish does not lock the shared cache
//! or build a key per message. Answers expire with the authoriser's TTL, so a permission
//! changed in a backend applies to open connections within it. It is bounded: a client that
//! names ever new resources (each refused, or each missing) must not grow its connection
//! without limit, so once a kind of question has [`AccessCache::NAMES_PER_QUESTION`] answers
//! they are dropped and asked again when needed (RabbitMQ keeps the last 12).

use std::collections::HashMap;
use std::time::Instant;

use super::{Permission, Principal, ResourceKind};
use crate::exchange::Exchange;

/// Answers by resource name or routing key, with when they were given.
type Names = HashMap<String, (bool, Instant)>;

/// Answers per (resource kind, permission), and per topic exchange and permission.
#[derive(Debug, Default)]
pub struct AccessCache {
    resources: HashMap<(ResourceKind, Permission), Names>,
    topics: HashMap<String, HashMap<Permission, Names>>,
}

fn fresh(names: Option<&Names>, name: &str, principal: &Principal) -> Option<bool> {
    let (allowed, at) = names?.get(name)?;
    (at.elapsed() < principal.ttl()).then_some(*allowed)
}

fn remember(names: &mut Names, name: &str, allowed: bool) {
    if names.len() >= AccessCache::NAMES_PER_QUESTION {
        names.clear();
    }
    names.insert(name.to_owned(), (allowed, Instant::now()));
}

impl AccessCache {
    /// How many names are remembered per kind of question before the answers are dropped.
    pub const NAMES_PER_QUESTION: usize = 64;

    /// An empty memo.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `principal` may do `permission` on the resource `name` of kind `kind` in
    /// `vhost`.
    pub async fn allowed(
        &mut self,
        principal: &Principal,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool {
        if let Some(allowed) = fresh(self.resources.get(&(kind, permission)), name, principal) {
            return allowed;
        }
        // An unavailable backend's refusal is not remembered: the next question asks again.
        let Some(allowed) = principal
            .resource_answer(vhost, kind, name, permission)
            .await
        else {
            return false;
        };
        remember(
            self.resources.entry((kind, permission)).or_default(),
            name,
            allowed,
        );
        allowed
    }

    /// Whether `principal` may use `routing_key` for `permission` on `exchange` in `vhost`,
    /// on the connection of `client_id` (one connection has one). Only topic exchanges are
    /// limited, as in RabbitMQ.
    pub async fn topic_allowed(
        &mut self,
        principal: &Principal,
        vhost: &str,
        exchange: &Exchange,
        routing_key: &str,
        permission: Permission,
        client_id: Option<&str>,
    ) -> bool {
        if !super::topic::limits_topics(exchange) {
            return true;
        }
        // One map per exchange: the key of the lookup is the routing key alone.
        let names = self
            .topics
            .get(exchange.name.as_str())
            .and_then(|by_permission| by_permission.get(&permission));
        if let Some(allowed) = fresh(names, routing_key, principal) {
            return allowed;
        }
        let Some(allowed) = principal
            .topic_answer(vhost, exchange, routing_key, permission, client_id)
            .await
        else {
            return false;
        };
        if self.topics.len() >= Self::NAMES_PER_QUESTION
            && !self.topics.contains_key(exchange.name.as_str())
        {
            self.topics.clear();
        }
        let names = self
            .topics
            .entry(exchange.name.clone())
            .or_default()
            .entry(permission)
            .or_default();
        remember(names, routing_key, allowed);
        allowed
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        let topics: usize = self
            .topics
            .values()
            .flat_map(HashMap::values)
            .map(HashMap::len)
            .sum();
        self.resources.values().map(HashMap::len).sum::<usize>() + topics
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authorizer, InternalUsers, LoginRequest, Protocol};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_memo_stays_bounded_however_many_names_a_client_asks_about() {
        let users = InternalUsers::new();
        users.add_user("u", "p", &[], &["/"]);
        let authorizer = Authorizer::new(vec![Arc::new(users)], Duration::from_secs(60));
        let principal = authorizer
            .login(&LoginRequest::new(Protocol::Amqp, "u", "p"))
            .await
            .expect("login");
        let mut cache = AccessCache::new();
        for n in 0..10_000 {
            let name = format!("queue-{n}");
            assert!(
                cache
                    .allowed(
                        &principal,
                        "/",
                        ResourceKind::Queue,
                        &name,
                        Permission::Read
                    )
                    .await
            );
            assert!(cache.len() <= AccessCache::NAMES_PER_QUESTION);
        }
        // A name asked again is answered the same.
        assert!(
            cache
                .allowed(
                    &principal,
                    "/",
                    ResourceKind::Queue,
                    "queue-1",
                    Permission::Read
                )
                .await
        );
    }
}
