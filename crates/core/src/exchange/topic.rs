//! The topic exchange: binding keys are dot-separated patterns where `*` matches exactly one word
//! and `#` matches zero or more words. Bindings live in a persistent [`TopicTrie`]: a publish walks
//! it once, in time linear in the routing key's words whatever the `#`s, and a bind or unbind
//! copies only the nodes on its pattern's path.
//!
//! Keys have at most [`MAX_TOPIC_WORDS`](super::MAX_TOPIC_WORDS) words: a longer binding key is refused (406 in AMQP), and
//! a longer routing key matches no binding (adapters refuse such keys before they get here).

use super::trie::{TopicTrie, check_topic_words};
use std::sync::Arc;

use super::{Binding, BindingTarget, ExchangeHandler, ExchangeSpec, ExchangeType, Router, Routing};
use crate::error::{CoreError, CoreResult};
use crate::field::FieldTable;
use crate::message::Message;
use crate::plugin::PluginContext;

/// Pattern routing through a [`TopicTrie`].
pub struct TopicExchange;

#[derive(Clone, Default)]
struct TopicRouter {
    trie: TopicTrie<BindingTarget>,
}

impl Router for TopicRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if let Err(error) = check_topic_words(&message.routing_key) {
            tracing::debug!(%error, "routing key too long for a topic exchange; not routed");
            return Routing::Targets;
        }
        self.trie.matches(&message.routing_key, out);
        Routing::Targets
    }

    fn with_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        next.add(binding);
        Some(Box::new(next))
    }

    fn without_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        next.trie.remove(&binding.routing_key, &binding.target);
        Some(Box::new(next))
    }
}

impl TopicRouter {
    fn add(&mut self, binding: &Binding) {
        // Bindings are validated before they get here; a key that slipped through is dropped.
        if let Err(error) = self
            .trie
            .insert(&binding.routing_key, binding.target.clone())
        {
            tracing::warn!(%error, target = ?binding.target, "topic binding not added");
        }
    }
}

impl ExchangeHandler for TopicExchange {
    fn validate_binding(&self, routing_key: &str, _arguments: &FieldTable) -> CoreResult<()> {
        check_topic_words(routing_key)
            .map_err(|error| CoreError::precondition(format!("invalid binding key: {error}")))
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut router = TopicRouter::default();
        for binding in bindings {
            router.add(binding);
        }
        Box::new(router)
    }
}

impl ExchangeType for TopicExchange {
    fn name(&self) -> &str {
        "topic"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(TopicExchange))
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_TOPIC_WORDS;
    use super::*;

    #[test]
    fn a_binding_key_over_the_word_limit_is_refused() {
        let fine = vec!["a"; MAX_TOPIC_WORDS].join(".");
        let long = vec!["a"; MAX_TOPIC_WORDS + 1].join(".");
        let empty = FieldTable::new();
        assert!(TopicExchange.validate_binding(&fine, &empty).is_ok());
        let error = TopicExchange.validate_binding(&long, &empty);
        assert!(error.is_err_and(|e| e.kind == crate::error::ErrorKind::PreconditionFailed));
    }
}
