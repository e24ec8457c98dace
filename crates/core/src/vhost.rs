//! A virtual host: a namespace of exchanges and queues with their bindings. Declarations,
//! deletions and bindings go through here; so does routing a published message to its queues.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::definitions::{BindingRecord, DefinitionStore, StoreFailure, VhostDefinitions};
use crate::error::{CoreError, CoreResult, ErrorKind};
use crate::exchange::{
    Binding, BindingTarget, Exchange, ExchangeEvent, ExchangeHandler, ExchangeSpec, ExchangeType,
    ExchangeTypeRegistry, Routing,
};
use crate::field::{FieldTable, FieldValue};
use crate::message::Message;
use crate::persistence::{QueueKey, Recovered, Storage};
use crate::plugin::{MemoryState, PluginContext, StateStore};
use crate::queue::{
    self, ConnectionId, QueueArguments, QueueHandle, QueueSpec, QueueStats, QueueType,
};
use crate::stats::QueueTally;

/// The exchanges every virtual host has, with their types.
const STANDARD_EXCHANGES: [(&str, &str); 7] = [
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
    ("amq.rabbitmq.trace", "topic"),
    (crate::events::EVENT_EXCHANGE, "topic"),
];

/// One virtual host.
pub struct VirtualHost {
    /// The vhost's name (`/` by default).
    pub name: String,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<String, QueueHandle>,
    registry: Arc<ExchangeTypeRegistry>,
    storage: Storage,
    /// Where exchange handlers keep durable state ([`PluginContext::state`]).
    plugin_state: Arc<dyn StateStore>,
    me: Weak<VirtualHost>,
    /// Messages whose write failed, waiting to be withdrawn from their queues.
    unstored: crate::publish::Unstored,
    /// The totals of queues gone.
    retired_queues: parking_lot::Mutex<QueueTally>,
    /// Where the broker's events go.
    events: std::sync::OnceLock<Arc<crate::events::EventBus>>,
    /// The broker's limits, for this vhost's `max_queues`.
    limits: std::sync::OnceLock<crate::limits::ConnectionLimits>,
}

impl std::fmt::Debug for VirtualHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VirtualHost({})", self.name)
    }
}

/// The result of a queue declaration.
#[derive(Debug, Clone)]
pub struct DeclaredQueue {
    /// The queue.
    pub handle: QueueHandle,
    /// Its counts at declaration time.
    pub stats: QueueStats,
}

impl VirtualHost {
    /// Creates a vhost with the default exchange and the standard `amq.*` exchanges, keeping
    /// nothing on disk.
    pub fn new(name: impl Into<String>, registry: Arc<ExchangeTypeRegistry>) -> Arc<Self> {
        Self::with_store(name, registry, Storage::default())
    }

