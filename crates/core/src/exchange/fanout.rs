//! The fanout exchange: every message goes to every binding, whatever its key.

use super::multiset::Multiset;
use std::sync::Arc;

use super::{Binding, BindingTarget, ExchangeHandler, ExchangeSpec, ExchangeType, Router, Routing};
use crate::error::CoreResult;
use crate::message::Message;
use crate::plugin::PluginContext;

/// Broadcast to all bindings.
pub struct FanoutExchange;

#[derive(Clone, Default)]
struct FanoutRouter {
    targets: Multiset<BindingTarget>,
}

impl Router for FanoutRouter {
    fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        out.extend(self.targets.iter().cloned());
        Routing::Targets
    }

    fn with_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        next.targets.add(binding.target.clone());
        Some(Box::new(next))
    }

    fn without_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let mut next = self.clone();
        next.targets.remove(&binding.target);
        Some(Box::new(next))
    }
}

impl ExchangeHandler for FanoutExchange {
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut router = FanoutRouter::default();
        for binding in bindings {
            router.targets.add(binding.target.clone());
        }
        Box::new(router)
    }
}

impl ExchangeType for FanoutExchange {
    fn name(&self) -> &str {
        "fanout"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(FanoutExchange))
    }
}
