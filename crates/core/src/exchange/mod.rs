//! Exchanges and the plugin API through which every routing algorithm is plugged in: an
//! [`ExchangeType`] makes one [`ExchangeHandler`] per exchange from its declaration; the
//! handler checks bindings, compiles [`Router`]s, hears lifecycle events ([`ExchangeEvent`])
//! and keeps the messages its routers hold ([`Routing::Hold`], [`HeldMessage`]).
//!
//! An exchange keeps its bindings in an index guarded by a mutex that only bind and unbind
//! take, and routes through a [`Router`] published through an `ArcSwap`. A publish only loads
//! the current router: it never waits for a lock held by bind or unbind. A bind or unbind asks
//! the current router for a new one with that one binding added or removed
//! ([`Router::with_binding`], [`Router::without_binding`]); the built-in routers answer from
//! persistent data structures that share everything the change does not touch, so a bind costs
//! O(key words × log bindings), not a rebuild. A router that does not answer (the default, for
//! plugins that do not care) is rebuilt from every binding by [`ExchangeHandler::compile`].
//! Recovery at start-up compiles each exchange's stored bindings once.

mod bindings;
mod direct;
mod fanout;
mod headers;
mod multiset;
mod topic;
mod trie;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};

pub use direct::DirectExchange;
pub use fanout::FanoutExchange;
pub use headers::HeadersExchange;
pub use topic::TopicExchange;
pub use trie::{MAX_TOPIC_WORDS, TooManyWords, TopicTrie, check_topic_words, topic_words};

use self::bindings::BindingSet;
use crate::error::{CoreError, CoreResult};
use crate::field::FieldTable;
use crate::message::Message;
use crate::persistence::{NotStored, OnDurable};
use crate::plugin::PluginContext;
use crate::queue::QueueHandle;

/// Where a binding delivers: a queue, or another exchange (an exchange-to-exchange binding).
#[non_exhaustive]
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

/// Targets are equal when they are the same queue or exchange object (as [`BindingTarget::same`]).
impl PartialEq for BindingTarget {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

impl Eq for BindingTarget {}

/// Hashes the kind and name, which the same object always has.
impl std::hash::Hash for BindingTarget {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        matches!(self, BindingTarget::Queue(_)).hash(state);
        self.name().hash(state);
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
#[non_exhaustive]
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
    /// A binding to `target` with `routing_key` and `arguments`.
    pub fn new(
        routing_key: impl Into<String>,
        arguments: FieldTable,
        target: BindingTarget,
    ) -> Self {
        Self {
            routing_key: routing_key.into(),
            arguments,
            target,
        }
    }

    /// Whether this binding is the same (target, key, arguments) triple as `other`.
    pub fn same(&self, other: &Binding) -> bool {
        self.target.same(&other.target)
            && self.routing_key == other.routing_key
            && self.arguments == other.arguments
    }
}

/// What a router decided for a message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The message goes to the targets the router appended (none: it is unroutable here).
    Targets,
    /// The exchange keeps the message: the pipeline hands it to
    /// [`ExchangeHandler::hold`], which stores it and publishes it later through its
    /// [`PluginContext`] (the delayed-message exchange does this).
    Hold,
}

/// A routing table: the bindings of one exchange in the form its type routes fastest. A router
/// is an immutable snapshot that publishes read without locks; a bind or unbind replaces it.
pub trait Router: Send + Sync {
    /// Appends to `out` the target of every binding that matches `message` and answers
    /// [`Routing::Targets`]; or answers [`Routing::Hold`] to keep the message. Duplicates are
    /// allowed; the virtual host delivers to each queue once.
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing;

    /// A new router: this one with `binding` added (the exchange has checked it is new and
    /// valid). Return `None` (the default) to have the exchange rebuild the router with
    /// [`ExchangeHandler::compile`] instead, which costs every binding; the built-in types
    /// share this router's unchanged parts and cost O(log bindings).
    fn with_binding(&self, _binding: &Binding) -> Option<Box<dyn Router>> {
        None
    }