    /// Creates a vhost that records durable definitions and persistent messages in `storage`.
    pub fn with_store(
        name: impl Into<String>,
        registry: Arc<ExchangeTypeRegistry>,
        storage: Storage,
    ) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| Self {
            name: name.into(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            registry,
            plugin_state: storage
                .plugin_state
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryState::new())),
            storage,
            me: me.clone(),
            unstored: Default::default(),
            retired_queues: Default::default(),
            events: std::sync::OnceLock::new(),
            limits: std::sync::OnceLock::new(),
        });
        let builtin = |name: &str, kind: &str| ExchangeSpec {
            name: name.to_owned(),
            kind: kind.to_owned(),
            durable: true,
            ..Default::default()
        };
        let mut standard = vec![builtin("", "direct")];
        standard.extend(STANDARD_EXCHANGES.iter().map(|(n, k)| {
            let mut spec = builtin(n, k);
            // Only the broker publishes events (RabbitMQ's event exchange is internal too).
            spec.internal = *n == crate::events::EVENT_EXCHANGE;
            spec
        }));
        for spec in standard {
            if let Some(kind) = vhost.registry.get(&spec.kind) {
                match vhost.make_exchange(spec, kind.as_ref(), false) {
                    Ok(exchange) => {
                        vhost.exchanges.insert(exchange.name.clone(), exchange);
                    }
                    Err(error) => tracing::error!(%error, "standard exchange not created"),
                }
            }
        }
        vhost
    }

    /// Makes exchange `spec` of type `kind`: its handler, with a context of its own.
    fn make_exchange(
        &self,
        spec: ExchangeSpec,
        kind: &dyn ExchangeType,
        recovery: bool,
    ) -> CoreResult<Arc<Exchange>> {
        let context = PluginContext::new(
            self,
            &spec.name,
            kind.name(),
            self.plugin_state.clone(),
            self.registry.clone(),
            recovery,
        );
        let handler: Arc<dyn ExchangeHandler> = kind.create(&spec, context)?;
        Ok(Arc::new(Exchange::new(spec, handler)))
    }

    fn not_found_exchange(&self, name: &str) -> CoreError {
        CoreError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn not_found_queue(&self, name: &str) -> CoreError {
        CoreError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    /// The exchange called `name`.
    pub fn exchange(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.value().clone())
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Every exchange, in no particular order.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.value().clone()).collect()
    }

    /// Applies the broker's `limits` (this vhost's `max_queues`).
    pub(crate) fn set_limits(&self, limits: crate::limits::ConnectionLimits) {
        let _ = self.limits.set(limits);
    }

    /// Sends this vhost's events (queues, consumers) to `events`.
    pub(crate) fn set_events(&self, events: Arc<crate::events::EventBus>) {
        let _ = self.events.set(events);
    }

    /// Emits event `kind` with the headers `fill` sets (the vhost's name added).
    pub(crate) fn emit(&self, kind: &'static str, fill: impl FnOnce(&mut FieldTable)) {
        if let Some(events) = self.events.get() {
            events.emit(kind, |headers| {
                headers.insert("vhost", crate::events::text(self.name.as_str()));
                fill(headers);
            });
        }
    }

    /// The totals of the vhost's queues since the broker started (queues gone included)
    /// and the gauges of those there now.
    pub fn queue_totals(&self) -> QueueTally {
        let retired = self.retired_queues.lock();
        let mut totals = *retired;
        for queue in self.queues.iter() {
            totals.add(&queue.value().counters());
        }
        totals
    }

    /// Every queue, in no particular order.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.iter().map(|e| e.value().clone()).collect()
    }

    /// Declares an exchange, or checks an existing one is equivalent. `passive` only checks
    /// that it exists.
    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> CoreResult<Arc<Exchange>> {
        if spec.name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if passive {
            return self.exchange(&spec.name);
        }
        // As RabbitMQ 4 does: an unknown type is refused first, as a precondition (406).
        let kind = self.registry.get(&spec.kind).ok_or_else(|| {
            CoreError::precondition(format!(
                "invalid type '{}' for arg 'type' in exchange '{}' in vhost '{}'",
                spec.kind, spec.name, self.name
            ))
        })?;
        if let Some(existing) = self.exchanges.get(&spec.name) {
            existing.check_equivalent(&spec, &self.name)?;
            return Ok(existing.value().clone());
        }
        if spec.name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        kind.validate(&spec)?;
        let exchange = match self.exchanges.entry(spec.name.clone()) {
            Entry::Occupied(existing) => {
                existing.get().check_equivalent(&spec, &self.name)?;
                return Ok(existing.get().clone());
            }
            Entry::Vacant(slot) => {
                let exchange = self.make_exchange(spec, kind.as_ref(), false)?;
                if exchange.spec.durable {
                    self.persist(|store| store.save_exchange(&self.name, &exchange.spec))?;
                }
                slot.insert(exchange.clone());
                exchange
            }
        };
        exchange.handler().on_event(ExchangeEvent::Created);
        Ok(exchange)
    }

    /// Deletes an exchange and every binding to and from it. Deleting a missing exchange is not
    /// an error (as in RabbitMQ).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "operation not permitted on the default exchange or exchange '{name}'"
            )));
        }
        let Some(exchange) = self.exchanges.get(name).map(|e| e.value().clone()) else {
            return Ok(());
        };
        if if_unused && exchange.binding_count() > 0 {
            return Err(CoreError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if exchange.spec.durable {
            self.persist(|store| store.delete_exchange(&self.name, name))?;
        }
        self.exchanges.remove(name);
        let target = BindingTarget::Exchange(exchange.clone());
        self.unbind_everywhere(&target);
        // Drop its own outgoing bindings so exchange-to-exchange cycles do not keep it alive.
        for binding in exchange.bindings() {
            exchange.unbind(&binding);
            self.forget_binding(&exchange, &binding);
        }
        exchange.handler().on_event(ExchangeEvent::Deleted);
        Ok(())
    }

    /// The stores this vhost writes to.
    pub(crate) fn me(&self) -> Weak<VirtualHost> {
        self.me.clone()
    }

    pub(crate) fn unstored(&self) -> &crate::publish::Unstored {
        &self.unstored
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Declares a queue, or checks that an existing one is equivalent and usable by `owner`.
    /// An empty name gets a server-generated `amq.gen-` name; so may an adapter that needs the
    /// name first (to check permissions), passing `server_named` so the reserved `amq.` prefix
    /// is allowed.
    pub async fn declare_queue(
        &self,
        mut spec: QueueSpec,
        passive: bool,
        server_named: bool,
        owner: ConnectionId,
    ) -> CoreResult<DeclaredQueue> {
        if passive {
            let handle = self.queue_for(&spec.name, owner)?;
            if handle.arguments().expires.is_some() {
                // Any declaration counts as use (`x-expires`), passive ones too.
                handle.touch().await;
            }
            let stats = handle.stats().await?;
            return Ok(DeclaredQueue { handle, stats });
        }
        if (server_named || spec.name.is_empty())
            && let Some(kind) = durable_only_type(&spec.arguments)
        {
            return Err(CoreError::precondition(format!(
                "Cannot declare a server-named queue for type {kind}"
            )));
        }
        if spec.name.is_empty() {
            spec.name = generate_queue_name();
        } else if !server_named && spec.name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if named_type(&spec.arguments) == Some("stream") {
            // What a RabbitMQ node without streams answers (clients and RabbitMQ's own tests
            // recognise it); as there, it closes an AMQP connection (541).
            return Err(CoreError::internal(format!(
                "Cannot declare a queue 'queue '{}' in vhost '{}'' of type 'rabbit_stream_queue' on node 'junction': the corresponding feature flag is disabled",
                spec.name, self.name
            )));
        }
        let arguments = QueueArguments::parse(&spec.arguments)
            .map_err(|error| CoreError::precondition(error.message(&spec.name, &self.name)))?;
        // Checked before the entry is taken (the count reads every shard of the map); two
        // declarations racing for the last place may both get in.
        if let Some(max) = self
            .limits
            .get()
            .and_then(|limits| limits.vhost_limits(&self.name).max_queues)
            && !self.queues.contains_key(&spec.name)
            && self.queues.len() >= max
        {
            return Err(CoreError::precondition(format!(
                "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                spec.name, self.name
            )));
        }
        let mut redeclared = false;
        let handle = match self.queues.entry(spec.name.clone()) {
            Entry::Occupied(existing) => {
                let handle = existing.get().clone();
                drop(existing);
                self.check_owner(&handle, owner)?;
                if handle.spec().exclusive != spec.exclusive {
                    return Err(self.locked(&handle));
                }
                check_queue_equivalent(&handle, &spec, &self.name)?;
                redeclared = true;
                handle
            }
            Entry::Vacant(slot) => {
                let vhost = self.me.upgrade().ok_or_else(|| {
                    CoreError::new(ErrorKind::NotAllowed, "vhost is being deleted")
                })?;
                if arguments.is_quorum() {
                    // Checked on a new queue only: a redeclaration is compared instead.
                    check_quorum_properties(&spec, &self.name)?;
                }
                if spec.durable && !spec.exclusive {
                    self.persist(|store| store.save_queue(&self.name, &spec))?;
                }
                let owner = spec.exclusive.then_some(owner);
                self.emit("queue.created", |headers| {
                    headers.insert("name", crate::events::text(spec.name.as_str()));
                    headers.insert("durable", FieldValue::Bool(spec.durable));
                    headers.insert("auto_delete", FieldValue::Bool(spec.auto_delete));
                    headers.insert("exclusive", FieldValue::Bool(spec.exclusive));
                    headers.insert("arguments", FieldValue::Table(spec.arguments.clone()));
                });
                let handle = self.spawn_queue(spec, owner, &vhost, Vec::new());
                slot.insert(handle.clone());
                handle
            }
        };
        if redeclared && handle.arguments().expires.is_some() {
            // A redeclaration counts as use (`x-expires`).
            handle.touch().await;
        }
        let stats = handle.stats().await?;
        Ok(DeclaredQueue { handle, stats })
    }

    /// Starts a queue task; durable, non-exclusive queues keep persistent messages in the
    /// message store.
    fn spawn_queue(
        &self,
        spec: QueueSpec,
        owner: Option<ConnectionId>,
        vhost: &Arc<VirtualHost>,
        recovered: Vec<Recovered>,
    ) -> QueueHandle {
        let durable = spec.durable && !spec.exclusive;
        queue::spawn(
            spec,
            owner,
            vhost,
            self.storage.queue_mailbox.max(4),
            &self.storage,
            durable,
            recovered,
        )
    }

    fn recovered_messages(&self, spec: &QueueSpec) -> Vec<Recovered> {
        match &self.storage.messages {
            Some(store) => store.take_recovered(&QueueKey {
                vhost: self.name.clone(),
                queue: spec.name.clone(),
            }),
            None => Vec::new(),
        }
    }

    /// Refuses access to another connection's exclusive queue (405).
    fn check_owner(&self, handle: &QueueHandle, owner: ConnectionId) -> CoreResult<()> {
        match handle.owner() {
            Some(o) if o != owner => Err(self.locked(handle)),
            _ => Ok(()),
        }
    }

    fn locked(&self, handle: &QueueHandle) -> CoreError {
        CoreError::locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            handle.name(),
            self.name
        ))
    }

    /// The queue called `name`, if `owner` may use it.
    pub fn queue_for(&self, name: &str, owner: ConnectionId) -> CoreResult<QueueHandle> {
        let handle = self
            .queues
            .get(name)
            .map(|q| q.value().clone())
            .ok_or_else(|| self.not_found_queue(name))?;
        self.check_owner(&handle, owner)?;
        Ok(handle)
    }

    /// The queue called `name`, whoever owns it.
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.queues.get(name).map(|q| q.value().clone())
    }

    /// Deletes a queue; returns how many ready messages it held. A missing queue is not an
    /// error (as in RabbitMQ).
    pub async fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> CoreResult<u32> {
        let handle = match self.queue_for(name, owner) {
            Ok(handle) => handle,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if (if_unused || if_empty) && handle.arguments().is_quorum() {
            return Err(CoreError::new(
                ErrorKind::NotImplemented,
                format!(
                    "cannot delete queue '{name}' in vhost '{}'. queue.delete operations with if-unused flag set are not supported by quorum queues",
                    self.name
                ),
            ));
        }
        // The queue removes its record once if-unused / if-empty hold and before it stops:
        // delete-ok promises the queue will not come back at the next start, a refused delete
        // leaves the record alone, and a store that cannot write fails the delete with nothing
        // changed.
        let durable = handle.spec().durable && !handle.spec().exclusive;
        let count = match handle.delete(if_unused, if_empty, durable).await {
            Ok(count) => count,
            Err(e) if e.kind == ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        self.forget_queue(&handle);
        Ok(count)
    }

    /// Removes a queue from the vhost and unbinds it everywhere. Called by the queue itself when
    /// it auto-deletes, and by [`VirtualHost::delete_queue`].
    pub(crate) fn forget_queue(&self, handle: &QueueHandle) {
        if !handle.mark_deleted() {
            return;
        }
        {
            // The queue leaves the list and its totals join the retired ones in one step under
            // the lock `queue_totals` reads under, so the vhost's totals never go back.
            let mut retired = self.retired_queues.lock();
            let removed = self
                .queues
                .remove_if(handle.name(), |_, current| current.same(handle));
            if removed.is_some() {
                retired.add_totals(&handle.counters());
            }
        }
        self.emit("queue.deleted", |headers| {
            headers.insert("name", crate::events::text(handle.name()));
        });
        if handle.spec().durable && !handle.spec().exclusive {
            self.persist_quietly(|store| store.delete_queue(&self.name, handle.name()));
        }
        self.unbind_everywhere(&BindingTarget::Queue(handle.clone()));
    }

    /// Removes every binding to `target` and auto-deletes exchanges left without bindings.
    fn unbind_everywhere(&self, target: &BindingTarget) {
        for exchange in self.exchanges() {
            let removed = exchange.unbind_target(target);
            for binding in &removed {
                self.forget_binding(&exchange, binding);
            }
            if !removed.is_empty() {
                self.maybe_auto_delete(&exchange);
            }
        }
    }

    /// Runs a change against the store, if there is one; a failure fails the operation.
    fn persist(
        &self,
        change: impl FnOnce(&dyn DefinitionStore) -> Result<(), StoreFailure>,
    ) -> CoreResult<()> {
        match &self.storage.definitions {
            Some(store) => change(store.as_ref()).map_err(|e| CoreError::internal(e.to_string())),
            None => Ok(()),
        }
    }

    /// Removes a durable queue's stored definition (its queue asks, when it is deleted).
    pub(crate) fn delete_queue_record(&self, name: &str) -> CoreResult<()> {
        self.persist(|store| store.delete_queue(&self.name, name))
    }

    /// Runs a removal against the store where the operation cannot be undone; logs failures.
    fn persist_quietly(
        &self,
        change: impl FnOnce(&dyn DefinitionStore) -> Result<(), StoreFailure>,
    ) {
        if let Err(error) = self.persist(change) {
            tracing::error!(vhost = %self.name, %error, "could not update stored definitions");
        }
    }

    fn record(source: &Exchange, binding: &Binding) -> Option<BindingRecord> {
        source.is_durable_binding(binding).then(|| BindingRecord {
            source: source.name.clone(),
            destination: binding.target.name().to_owned(),
            destination_is_exchange: matches!(binding.target, BindingTarget::Exchange(_)),
            routing_key: binding.routing_key.clone(),
            arguments: binding.arguments.clone(),
        })
    }

    /// Adds a binding, recording it when it is durable; undone if the store fails.
    fn add_binding(&self, source: &Arc<Exchange>, binding: Binding) -> CoreResult<()> {
        let record = Self::record(source, &binding);
        if !source.bind(binding.clone())? {
            return Ok(());
        }
        if let Some(record) = record
            && let Err(error) = self.persist(|store| store.save_binding(&self.name, &record))
        {
            source.unbind(&binding);
            return Err(error);
        }
        Ok(())
    }

    /// Removes a binding (its record first: a store that cannot write fails the unbind with
    /// nothing changed); auto-deletes the source if that was its last.
    fn remove_binding(&self, source: &Arc<Exchange>, binding: &Binding) -> CoreResult<()> {
        if let Some(record) = Self::record(source, binding) {
            self.persist(|store| store.delete_binding(&self.name, &record))?;
        }
        if source.unbind(binding) {
            self.maybe_auto_delete(source);
        }
        Ok(())
    }

    /// Removes a binding's record, if it had one.
    fn forget_binding(&self, source: &Exchange, binding: &Binding) {
        if let Some(record) = Self::record(source, binding) {
            self.persist_quietly(|store| store.delete_binding(&self.name, &record));
        }
    }

    fn maybe_auto_delete(&self, exchange: &Arc<Exchange>) {
        if exchange.spec.auto_delete && exchange.binding_count() == 0 {
            if exchange.spec.durable {
                self.persist_quietly(|store| store.delete_exchange(&self.name, &exchange.name));
            }
            let removed = self
                .exchanges
                .remove_if(&exchange.name, |_, current| Arc::ptr_eq(current, exchange));
            self.unbind_everywhere(&BindingTarget::Exchange(exchange.clone()));
            if removed.is_some() {
                exchange.handler().on_event(ExchangeEvent::Deleted);
            }
        }
    }

    fn bindable_source(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        if name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange(name)
    }

    /// Binds queue `queue` to exchange `exchange`.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        owner: ConnectionId,
    ) -> CoreResult<()> {
        let handle = self.queue_for(queue, owner)?;
        let source = self.bindable_source(exchange)?;
        self.add_binding(
            &source,
            Binding {
                routing_key: routing_key.to_owned(),
                arguments,
                target: BindingTarget::Queue(handle),
            },
        )
    }

    /// Removes a queue binding. Removing a binding that does not exist is not an error.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        owner: ConnectionId,
    ) -> CoreResult<()> {
        let handle = self.queue_for(queue, owner)?;
        let source = self.bindable_source(exchange)?;
        self.remove_binding(
            &source,
            &Binding {
                routing_key: routing_key.to_owned(),
                arguments,
                target: BindingTarget::Queue(handle),
            },
        )
    }

    /// Binds exchange `destination` to exchange `source`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> CoreResult<()> {
        let target = self.bindable_source(destination)?;
        let source = self.bindable_source(source)?;
        self.add_binding(
            &source,
            Binding {
                routing_key: routing_key.to_owned(),
                arguments,
                target: BindingTarget::Exchange(target),
            },
        )
    }

    /// Removes an exchange-to-exchange binding.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> CoreResult<()> {
        let target = self.bindable_source(destination)?;
        let source = self.bindable_source(source)?;
        self.remove_binding(
            &source,
            &Binding {
                routing_key: routing_key.to_owned(),
                arguments,
                target: BindingTarget::Exchange(target),
            },
        )
    }

    /// Resolves the queues `message` goes to when published to `exchange`, following
    /// exchange-to-exchange bindings (each exchange once) and delivering to each queue once.
    /// An exchange whose bindings take the message nowhere hands it to its alternate exchange
    /// (`alternate-exchange` argument), as in RabbitMQ: each exchange reached uses its own.
    /// An exchange that holds the message ([`Routing::Hold`]) adds its handler to `holders`.
    pub fn route(
        &self,
        exchange: &Exchange,
        message: &Message,
        queues: &mut Vec<QueueHandle>,
        holders: &mut Vec<Arc<dyn ExchangeHandler>>,
    ) {
        if exchange.name.is_empty() {
            if let Some(queue) = self.queues.get(message.routing_key.as_str()) {
                queues.push(queue.value().clone());
            }
            return;
        }
        let mut targets = Vec::new();
        let mut visited: Vec<*const Exchange> = vec![exchange as *const Exchange];
        let mut seen = SeenQueues::default();
        self.route_one(exchange, message, &mut targets, holders);
        while let Some(target) = targets.pop() {
            match target {
                BindingTarget::Queue(queue) => {
                    if seen.is_new(queues, &queue) {
                        queues.push(queue);
                    }
                }
                BindingTarget::Exchange(next) => {
                    let ptr = Arc::as_ptr(&next);
                    if !visited.contains(&ptr) {
                        visited.push(ptr);
                        self.route_one(&next, message, &mut targets, holders);
                    }
                }
            }
        }
    }

    /// One exchange's targets for `message`; its alternate exchange when it has none.
    fn route_one(
        &self,
        exchange: &Exchange,
        message: &Message,
        targets: &mut Vec<BindingTarget>,
        holders: &mut Vec<Arc<dyn ExchangeHandler>>,
    ) {
        let before = targets.len();
        if exchange.route(message, targets) == Routing::Hold {
            targets.truncate(before);
            holders.push(exchange.handler().clone());
            return;
        }
        if targets.len() > before {
            return;
        }
        if let Some(name) = alternate_exchange(exchange) {
            match self.exchange(name) {
                Ok(alternate) => targets.push(BindingTarget::Exchange(alternate)),
                Err(_) => {
                    tracing::debug!(exchange = %exchange.name, alternate = name, "alternate exchange missing")
                }
            }
        }
    }

    /// Recreates the durable exchanges, queues and bindings a store kept. Runs at start-up,
    /// before any client connects; records that no longer make sense are logged and skipped.
    pub fn restore(&self, definitions: VhostDefinitions) {
        let Some(vhost) = self.me.upgrade() else {
            return;
        };
        let mut recovered = Vec::new();
        for spec in definitions.exchanges {
            let Some(kind) = self.registry.get(&spec.kind) else {
                tracing::warn!(exchange = %spec.name, kind = %spec.kind, "stored exchange has an unknown type; skipped");
                continue;
            };
            if self.exchanges.contains_key(&spec.name) {
                continue;
            }
            let name = spec.name.clone();
            match self.make_exchange(spec, kind.as_ref(), true) {
                Ok(exchange) => {
                    self.exchanges.insert(name, exchange.clone());
                    recovered.push(exchange);
                }
                Err(error) => {
                    tracing::warn!(exchange = %name, %error, "stored exchange cannot be recreated; skipped");
                }
            }
        }
        for spec in definitions.queues {
            self.queues.entry(spec.name.clone()).or_insert_with(|| {
                let recovered = self.recovered_messages(&spec);
                self.spawn_queue(spec, None, &vhost, recovered)
            });
        }
        // Grouped by source so that each exchange builds its router once, not once per binding.
        let mut by_source: HashMap<String, (Arc<Exchange>, Vec<Binding>)> = HashMap::new();
        for record in definitions.bindings {
            let (Some(source), Some(target)) = (
                self.exchanges
                    .get(&record.source)
                    .map(|e| e.value().clone()),
                if record.destination_is_exchange {
                    self.exchanges
                        .get(&record.destination)
                        .map(|e| BindingTarget::Exchange(e.value().clone()))
                } else {
                    self.queue(&record.destination).map(BindingTarget::Queue)
                },
            ) else {
                tracing::warn!(
                    ?record,
                    "stored binding refers to a missing resource; skipped"
                );
                continue;
            };
            by_source
                .entry(record.source)
                .or_insert_with(|| (source, Vec::new()))
                .1
                .push(Binding {
                    routing_key: record.routing_key,
                    arguments: record.arguments,
                    target,
                });
        }
        for (source, bindings) in by_source.into_values() {
            for (binding, error) in source.bind_all(bindings) {
                tracing::warn!(exchange = %source.name, target = ?binding.target, %error, "stored binding is invalid; skipped");
            }
        }
        // Told once everything is back, so what a handler publishes at once (a delayed
        // message due while the broker was down) finds its bindings.
        for exchange in recovered {
            exchange.handler().on_event(ExchangeEvent::Recovered);
        }
    }

    /// Deletes the exclusive queues of a connection that has closed.
    pub async fn connection_closed(&self, owner: ConnectionId) {
        let owned: Vec<QueueHandle> = self
            .queues
            .iter()
            .filter(|q| q.value().owner() == Some(owner))
            .map(|q| q.value().clone())
            .collect();
        for handle in owned {
            let _ = handle.delete(false, false, false).await;
            self.forget_queue(&handle);
        }
    }
}

