//! A connection's cache of authorisation answers, so the publish path does not ask the backend
//! per message. It is bounded: a client that names ever new resources (each refused, or each
//! missing) must not grow its connection without limit, so once a kind of question has
//! [`PermissionCache::NAMES_PER_QUESTION`] answers they are dropped and asked again when
//! needed (RabbitMQ keeps the last 12). It does not expire answers: permissions changed while
//! a connection is open apply to its next connection, as in RabbitMQ.

use std::collections::HashMap;

use super::{Permission, Principal, ResourceKind};

/// Answers per (resource kind, permission), by resource name.
#[derive(Debug, Default)]
pub struct PermissionCache {
    answers: HashMap<(ResourceKind, Permission), HashMap<String, bool>>,
}

impl PermissionCache {
    /// How many names are remembered per kind of question before the answers are dropped.
    pub const NAMES_PER_QUESTION: usize = 64;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `principal` may do `permission` on the resource `name` of kind `kind` in
    /// `vhost`; a cached answer when there is one (a lookup by `&str`, no allocation).
    pub fn allowed(
        &mut self,
        principal: &Principal,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> bool {
        let names = self.answers.entry((kind, permission)).or_default();
        if let Some(allowed) = names.get(name) {
            return *allowed;
        }
        let allowed = principal.check_resource(vhost, kind, name, permission);
        if names.len() >= Self::NAMES_PER_QUESTION {
            names.clear();
        }
        names.insert(name.to_owned(), allowed);
        allowed
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.answers.values().map(HashMap::len).sum()
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthChain, InternalUsers, LoginRequest};
    use std::sync::Arc;

    #[test]
    fn the_cache_stays_bounded_however_many_names_a_client_asks_about() {
        let users = InternalUsers::new();
        users.add_user("u", "p", &[], &["/"]);
        let mut chain = AuthChain::new();
        chain.push(Arc::new(users));
        let principal = chain
            .authenticate(&LoginRequest {
                username: "u",
                password: "p",
                peer: None,
            })
            .expect("login");
        let mut cache = PermissionCache::new();
        for n in 0..10_000 {
            let name = format!("queue-{n}");
            assert!(cache.allowed(
                &principal,
                "/",
                ResourceKind::Queue,
                &name,
                Permission::Read
            ));
            assert!(cache.len() <= PermissionCache::NAMES_PER_QUESTION);
        }
        // A name asked again is answered the same.
        assert!(cache.allowed(
            &principal,
            "/",
            ResourceKind::Queue,
            "queue-1",
            Permission::Read
        ));
    }
}
