//! Exchanges and the [`ExchangeType`] trait through which every routing algorithm is plugged in.
//!
//! An exchange keeps its bindings in a list guarded by a mutex that only bind and unbind take;
//! on every change the exchange type compiles the list into a [`Router`], which is published
//! through an `ArcSwap`. A publish only loads the current router: it never waits for a lock held
//! by bind or unbind.

mod direct;
mod fanout;
mod headers;
mod topic;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};

pub use direct::DirectExchange;
pub use fanout::FanoutExchange;
pub use headers::HeadersExchange;
pub use topic::{TopicExchange, TopicTrie};

use crate::error::{CoreError, CoreResult};
use crate::field::FieldTable;
use crate::message::Message;
use crate::queue::QueueHandle;

/// Where a binding delivers: a queue, or another exchange (an exchange-to-exchange binding).
#[derive(Clone)]
pub enum BindingTarget {
    /// A queue.
    Queue(QueueHandle),
    /// Another exchange, which routes the message further.
    Exchange(Arc<Exchange>),
}

impl BindingTarget {
    /// The name of the queue or exchange the binding delivers to.
    pub fn name(&self) -> &str {
        match self {
            BindingTarget::Queue(q) => q.name(),
            BindingTarget::Exchange(e) => &e.name,
        }
    }

    /// Whether two targets are the same queue or exchange object.
    pub fn same(&self, other: &BindingTarget) -> bool {
        match (self, other) {
            (BindingTarget::Queue(a), BindingTarget::Queue(b)) => a.same(b),
            (BindingTarget::Exchange(a), BindingTarget::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for BindingTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindingTarget::Queue(q) => write!(f, "queue '{}'", q.name()),
            BindingTarget::Exchange(e) => write!(f, "exchange '{}'", e.name),
        }
    }
}

/// A binding from an exchange to a target, with the routing key and arguments it was made with.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The binding key (a topic pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments (`x-match` and header values for headers exchanges).
    pub arguments: FieldTable,
    /// Where matching messages go.
    pub target: BindingTarget,
}

impl Binding {
    /// Whether this binding is the same (target, key, arguments) triple as `other`.
    pub fn same(&self, other: &Binding) -> bool {
        self.target.same(&other.target)
            && self.routing_key == other.routing_key
            && self.arguments == other.arguments
    }
}

/// A compiled routing table: the bindings of one exchange in the form its type routes fastest.
pub trait Router: Send + Sync {
    /// Appends to `out` the target of every binding that matches `message`. Duplicates are
    /// allowed; the virtual host delivers to each queue once.
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>);
}

/// A routing algorithm. The built-in direct, fanout, topic and headers exchanges implement this
/// trait and are registered in an [`ExchangeTypeRegistry`] exactly as a plugin's type would be.
///
/// # Example: a plugin exchange type
///
/// ```
/// use junction_core::{Binding, BindingTarget, ExchangeType, Message, Router};
///
/// /// Delivers each message to the binding whose key is longest (a toy, for illustration).
/// struct LongestKey;
/// struct LongestKeyRouter(Option<BindingTarget>);
///
/// impl Router for LongestKeyRouter {
///     fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) {
///         out.extend(self.0.clone());
///     }
/// }
///
/// impl ExchangeType for LongestKey {
///     fn name(&self) -> &str {
///         "x-longest-key"
///     }
///     fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
///         let best = bindings.iter().max_by_key(|b| b.routing_key.len());
///         Box::new(LongestKeyRouter(best.map(|b| b.target.clone())))
///     }
/// }
/// ```
pub trait ExchangeType: Send + Sync + 'static {
    /// The type name clients declare (`direct`, `x-consistent-hash`, ...).
    fn name(&self) -> &str;

    /// Checks the arguments of an exchange declaration of this type.
    fn validate_arguments(&self, _arguments: &FieldTable) -> CoreResult<()> {
        Ok(())
    }

    /// Checks a new binding's key and arguments before it is added.
    fn validate_binding(&self, _routing_key: &str, _arguments: &FieldTable) -> CoreResult<()> {
        Ok(())
    }

    /// Builds the router for the given bindings. Called on every bind and unbind, never on the
    /// publish path.
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router>;
}

/// The exchange types known to a broker, by name. Plugins register theirs at start-up.
pub struct ExchangeTypeRegistry {
    types: RwLock<HashMap<String, Arc<dyn ExchangeType>>>,
}

impl ExchangeTypeRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self {
            types: RwLock::new(HashMap::new()),
        }
    }

    /// A registry holding the built-in types: direct, fanout, topic and headers.
    pub fn with_builtins() -> Self {
        let registry = Self::empty();
        registry.register(Arc::new(DirectExchange));
        registry.register(Arc::new(FanoutExchange));
        registry.register(Arc::new(TopicExchange));
        registry.register(Arc::new(HeadersExchange));
        registry
    }

    /// Registers (or replaces) an exchange type under its name.
    pub fn register(&self, kind: Arc<dyn ExchangeType>) {
        self.types.write().insert(kind.name().to_owned(), kind);
    }

    /// The type registered as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ExchangeType>> {
        self.types.read().get(name).cloned()
    }

    /// The registered type names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.types.read().keys().cloned().collect();
        names.sort();
        names
    }
}

