//! The `x-consistent-hash` exchange type, compatible with RabbitMQ's
//! `rabbitmq_consistent_hash_exchange` plugin: each message goes to one binding, chosen by a
//! hash of its routing key (or of the header named by the `hash-header` argument, or of the
//! `message_id`, `correlation_id` or `timestamp` property named by `hash-property`), and the
//! bindings share the messages in proportion to their weights, which are their binding keys
//! (an integer from 1 to 10,000).
//!
//! RabbitMQ places bindings on a ring of buckets in the order they were made. Junction uses
//! weighted rendezvous hashing instead: every binding scores every message from the message's
//! hash and its own identity (target and key), and the best score wins. The choice does not
//! depend on the order of the bindings, so a restart changes nothing, adding a queue moves
//! only the keys it takes (its share), and removing one moves only the keys it had. Routing
//! costs one cheap mix per binding, which suits the handful to few hundred queues such an
//! exchange spreads over.

use std::sync::Arc;

use junction_core::{
    Binding, BindingTarget, CoreError, CoreResult, ExchangeHandler, ExchangeSpec, ExchangeType,
    ExchangeTypeRegistry, FieldTable, Message, PluginContext, Router, Routing,
};

/// The type name clients declare.
pub const TYPE_NAME: &str = "x-consistent-hash";

/// The largest weight a binding key may give, as in RabbitMQ.
pub const MAX_WEIGHT: u32 = 10_000;

/// The properties `hash-property` may name.
const PROPERTIES: [&str; 3] = ["correlation_id", "message_id", "timestamp"];

/// The `x-consistent-hash` exchange type.
pub struct ConsistentHashExchange;

/// What a message is hashed on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HashOn {
    RoutingKey,
    Header(String),
    Property(Property),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Property {
    CorrelationId,
    MessageId,
    Timestamp,
}

fn string_argument<'a>(arguments: &'a FieldTable, name: &str) -> CoreResult<Option<&'a str>> {
    match arguments.get(name) {
        None => Ok(None),
        Some(value) => value.as_str().map(Some).ok_or_else(|| {
            CoreError::precondition(format!("invalid argument '{name}': must be a string"))
        }),
    }
}

/// Reads `hash-header` and `hash-property`, refusing what RabbitMQ refuses.
fn hash_on(arguments: &FieldTable) -> CoreResult<HashOn> {
    let header = string_argument(arguments, "hash-header")?;
    let property = string_argument(arguments, "hash-property")?;
    match (header, property) {
        (Some(_), Some(_)) => Err(CoreError::precondition(
            "hash-header and hash-property are mutually exclusive",
        )),
        (Some(header), None) => Ok(HashOn::Header(header.to_owned())),
        (None, Some(property)) => match property {
            "correlation_id" => Ok(HashOn::Property(Property::CorrelationId)),
            "message_id" => Ok(HashOn::Property(Property::MessageId)),
            "timestamp" => Ok(HashOn::Property(Property::Timestamp)),
            other => Err(CoreError::precondition(format!(
                "Unsupported property: {other} (one of {})",
                PROPERTIES.join(", ")
            ))),
        },
        (None, None) => Ok(HashOn::RoutingKey),
    }
}

/// A binding key's weight.
fn weight(routing_key: &str) -> CoreResult<u32> {
    let weight: i64 = routing_key.trim().parse().map_err(|_| {
        CoreError::precondition(format!(
            "The binding key must be an integer: \"{routing_key}\""
        ))
    })?;
    if weight < 1 {
        return Err(CoreError::precondition(
            "The binding key must be greater than 0",
        ));
    }
    if weight > i64::from(MAX_WEIGHT) {
        return Err(CoreError::precondition(format!(
            "The binding key must not exceed {MAX_WEIGHT}"
        )));
    }
    Ok(weight as u32)
}