/// The queues a message is already routed to, so each gets it once. A short list is scanned;
/// past [`SeenQueues::SCAN`] queues (a `#` binding may reach thousands) a set takes over, so
/// routing stays linear in the number of targets.
#[derive(Default)]
struct SeenQueues {
    set: HashSet<BindingTarget>,
}

impl SeenQueues {
    const SCAN: usize = 16;

    /// Whether `queue` is not among `queues` (the routed list this tracks).
    fn is_new(&mut self, queues: &[QueueHandle], queue: &QueueHandle) -> bool {
        if queues.len() < Self::SCAN {
            return !queues.iter().any(|q| q.same(queue));
        }
        if self.set.is_empty() {
            self.set
                .extend(queues.iter().cloned().map(BindingTarget::Queue));
        }
        self.set.insert(BindingTarget::Queue(queue.clone()))
    }
}

/// The exchange's alternate exchange, named by its `alternate-exchange` argument.
fn alternate_exchange(exchange: &Exchange) -> Option<&str> {
    exchange
        .spec
        .arguments
        .get("alternate-exchange")
        .and_then(crate::field::FieldValue::as_str)
}

/// The type a queue declared with these arguments would have, when that type cannot be
/// server-named (quorum).
fn durable_only_type(arguments: &FieldTable) -> Option<&'static str> {
    (named_type(arguments) == Some("quorum")).then(|| QueueType::Quorum.module())
}

