//! The fanout exchange: every message goes to every binding, whatever its key.

use super::{Binding, BindingTarget, ExchangeType, Router};
use crate::message::Message;

/// Broadcast to all bindings.
pub struct FanoutExchange;

struct FanoutRouter {
    targets: Vec<BindingTarget>,
}

impl Router for FanoutRouter {
    fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) {
        out.extend(self.targets.iter().cloned());
    }
}

impl ExchangeType for FanoutExchange {
    fn name(&self) -> &str {
        "fanout"
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        Box::new(FanoutRouter {
            targets: bindings.iter().map(|b| b.target.clone()).collect(),
        })
    }
}