/// The hash of what `message` is routed on. A message without the header or property hashes
/// as an empty value, so all such messages go to one queue (as in RabbitMQ).
fn message_hash(on: &HashOn, message: &Message) -> u64 {
    let hash = |bytes: &[u8]| xxhash_rust::xxh3::xxh3_64(bytes);
    let properties = &message.properties;
    match on {
        HashOn::RoutingKey => hash(message.routing_key.as_bytes()),
        HashOn::Header(name) => match properties.headers.as_ref().and_then(|h| h.get(name)) {
            Some(value) => match value.as_str() {
                Some(text) => hash(text.as_bytes()),
                None => match value.as_i64() {
                    Some(number) => hash(number.to_string().as_bytes()),
                    None => hash(format!("{value:?}").as_bytes()),
                },
            },
            None => hash(b""),
        },
        HashOn::Property(Property::CorrelationId) => hash(
            properties
                .correlation_id
                .as_deref()
                .unwrap_or("")
                .as_bytes(),
        ),
        HashOn::Property(Property::MessageId) => {
            hash(properties.message_id.as_deref().unwrap_or("").as_bytes())
        }
        HashOn::Property(Property::Timestamp) => match properties.timestamp {
            Some(seconds) => hash(seconds.to_string().as_bytes()),
            None => hash(b""),
        },
    }
}

/// SplitMix64's finaliser: spreads every bit of the input over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One binding as the router sees it.
#[derive(Clone)]
struct Candidate {
    /// Identifies the binding (its target's kind and name, and its key), whatever its order.
    seed: u64,
    weight: f64,
    target: BindingTarget,
}

impl Candidate {
    fn new(binding: &Binding) -> CoreResult<Self> {
        let kind = match binding.target {
            BindingTarget::Queue(_) => "q",
            // An exchange, or a kind of target a later version adds.
            _ => "e",
        };
        let identity = format!("{kind}\0{}\0{}", binding.target.name(), binding.routing_key);
        Ok(Self {
            seed: xxhash_rust::xxh3::xxh3_64(identity.as_bytes()),
            weight: f64::from(weight(&binding.routing_key)?),
            target: binding.target.clone(),
        })
    }

    /// Weighted rendezvous score: `weight / -ln(u)` for `u` uniform in (0, 1) drawn from the
    /// message's hash and this binding. Each binding wins a share of messages proportional to
    /// its weight.
    fn score(&self, message_hash: u64) -> f64 {
        let bits = mix(message_hash ^ self.seed) >> 11;
        let uniform = (bits as f64 + 0.5) / (1u64 << 53) as f64;
        self.weight / -uniform.ln()
    }
}

struct HashRouter {
    on: HashOn,
    candidates: Vec<Candidate>,
}

impl HashRouter {
    /// The binding that wins `message_hash`.
    fn choose(&self, message_hash: u64) -> Option<&BindingTarget> {
        let mut best: Option<(f64, &Candidate)> = None;
        for candidate in &self.candidates {
            let score = candidate.score(message_hash);
            if best.is_none_or(|(top, winner)| {
                score > top || (score == top && candidate.seed > winner.seed)
            }) {
                best = Some((score, candidate));
            }
        }
        best.map(|(_, candidate)| &candidate.target)
    }
}

impl Router for HashRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if let Some(target) = self.choose(message_hash(&self.on, message)) {
            out.push(target.clone());
        }
        Routing::Targets
    }
}

/// The handler of one `x-consistent-hash` exchange: what it hashes on.
struct ConsistentHash {
    on: HashOn,
}

impl ExchangeHandler for ConsistentHash {
    fn validate_binding(&self, routing_key: &str, _arguments: &FieldTable) -> CoreResult<()> {
        weight(routing_key).map(|_| ())
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        let candidates = bindings
            .iter()
            .filter_map(|binding| Candidate::new(binding).ok())
            .collect();
        Box::new(HashRouter {
            on: self.on.clone(),
            candidates,
        })
    }
}

impl ExchangeType for ConsistentHashExchange {
    fn name(&self) -> &str {
        TYPE_NAME
    }

    fn validate(&self, spec: &ExchangeSpec) -> CoreResult<()> {
        hash_on(&spec.arguments).map(|_| ())
    }

    fn create(
        &self,
        spec: &ExchangeSpec,
        _context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        Ok(Arc::new(ConsistentHash {
            on: hash_on(&spec.arguments)?,
        }))
    }
}

/// Registers `x-consistent-hash` with a broker's exchange types.
pub fn register(registry: &ExchangeTypeRegistry) {
    registry.register(Arc::new(ConsistentHashExchange));
}

#[cfg(test)]
mod tests;
