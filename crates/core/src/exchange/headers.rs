//! The headers exchange: bindings match on message headers instead of the routing key.
//! `x-match` = `all` (the default) needs every binding header to match, `any` needs one;
//! `all-with-x` and `any-with-x` also compare headers whose names start with `x-`.
//! A binding value of void only requires the header to be present.

use std::sync::Arc;

use super::{Binding, BindingTarget, ExchangeHandler, ExchangeSpec, ExchangeType, Router, Routing};
use crate::error::{CoreError, CoreResult};
use crate::field::{FieldTable, FieldValue};
use crate::message::Message;
use crate::plugin::PluginContext;

/// Header matching.
pub struct HeadersExchange;

#[derive(Clone, Copy, PartialEq)]
enum MatchMode {
    All,
    Any,
}

struct HeaderRule {
    mode: MatchMode,
    pairs: Vec<(String, FieldValue)>,
    /// The binding's arguments as given, to find the rule again on unbind.
    arguments: FieldTable,
    target: BindingTarget,
}

impl HeaderRule {
    /// The rule for `binding`, or `None` when its `x-match` is invalid (refused at bind).
    fn of(binding: &Binding) -> Option<Self> {
        let (mode, with_x) = parse_x_match(&binding.arguments).ok()?;
        let pairs = binding
            .arguments
            .iter()
            .filter(|(name, _)| with_x || !name.starts_with("x-"))
            .filter(|(name, _)| name.as_str() != "x-match")
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Some(HeaderRule {
            mode,
            pairs,
            arguments: binding.arguments.clone(),
            target: binding.target.clone(),
        })
    }

    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let hit = |(name, expected): &(String, FieldValue)| match headers.and_then(|h| h.get(name))
        {
            None => false,
            Some(_) if *expected == FieldValue::Void => true,
            Some(actual) => actual == expected,
        };
        match self.mode {
            MatchMode::All => self.pairs.iter().all(hit),
            MatchMode::Any => self.pairs.iter().any(hit),
        }
    }
}

/// The rules by target, so an unbind finds its rule among the target's few.
#[derive(Clone, Default)]
struct HeadersRouter {
    rules: imbl::HashMap<BindingTarget, Vec<Arc<HeaderRule>>>,
}

impl HeadersRouter {
    fn add(&mut self, binding: &Binding) {
        if let Some(rule) = HeaderRule::of(binding) {
            self.rules
                .entry(binding.target.clone())
                .or_default()
                .push(Arc::new(rule));
        }
    }
}

impl Router for HeadersRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        let headers = message.properties.headers.as_ref();
        for rules in self.rules.values() {
            for rule in rules {
                if rule.matches(headers) {
                    out.push(rule.target.clone());
                }
            }
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
        if let Some(rules) = next.rules.get_mut(&binding.target) {
            if let Some(at) = rules.iter().position(|r| r.arguments == binding.arguments) {
                rules.swap_remove(at);
            }
            if rules.is_empty() {
                next.rules.remove(&binding.target);
            }
        }
        Some(Box::new(next))
    }
}

/// Reads `x-match`: the mode and whether `x-` headers take part.
fn parse_x_match(arguments: &FieldTable) -> CoreResult<(MatchMode, bool)> {
    match arguments.get("x-match") {
        None => Ok((MatchMode::All, false)),
        Some(value) => match value.as_str() {
            Some("all") => Ok((MatchMode::All, false)),
            Some("any") => Ok((MatchMode::Any, false)),
            Some("all-with-x") => Ok((MatchMode::All, true)),
            Some("any-with-x") => Ok((MatchMode::Any, true)),
            _ => Err(CoreError::precondition(format!(
                "Invalid x-match field value {value:?}; expected all, any, all-with-x, or any-with-x"
            ))),
        },
    }
}

impl ExchangeHandler for HeadersExchange {
    fn validate_binding(&self, _routing_key: &str, arguments: &FieldTable) -> CoreResult<()> {
        parse_x_match(arguments).map(|_| ())
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let mut router = HeadersRouter::default();
        for binding in bindings {
            router.add(binding);
        }
        Box::new(router)
    }
}

impl ExchangeType for HeadersExchange {
    fn name(&self) -> &str {
        "headers"
    }

    fn create(
        &self,
        _spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(HeadersExchange))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Properties;

    fn matches(binding: &[(&str, FieldValue)], headers: &[(&str, FieldValue)]) -> bool {
        let arguments: FieldTable = binding
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let target = BindingTarget::Exchange(std::sync::Arc::new(super::super::Exchange::new(
            Default::default(),
            std::sync::Arc::new(HeadersExchange),
        )));
        let router = HeadersExchange.compile(&[Binding {
            routing_key: String::new(),
            arguments,
            target,
        }]);
        let table: FieldTable = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let message = Message::new(
            "h",
            "",
            Properties {
                headers: Some(table),
                ..Default::default()
            },
            Bytes::new(),
        );
        let mut out = Vec::new();
        router.route(&message, &mut out);
        !out.is_empty()
    }

    #[test]
    fn all_needs_every_header_and_any_needs_one() {
        let s = FieldValue::string;
        let headers = [("format", s("pdf")), ("type", s("report"))];
        assert!(matches(
            &[("format", s("pdf")), ("type", s("report"))],
            &headers
        ));
        assert!(!matches(
            &[("format", s("pdf")), ("type", s("log"))],
            &headers
        ));
        assert!(matches(
            &[
                ("x-match", s("any")),
                ("format", s("zip")),
                ("type", s("report"))
            ],
            &headers
        ));
        assert!(!matches(
            &[("x-match", s("any")), ("format", s("zip"))],
            &headers
        ));
        assert!(matches(&[("format", FieldValue::Void)], &headers));
    }

    #[test]
    fn x_headers_only_count_with_the_with_x_modes() {
        let s = FieldValue::string;
        let headers = [("x-origin", s("eu"))];
        assert!(
            matches(&[("x-origin", s("us"))], &headers),
            "ignored in all"
        );
        assert!(!matches(
            &[("x-match", s("all-with-x")), ("x-origin", s("us"))],
            &headers
        ));
        assert!(matches(
            &[("x-match", s("any-with-x")), ("x-origin", s("eu"))],
            &headers
        ));
    }

    #[test]
    fn an_unknown_x_match_is_refused() {
        let mut arguments = FieldTable::new();
        arguments.insert("x-match", FieldValue::string("most"));
        assert!(HeadersExchange.validate_binding("", &arguments).is_err());
    }
}