    /// A new router: this one without `binding` (the exchange has checked it was there; a
    /// binding's identity is its target, key and arguments). `None` (the default) has the
    /// exchange rebuild the router with [`ExchangeHandler::compile`].
    fn without_binding(&self, _binding: &Binding) -> Option<Box<dyn Router>> {
        None
    }
}

/// Something that happened to an exchange, told to its [`ExchangeHandler::on_event`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy)]
pub enum ExchangeEvent<'a> {
    /// A client declared the exchange (it is new, not recovered).
    Created,
    /// The exchange was recreated from the definitions store at start-up; told once every
    /// stored exchange, queue and binding is back (its bindings came before it as
    /// [`ExchangeEvent::BindingAdded`] events).
    Recovered,
    /// The exchange was deleted; its handler is dropped once the last publish through it ends.
    Deleted,
    /// A binding was added (also for each stored binding at start-up).
    BindingAdded(&'a Binding),
    /// A binding was removed.
    BindingRemoved(&'a Binding),
}

/// A message an exchange took instead of routing it ([`Routing::Hold`]).
pub struct HeldMessage {
    message: Message,
    on_stored: Option<OnDurable>,
}

impl std::fmt::Debug for HeldMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldMessage")
            .field("message", &self.message)
            .field("waits_for_store", &self.on_stored.is_some())
            .finish()
    }
}

