//! The `x-delayed-message` exchange type, compatible with RabbitMQ's
//! `rabbitmq_delayed_message_exchange` plugin, but durable.
//!
//! An exchange of this type routes as the type named by its `x-delayed-type` argument
//! (`direct`, `topic`, any registered type). A message published with an `x-delay` header of
//! a positive number of milliseconds (an integer, or a string or float that converts to one,
//! at most 4,294,967,295) is held: it is stored in the exchange's durable state and published
//! through the exchange once it is due, with `x-delay` negated (as RabbitMQ does, so it is
//! not delayed again). Any other message routes at once.
//!
//! Where RabbitMQ keeps delayed messages in a node-local table and confirms them before they
//! are safe, Junction stores each held message before its publisher's confirm, so a
//! persistent delayed message survives a restart and a SIGKILL; it keeps only a 24-byte entry
//! per pending message in memory once it is stored ([`schedule`]).

mod schedule;

use std::sync::Arc;

use junction_core::persistence::NotStored;
use junction_core::{
    Binding, BindingTarget, CoreError, CoreResult, ExchangeEvent, ExchangeHandler, ExchangeSpec,
    ExchangeType, ExchangeTypeRegistry, FieldValue, HeldMessage, Message, PluginContext, Router,
    Routing,
};

use schedule::Schedule;

/// The type name clients declare.
pub const TYPE_NAME: &str = "x-delayed-message";

/// The argument naming the type the exchange routes as.
pub const DELAYED_TYPE: &str = "x-delayed-type";

/// The header giving a message's delay in milliseconds.
pub const DELAY_HEADER: &str = "x-delay";

/// The longest delay honoured, as in RabbitMQ (Erlang's timer limit); a longer one routes at
/// once.
pub const MAX_DELAY_MS: i64 = 4_294_967_295;

/// The `x-delayed-message` exchange type.
pub struct DelayedMessageExchange;

/// The delay `message` asks for, when it asks for a positive one within [`MAX_DELAY_MS`].
pub fn delay_of(message: &Message) -> Option<u64> {
    let value = message.properties.headers.as_ref()?.get(DELAY_HEADER)?;
    let delay = match value {
        FieldValue::String(_) => value.as_str()?.trim().parse::<i64>().ok()?,
        FieldValue::F32(v) => v.trunc() as i64,
        FieldValue::F64(v) => v.trunc() as i64,
        FieldValue::Timestamp(_) => return None,
        other => other.as_i64()?,
    };
    (1..=MAX_DELAY_MS).contains(&delay).then_some(delay as u64)
}

/// `message` as it is released: `x-delay` negated, so it is not delayed again.
fn released(mut message: Message, delay: u64) -> Message {
    if let Some(headers) = message.properties.headers.as_mut() {
        headers.insert(DELAY_HEADER, FieldValue::I64(-(delay as i64)));
    }
    message
}

fn delayed_type(spec: &ExchangeSpec) -> CoreResult<&str> {
    match spec
        .arguments
        .get(DELAYED_TYPE)
        .and_then(FieldValue::as_str)
    {
        Some(TYPE_NAME) => Err(CoreError::precondition(format!(
            "Invalid argument, '{TYPE_NAME}' can't be used for '{DELAYED_TYPE}'"
        ))),
        Some(kind) => Ok(kind),
        None => Err(CoreError::precondition(format!(
            "Invalid argument, '{DELAYED_TYPE}' must be an existing exchange type"
        ))),
    }
}

/// Routes as the inner type's router, except that a delayed message is held.
struct DelayRouter {
    inner: Box<dyn Router>,
}

impl Router for DelayRouter {
    fn route(&self, message: &Message, out: &mut Vec<BindingTarget>) -> Routing {
        if delay_of(message).is_some() {
            return Routing::Hold;
        }
        self.inner.route(message, out)
    }

    fn with_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let inner = self.inner.with_binding(binding)?;
        Some(Box::new(DelayRouter { inner }))
    }

    fn without_binding(&self, binding: &Binding) -> Option<Box<dyn Router>> {
        let inner = self.inner.without_binding(binding)?;
        Some(Box::new(DelayRouter { inner }))
    }
}

/// The handler of one delayed-message exchange: the inner type's handler for routing, and the
/// schedule of held messages.
struct Delayed {
    inner: Arc<dyn ExchangeHandler>,
    schedule: Arc<Schedule>,
}

impl ExchangeHandler for Delayed {
    fn validate_binding(
        &self,
        routing_key: &str,
        arguments: &junction_core::FieldTable,
    ) -> CoreResult<()> {
        self.inner.validate_binding(routing_key, arguments)
    }

    fn compile(&self, bindings: &[Binding]) -> Box<dyn Router> {
        Box::new(DelayRouter {
            inner: self.inner.compile(bindings),
        })
    }

    fn on_event(&self, event: ExchangeEvent<'_>) {
        match event {
            ExchangeEvent::Created => self.schedule.start(false),
            ExchangeEvent::Recovered => self.schedule.start(true),
            ExchangeEvent::Deleted => self.schedule.stop(),
            _ => {}
        }
        self.inner.on_event(event);
    }

    fn hold(&self, held: HeldMessage) -> Result<(), NotStored> {
        self.schedule.hold(held)
    }
}

impl ExchangeType for DelayedMessageExchange {
    fn name(&self) -> &str {
        TYPE_NAME
    }

    fn validate(&self, spec: &ExchangeSpec) -> CoreResult<()> {
        delayed_type(spec).map(|_| ())
    }

    fn create(
        &self,
        spec: &ExchangeSpec,
        context: PluginContext,
    ) -> CoreResult<Arc<dyn ExchangeHandler>> {
        let kind = delayed_type(spec)?;
        let inner_type = context.exchange_type(kind).ok_or_else(|| {
            CoreError::precondition(format!(
                "Invalid argument, '{DELAYED_TYPE}' must be an existing exchange type"
            ))
        })?;
        let mut inner_spec = spec.clone();
        inner_spec.kind = kind.to_owned();
        inner_type.validate(&inner_spec)?;
        let inner = inner_type.create(&inner_spec, context.clone())?;
        if !context.is_recovery() {
            // A new exchange: whatever an earlier one of this name left is not its own. Cleared
            // here, before the exchange can be published to, so no hold is ordered before it.
            context.state().clear(None);
        }
        Ok(Arc::new(Delayed {
            inner,
            schedule: Schedule::new(context),
        }))
    }
}

/// Registers `x-delayed-message` with a broker's exchange types.
pub fn register(registry: &ExchangeTypeRegistry) {
    registry.register(Arc::new(DelayedMessageExchange));
}

#[cfg(test)]
mod tests;