/// What a client asks for when it declares an exchange.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExchangeSpec {
    /// The exchange name.
    pub name: String,
    /// The type name, looked up in the registry.
    pub kind: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding (as a source) is removed.
    pub auto_delete: bool,
    /// Cannot be published to by clients, only bound from other exchanges.
    pub internal: bool,
    /// Declaration arguments (`alternate-exchange`, ...).
    pub arguments: FieldTable,
}

struct CompiledRouter(Box<dyn Router>);

/// An exchange: its declaration, its bindings and the compiled router that publishes read.
pub struct Exchange {
    /// The exchange name.
    pub name: String,
    /// The exchange type.
    pub kind: Arc<dyn ExchangeType>,
    /// What it was declared with.
    pub spec: ExchangeSpec,
    bindings: Mutex<Vec<Binding>>,
    router: ArcSwap<CompiledRouter>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .finish()
    }
}

impl Exchange {
    /// Creates an exchange with no bindings.
    pub fn new(spec: ExchangeSpec, kind: Arc<dyn ExchangeType>) -> Self {
        let router = ArcSwap::from_pointee(CompiledRouter(kind.compile(&[])));
        Self {
            name: spec.name.clone(),
            kind,
            spec,
            bindings: Mutex::new(Vec::new()),
            router,
        }
    }

    /// Routes `message`, appending the targets of matching bindings to `out`. Lock-free.
    pub fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) {
        self.router.load().0.route(message, out);
    }

    /// Adds a binding; returns false when an identical one already existed.
    pub fn bind(&self, binding: Binding) -> CoreResult<bool> {
        self.kind
            .validate_binding(&binding.routing_key, &binding.arguments)?;
        let mut bindings = self.bindings.lock();
        if bindings.iter().any(|b| b.same(&binding)) {
            return Ok(false);
        }
        bindings.push(binding);
        self.recompile(&bindings);
        Ok(true)
    }

    /// Removes the binding equal to `binding`; returns whether one was removed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut bindings = self.bindings.lock();
        let before = bindings.len();
        bindings.retain(|b| !b.same(binding));
        let removed = bindings.len() != before;
        if removed {
            self.recompile(&bindings);
        }
        removed
    }

    /// Removes every binding whose target is `target`; returns the removed bindings.
    pub fn unbind_target(&self, target: &BindingTarget) -> Vec<Binding> {
        let mut bindings = self.bindings.lock();
        let (removed, kept): (Vec<Binding>, Vec<Binding>) =
            bindings.drain(..).partition(|b| b.target.same(target));
        *bindings = kept;
        if !removed.is_empty() {
            self.recompile(&bindings);
        }
        removed
    }

    /// Whether messages routed through this binding's target survive a restart with it: the
    /// target is a durable exchange, or a durable queue that is not exclusive.
    pub fn is_durable_binding(&self, binding: &Binding) -> bool {
        self.spec.durable
            && match &binding.target {
                BindingTarget::Queue(q) => q.spec().durable && !q.spec().exclusive,
                BindingTarget::Exchange(e) => e.spec.durable,
            }
    }

    /// The number of bindings with this exchange as their source.
    pub fn binding_count(&self) -> usize {
        self.bindings.lock().len()
    }

    /// A copy of the current bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().clone()
    }

    fn recompile(&self, bindings: &[Binding]) {
        self.router
            .store(Arc::new(CompiledRouter(self.kind.compile(bindings))));
    }

    /// Checks that a redeclaration asks for what this exchange already is (RabbitMQ's 406 rule).
    pub fn check_equivalent(&self, spec: &ExchangeSpec, vhost: &str) -> CoreResult<()> {
        let mine = &self.spec;
        let field = if mine.kind != spec.kind {
            Some("type")
        } else if mine.durable != spec.durable {
            Some("durable")
        } else if mine.auto_delete != spec.auto_delete {
            Some("auto_delete")
        } else if mine.internal != spec.internal {
            Some("internal")
        } else {
            None
        };
        if let Some(field) = field {
            return Err(CoreError::precondition(format!(
                "inequivalent arg '{field}' for exchange '{}' in vhost '{vhost}': received {} but current is {}",
                self.name,
                describe(field, spec),
                describe(field, mine)
            )));
        }
        // The one exchange argument RabbitMQ compares.
        let key = "alternate-exchange";
        let (received, current) = (spec.arguments.get(key), mine.arguments.get(key));
        if !crate::queue::arguments::equivalent(received, current) {
            return Err(CoreError::precondition(format!(
                "inequivalent arg '{key}' for exchange '{}' in vhost '{vhost}': received {} but current is {}",
                self.name,
                crate::queue::arguments::describe(received),
                crate::queue::arguments::describe(current)
            )));
        }
        Ok(())
    }
}

fn describe(field: &str, spec: &ExchangeSpec) -> String {
    match field {
        "type" => format!("'{}'", spec.kind),
        "durable" => format!("'{}'", spec.durable),
        "auto_delete" => format!("'{}'", spec.auto_delete),
        _ => format!("'{}'", spec.internal),
    }
}
