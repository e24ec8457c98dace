//! The direct exchange: a message goes to every binding whose key equals its routing key.

use std::collections::HashMap;

use super::{Binding, BindingTarget, ExchangeType, Router};
use crate::message::Message;

/// Exact routing-key match, through a hash map from key to targets.
pub struct DirectExchange;

struct DirectRouter {
    by_key: HashMap<String, Vec<BindingTarget>>,
}

impl Router for DirectRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) {
        if let Some(targets) = self.by_key.get(message.routing_key.as_str()) {
            out.extend(targets.iter().cloned());
        }
    }
}

impl ExchangeType for DirectExchange {
    fn name(&self) -> &str {
        "direct"
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut by_key: HashMap<String, Vec<BindingTarget>> = HashMap::new();
        for binding in bindings {
            by_key
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.target.clone());
        }
        Box::new(DirectRouter { by_key })
    }
}