impl HeldMessage {
    /// A held message; `on_stored` is the publisher's answer, to run once the message is
    /// stored (present when the message is persistent and its publisher waits for it).
    pub fn new(message: Message, on_stored: Option<OnDurable>) -> Self {
        Self { message, on_stored }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, and the completion to run once it is stored durably (the publisher's
    /// confirm waits for it). A handler that keeps the message only in memory runs it at
    /// once with [`Durability::OnDisk`](crate::persistence::Durability) only if it is allowed
    /// to lose it; the built-in plugins store it first.
    pub fn into_parts(self) -> (Message, Option<OnDurable>) {
        (self.message, self.on_stored)
    }
}

/// The routing behaviour of one exchange, made by its [`ExchangeType`] from the exchange's
/// declaration. It checks bindings, builds routers, hears what happens to the exchange, and
/// keeps the messages its routers hold.
pub trait ExchangeHandler: Send + Sync + 'static {
    /// Checks a new binding's key and arguments before it is added.
    fn validate_binding(&self, _routing_key: &str, _arguments: &FieldTable) -> CoreResult<()> {
        Ok(())
    }

    /// Builds the router for the given bindings: for a new exchange (no bindings), at recovery
    /// (every stored binding at once), and on a bind or unbind whose router does not implement
    /// [`Router::with_binding`] / [`Router::without_binding`]. Never on the publish path.
    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router>;

    /// Hears that the exchange was created, recovered or deleted, or a binding added or
    /// removed. Called after the change, outside the publish path; the default ignores it.
    fn on_event(&self, _event: ExchangeEvent<'_>) {}

    /// Keeps a message one of this exchange's routers held ([`Routing::Hold`]). Answers
    /// [`NotStored`] when it cannot keep it now: the publisher is then refused (a negative
    /// confirm), as for a message the message store refuses. The default refuses: a handler
    /// whose routers never hold has nothing to keep.
    fn hold(&self, _held: HeldMessage) -> Result<(), NotStored> {
        Err(NotStored)
    }
}

/// A routing algorithm: an exchange type clients declare by name. It checks declarations and
/// makes one [`ExchangeHandler`] per exchange. The built-in direct, fanout, topic and headers
/// types implement this trait and are registered in an [`ExchangeTypeRegistry`] exactly as a
/// plugin's type is.
///
/// # Example: a plugin exchange type
///
/// ```
/// use std::sync::Arc;
///
/// use junction_core::exchange::{ExchangeHandler, Routing};
/// use junction_core::plugin::PluginContext;
/// use junction_core::{
///     Binding, BindingTarget, CoreResult, ExchangeSpec, ExchangeType, Message, Router,
/// };
///
/// /// Delivers each message to the binding whose key is longest (a toy, for illustration).
/// struct LongestKey;
/// struct LongestKeyRouter(Option<BindingTarget>);
///
/// impl Router for LongestKeyRouter {
///     fn route(&self, _message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
///         out.extend(self.0.clone());
///         Routing::Targets
///     }
/// }
///
/// impl ExchangeHandler for LongestKey {
///     fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
///         let best = bindings.iter().max_by_key(|b| b.routing_key.len());
///         Box::new(LongestKeyRouter(best.map(|b| b.target.clone())))
///     }
/// }
///
/// impl ExchangeType for LongestKey {
///     fn name(&self) -> &str {
///         "x-longest-key"
///     }
///     fn create(
///         &self,
///         _spec: &ExchangeSpec,
///         _context: PluginContext,
///     ) -> CoreResult<Arc<dyn ExchangeHandler>> {
///         Ok(Arc::new(LongestKey))
///     }
/// }
/// ```
pub trait ExchangeType: Send + Sync + 'static {
    /// The type name clients declare (`direct`, `x-consistent-hash`, ...).
    fn name(&self) -> &str;

    /// Checks a declaration of an exchange of this type (its arguments, mostly) before it is
    /// created. A refusal is the client's error (406 PRECONDITION_FAILED, usually).
    fn validate(&self, _spec: &ExchangeSpec) -> CoreResult<()> {
        Ok(())
    }

    /// Makes the handler of one exchange of this type: when a client declares it, and when
    /// it is recovered at start-up ([`PluginContext::is_recovery`]; then
    /// [`ExchangeEvent::Recovered`] follows). The context gives the exchange's timers, durable
    /// state and publish handle. It runs while the vhost holds the exchange's name: it must
    /// not block, nor touch the vhost; start work in [`ExchangeHandler::on_event`].
    fn create(
        &self,
        spec: &ExchangeSpec,
        context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>>;
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

/// What a client asks for when it declares an exchange. Made with [`ExchangeSpec::new`]; the
/// fields are public to read and to set.
#[non_exhaustive]
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

impl ExchangeSpec {
    /// Exchange `name` of type `kind`: not durable, not auto-delete, not internal, no
    /// arguments.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }
}

struct CompiledRouter(Box<dyn Router>);

/// Bindings just added to or removed from an exchange's [`BindingSet`].
enum Change<'a> {
    Added(&'a [Binding]),
    Removed(&'a [Binding]),
}

/// An exchange: its declaration, its handler, its bindings and the compiled router that
/// publishes read.
pub struct Exchange {
    /// The exchange name.
    pub name: String,
    /// What it was declared with.
    pub spec: ExchangeSpec,
    handler: Arc<dyn ExchangeHandler>,
    bindings: Mutex<BindingSet>,
    router: ArcSwap<CompiledRouter>,
    counters: crate::stats::ExchangeCounters,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("name", &self.name)
            .field("kind", &self.spec.kind)
            .finish()
    }
}

impl Exchange {
    /// Creates an exchange with no bindings, routing through `handler`.
    pub fn new(spec: ExchangeSpec, handler: Arc<dyn ExchangeHandler>) -> Self {
        let router = ArcSwap::from_pointee(CompiledRouter(handler.compile(&[])));
        Self {
            name: spec.name.clone(),
            handler,
            spec,
            bindings: Mutex::new(BindingSet::default()),
            router,
            counters: crate::stats::ExchangeCounters::default(),
        }
    }

    /// Messages in and out, counted by the publish pipeline.
    pub fn counters(&self) -> &crate::stats::ExchangeCounters {
        &self.counters
    }

    /// The handler that routes for this exchange.
    pub fn handler(&self) -> &Arc<dyn ExchangeHandler> {
        &self.handler
    }

    /// Routes `message`, appending the targets of matching bindings to `out`, or holds it.
    /// Lock-free.
    pub fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        self.router.load().0.route(message, out)
    }

    /// Adds a binding; returns false when an identical one already existed.
    pub fn bind(&self, binding: Binding) -> CoreResult<bool> {
        self.handler
            .validate_binding(&binding.routing_key, &binding.arguments)?;
        {
            let mut bindings = self.bindings.lock();
            if !bindings.insert(binding.clone()) {
                return Ok(false);
            }
            self.update_router(&bindings, Change::Added(std::slice::from_ref(&binding)));
        }
        self.handler.on_event(ExchangeEvent::BindingAdded(&binding));
        Ok(true)
    }

    /// Adds many bindings at once and builds the router once (recovery at start-up). Invalid
    /// bindings are skipped and returned with the reason; duplicates are ignored.
    pub fn bind_all(&self, new: Vec<Binding>) -> Vec<(Binding, CoreError)> {
        let mut refused = Vec::new();
        let mut added = Vec::new();
        {
            let mut bindings = self.bindings.lock();
            for binding in new {
                match self
                    .handler
                    .validate_binding(&binding.routing_key, &binding.arguments)
                {
                    Ok(()) => {
                        if bindings.insert(binding.clone()) {
                            added.push(binding);
                        }
                    }
                    Err(error) => refused.push((binding, error)),
                }
            }
            self.router.store(Arc::new(CompiledRouter(
                self.handler.compile(&bindings.to_vec()),
            )));
        }
        for binding in &added {
            self.handler.on_event(ExchangeEvent::BindingAdded(binding));
        }
        refused
    }

    /// Removes the binding equal to `binding`; returns whether one was removed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let removed = {
            let mut bindings = self.bindings.lock();
            let removed = bindings.remove(binding);
            if let Some(removed) = &removed {
                self.update_router(&bindings, Change::Removed(std::slice::from_ref(removed)));
            }
            removed
        };
        match removed {
            Some(removed) => {
                self.handler
                    .on_event(ExchangeEvent::BindingRemoved(&removed));
                true
            }
            None => false,
        }
    }

