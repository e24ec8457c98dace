//! `x-round-robin`: each message goes to the next binding in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use junction_core::exchange::{ExchangeHandler, Routing};
use junction_core::{
    Binding, BindingTarget, CoreResult, ExchangeSpec, ExchangeType, Message, PluginContext, Router,
};

/// The exchange type; stateless, so it is also every exchange's handler.
pub struct RoundRobin;

/// The bindings, and whose turn it is.
struct Turns {
    targets: Vec<BindingTarget>,
    next: AtomicUsize,
}

impl Router for Turns {
    fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if !self.targets.is_empty() {
            let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
            out.push(self.targets[turn].clone());
        }
        Routing::Targets
    }
}

impl ExchangeHandler for RoundRobin {
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut targets: Vec<BindingTarget> = bindings.iter().map(|b| b.target.clone()).collect();
        targets.sort_by(|a, b| a.name().cmp(b.name()));
        Box::new(Turns {
            targets,
            next: AtomicUsize::new(0),
        })
    }
}

impl ExchangeType for RoundRobin {
    fn name(&self) -> &str {
        "x-round-robin"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(RoundRobin))
    }
}
