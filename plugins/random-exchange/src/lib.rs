//! An example plugin: the `x-random` exchange type, which delivers each message to one of its
//! bindings picked at random (like RabbitMQ's random exchange plugin). It uses only
//! junction-core's public traits: the built-in exchange types are registered the same way.

use std::sync::Arc;

use junction_core::{
    Binding, BindingTarget, CoreResult, ExchangeHandler, ExchangeSpec, ExchangeType,
    ExchangeTypeRegistry, Message, PluginContext, Router, Routing,
};

/// The `x-random` exchange type; stateless, so one value is also every exchange's handler.
pub struct RandomExchange;

struct RandomRouter {
    targets: Vec<BindingTarget>,
}

impl Router for RandomRouter {
    fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if !self.targets.is_empty() {
            let index = rand::random_range(0..self.targets.len());
            out.push(self.targets[index].clone());
        }
        Routing::Targets
    }
}

impl ExchangeHandler for RandomExchange {
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        Box::new(RandomRouter {
            targets: bindings.iter().map(|b| b.target.clone()).collect(),
        })
    }
}

impl ExchangeType for RandomExchange {
    fn name(&self) -> &str {
        "x-random"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(RandomExchange))
    }
}

/// Registers `x-random` with a broker's exchange types.
pub fn register(registry: &ExchangeTypeRegistry) {
    registry.register(Arc::new(RandomExchange));
}
