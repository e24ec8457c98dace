//! The bindings of one exchange, indexed by target and key, so that adding one (with its
//! duplicate check), removing one and removing every binding of a deleted queue cost the size
//! of that target's bindings, not the exchange's. Only bind and unbind touch it (under the
//! exchange's mutex); publishes read the router instead.

use std::collections::HashMap;

use super::{Binding, BindingTarget};

/// An exchange's bindings: target, then routing key, then the distinct arguments.
#[derive(Default)]
pub(super) struct BindingSet {
    by_target: HashMap<BindingTarget, HashMap<String, Vec<Binding>>>,
    len: usize,
}

impl BindingSet {
    /// Adds `binding`; false when an identical one is already there.
    pub(super) fn insert(&mut self, binding: Binding) -> bool {
        let same_key = self
            .by_target
            .entry(binding.target.clone())
            .or_default()
            .entry(binding.routing_key.clone())
            .or_default();
        if same_key.iter().any(|b| b.arguments == binding.arguments) {
            return false;
        }
        same_key.push(binding);
        self.len += 1;
        true
    }

    /// Removes the binding identical to `binding`, and returns it.
    pub(super) fn remove(&mut self, binding: &Binding) -> Option<Binding> {
        let by_key = self.by_target.get_mut(&binding.target)?;
        let same_key = by_key.get_mut(&binding.routing_key)?;
        let at = same_key
            .iter()
            .position(|b| b.arguments == binding.arguments)?;
        let removed = same_key.swap_remove(at);
        if same_key.is_empty() {
            by_key.remove(&binding.routing_key);
            if by_key.is_empty() {
                self.by_target.remove(&binding.target);
            }
        }
        self.len -= 1;
        Some(removed)
    }

    /// Removes and returns every binding to `target`.
    pub(super) fn remove_target(&mut self, target: &BindingTarget) -> Vec<Binding> {
        let removed: Vec<Binding> = self
            .by_target
            .remove(target)
            .into_iter()
            .flat_map(HashMap::into_values)
            .flatten()
            .collect();
        self.len -= removed.len();
        removed
    }

    /// How many bindings there are.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// A copy of every binding, in no particular order.
    pub(super) fn to_vec(&self) -> Vec<Binding> {
        self.by_target
            .values()
            .flat_map(HashMap::values)
            .flatten()
            .cloned()
            .collect()
    }
}