/// The queue type the arguments name (`x-queue-type`), if they name one.
fn named_type(arguments: &FieldTable) -> Option<&str> {
    arguments.get("x-queue-type").and_then(FieldValue::as_str)
}

/// A quorum queue is durable, neither exclusive nor auto-deleted: RabbitMQ's checks, in its
/// order.
fn check_quorum_properties(spec: &QueueSpec, vhost: &str) -> CoreResult<()> {
    let refused = if spec.auto_delete {
        "auto-delete"
    } else if spec.exclusive {
        "exclusive-owner"
    } else if !spec.durable {
        "non-durable"
    } else {
        return Ok(());
    };
    Err(CoreError::precondition(format!(
        "invalid property '{refused}' for queue '{}' in vhost '{vhost}'",
        spec.name
    )))
}

/// Queue arguments compared on redeclaration, as RabbitMQ compares them; others are free-form.
const COMPARED_QUEUE_ARGUMENTS: [&str; 12] = [
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-dead-letter-strategy",
];

/// Checks that a redeclaration matches the existing queue (RabbitMQ's 406 rule).
fn check_queue_equivalent(handle: &QueueHandle, spec: &QueueSpec, vhost: &str) -> CoreResult<()> {
    let current = handle.spec();
    let differs = |field: &str, received: String, current: String| {
        Err(CoreError::precondition(format!(
            "inequivalent arg '{field}' for queue '{}' in vhost '{vhost}': received {received} but current is {current}",
            handle.name()
        )))
    };
    if current.durable != spec.durable {
        return differs(
            "durable",
            format!("'{}'", spec.durable),
            format!("'{}'", current.durable),
        );
    }
    if current.exclusive != spec.exclusive {
        return differs(
            "exclusive",
            format!("'{}'", spec.exclusive),
            format!("'{}'", current.exclusive),
        );
    }
    if current.auto_delete != spec.auto_delete {
        return differs(
            "auto_delete",
            format!("'{}'", spec.auto_delete),
            format!("'{}'", current.auto_delete),
        );
    }
    // Like RabbitMQ, only the arguments the broker gives a meaning to must match.
    for key in COMPARED_QUEUE_ARGUMENTS {
        let (received, existing) = (spec.arguments.get(key), current.arguments.get(key));
        if !queue::arguments::equivalent(received, existing) {
            return differs(
                key,
                queue::arguments::describe(received),
                queue::arguments::describe(existing),
            );
        }
    }
    Ok(())
}

/// A server-generated queue name in RabbitMQ's style: `amq.gen-` and 22 URL-safe characters.
pub fn generate_queue_name() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
