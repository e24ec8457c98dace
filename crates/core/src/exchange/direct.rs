//! The direct exchange: a message goes to every binding whose key equals its routing key.

use super::multiset::Multiset;
use std::sync::Arc;

use super::{Binding, BindingTarget, ExchangeHandler, ExchangeSpec, ExchangeType, Router, Routing};
use crate::error::CoreResult;
use crate::message::Message;
use crate::plugin::PluginContext;

/// Exact routing-key match, through a persistent hash map from key to targets.
pub struct DirectExchange;

#[derive(Clone, Default)]
struct DirectRouter {
    by_key: imbl::HashMap<String, Multiset<BindingTarget>>,
}

impl DirectRouter {
    fn add(&mut self, binding: &Binding) {
        self.by_key
            .entry(binding.routing_key.clone())
            .or_default()
            .add(binding.target.clone());
    }
}

impl Router for DirectRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if let Some(targets) = self.by_key.get(message.routing_key.as_str()) {
            out.extend(targets.iter().cloned());
        }
        Routing::Targets
    }

    fn with_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        next.add(binding);
        Some(Box::new(next))
    }

    fn without_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        if let Some(targets) = next.by_key.get_mut(binding.routing_key.as_str()) {
            targets.remove(&binding.target);
            if targets.is_empty() {
                next.by_key.remove(binding.routing_key.as_str());
            }
        }
        Some(Box::new(next))
    }
}

impl ExchangeHandler for DirectExchange {
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut router = DirectRouter::default();
        for binding in bindings {
            router.add(binding);
        }
        Box::new(router)
    }
}

impl ExchangeType for DirectExchange {
    fn name(&self) -> &str {
        "direct"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(DirectExchange))
    }
}