    /// Removes every binding whose target is `target`; returns the removed bindings.
    pub fn unbind_target(&self, target: &BindingTarget) -> Vec<Binding> {
        let removed = {
            let mut bindings = self.bindings.lock();
            let removed = bindings.remove_target(target);
            if !removed.is_empty() {
                self.update_router(&bindings, Change::Removed(&removed));
            }
            removed
        };
        for binding in &removed {
            self.handler
                .on_event(ExchangeEvent::BindingRemoved(binding));
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

    /// A copy of the current bindings, in no particular order.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().to_vec()
    }

    /// Publishes the router for `bindings` (already changed by `change`): the current router
    /// updated binding by binding, or rebuilt when it cannot update itself. Called with the
    /// bindings' mutex held, so routers change one writer at a time.
    fn update_router(&self, bindings: &BindingSet, change: Change<'_>) {
        let current = self.router.load_full();
        let (changed, added) = match change {
            Change::Added(changed) => (changed, true),
            Change::Removed(changed) => (changed, false),
        };
        let mut next: Option<Box<dyn Router>> = None;
        for binding in changed {
            let base: &dyn Router = next.as_deref().unwrap_or(current.0.as_ref());
            let updated = if added {
                base.with_binding(binding)
            } else {
                base.without_binding(binding)
            };
            match updated {
                Some(router) => next = Some(router),
                None => {
                    next = Some(self.handler.compile(&bindings.to_vec()));
                    break;
                }
            }
        }
        if let Some(router) = next {
            self.router.store(Arc::new(CompiledRouter(router)));
        }
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

#[cfg(test)]
mod tests;
