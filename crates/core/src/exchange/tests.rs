//! Incremental routers agree with routers compiled from scratch, for every built-in type.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::field::FieldValue;
use crate::message::Properties;

fn target(name: &str) -> BindingTarget {
    let spec = ExchangeSpec {
        name: name.to_owned(),
        kind: "fanout".to_owned(),
        ..Default::default()
    };
    BindingTarget::Exchange(Arc::new(Exchange::new(spec, Arc::new(FanoutExchange))))
}

fn message(key: &str, colour: &str) -> Message {
    let mut headers = FieldTable::new();
    headers.insert("colour", FieldValue::string(colour));
    let properties = Properties {
        headers: Some(headers),
        ..Default::default()
    };
    Message::new("x", key, properties, Bytes::new())
}

fn routed(
    route: impl Fn(&Message, &mut Vec<BindingTarget>) -> Routing,
    message: &Message,
) -> Vec<String> {
    let mut out = Vec::new();
    route(message, &mut out);
    let mut names: Vec<String> = out.iter().map(|t| t.name().to_owned()).collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn binding_one_at_a_time_routes_like_compiling_the_remaining_bindings() {
    let keys = ["a.b", "a.*", "#", "a.#.c", "b", "a.b"];
    let colours = ["red", "blue"];
    let targets: Vec<BindingTarget> = (0..4).map(|i| target(&format!("t{i}"))).collect();
    for (name, kind) in [
        (
            "direct",
            Arc::new(DirectExchange) as Arc<dyn ExchangeHandler>,
        ),
        ("fanout", Arc::new(FanoutExchange)),
        ("topic", Arc::new(TopicExchange)),
        ("headers", Arc::new(HeadersExchange)),
    ] {
        let exchange = Exchange::new(ExchangeSpec::default(), kind.clone());
        let mut all = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut arguments = FieldTable::new();
            arguments.insert("colour", FieldValue::string(colours[i % 2]));
            all.push(Binding {
                routing_key: (*key).to_owned(),
                arguments,
                target: targets[i % targets.len()].clone(),
            });
        }
        for binding in &all {
            assert!(exchange.bind(binding.clone()).expect("valid"));
        }
        assert!(
            !exchange.bind(all[0].clone()).expect("valid"),
            "a duplicate"
        );
        assert!(exchange.unbind(&all[1]));
        assert!(!exchange.unbind(&all[1]));
        let removed = exchange.unbind_target(&targets[2]);
        assert_eq!(removed.len(), 1);
        let kept: Vec<Binding> = all
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != 1 && !b.target.same(&targets[2]))
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(exchange.binding_count(), kept.len());
        let compiled = kind.compile(&kept);
        for key in ["a.b", "a.x", "a.x.y.c", "b", "", "z"] {
            for colour in colours {
                let message = message(key, colour);
                assert_eq!(
                    routed(|m, out| exchange.route(m, out), &message),
                    routed(|m, out| compiled.route(m, out), &message),
                    "{} key {key:?} colour {colour}",
                    name
                );
            }
        }
    }
}
