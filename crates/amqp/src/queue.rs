//! The queue class: declare, bind, unbind, purge and delete, as core calls, each after the
//! permission checks RabbitMQ's channel makes for it.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::queue::{AMQPMethod, BindOk, DeclareOk, DeleteOk, PurgeOk, UnbindOk};
use junction_core::vhost::generate_queue_name;
use junction_core::{FieldTable, FieldValue, Permission, QueueSpec, ResourceKind};

use crate::channel::Channel;
use crate::direct_reply;
use crate::error::AmqpResult;
use crate::properties::table_from_wire;
use crate::session::Session;
use amq_protocol::types::ShortString;

/// Handles one queue-class method.
pub async fn handle(
    session: &mut Session,
    channel: &mut Channel,
    method: AMQPMethod,
) -> AmqpResult<()> {
    let number = channel.id.number;
    let vhost = session.vhost()?;
    match method {
        AMQPMethod::Declare(m) if m.passive && m.queue.as_str() == direct_reply::PSEUDO_QUEUE => {
            // The direct reply-to pseudo-queue always exists (as in RabbitMQ).
            session.send(
                number,
                AMQPClass::Queue(AMQPMethod::DeclareOk(DeclareOk {
                    queue: m.queue,
                    message_count: 0,
                    consumer_count: 0,
                })),
            );
        }
        AMQPMethod::Declare(m) => {
            let mut name = m.queue.as_str().to_owned();
            let server_named = name.is_empty() && !m.passive;
            if server_named {
                name = generate_queue_name();
            }
            let arguments = table_from_wire(&m.arguments);
            if m.passive {
                authorize_any(session, ResourceKind::Queue, &name).await?;
            } else {
                session
                    .authorize(ResourceKind::Queue, &name, Permission::Configure)
                    .await?;
                if vhost.queue(&name).is_none() {
                    authorize_dead_lettering(session, &name, &arguments).await?;
                }
            }
            let spec = QueueSpec {
                name,
                durable: m.durable,
                exclusive: m.exclusive,
                auto_delete: m.auto_delete,
                arguments,
            };
            let declared = vhost
                .declare_queue(spec, m.passive, server_named, session.id)
                .await?;
            channel.last_queue = Some(declared.handle.name().to_owned());
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Queue(AMQPMethod::DeclareOk(DeclareOk {
                        queue: declared.handle.name().into(),
                        message_count: declared.stats.ready,
                        consumer_count: declared.stats.consumers,
                    })),
                );
            }
        }
        AMQPMethod::Bind(m) => {
            let binding =
                Binding::resolve(session, channel, &m.queue, &m.exchange, &m.routing_key).await?;
            vhost.bind_queue(
                &binding.queue,
                &binding.exchange,
                &binding.routing_key,
                table_from_wire(&m.arguments),
                session.id,
            )?;
            if !m.nowait {
                session.send(number, AMQPClass::Queue(AMQPMethod::BindOk(BindOk {})));
            }
        }
        AMQPMethod::Unbind(m) => {
            let binding =
                Binding::resolve(session, channel, &m.queue, &m.exchange, &m.routing_key).await?;
            vhost.unbind_queue(
                &binding.queue,
                &binding.exchange,
                &binding.routing_key,
                table_from_wire(&m.arguments),
                session.id,
            )?;
            session.send(number, AMQPClass::Queue(AMQPMethod::UnbindOk(UnbindOk {})));
        }
        AMQPMethod::Purge(m) => {
            let name = channel.queue_name(m.queue.as_str())?;
            session
                .authorize(ResourceKind::Queue, &name, Permission::Read)
                .await?;
            let queue = vhost.queue_for(&name, session.id)?;
            let message_count = queue.purge().await?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Queue(AMQPMethod::PurgeOk(PurgeOk { message_count })),
                );
            }
        }
        AMQPMethod::Delete(m) => {
            let name = channel.queue_name(m.queue.as_str())?;
            session
                .authorize(ResourceKind::Queue, &name, Permission::Configure)
                .await?;
            let message_count = vhost
                .delete_queue(&name, m.if_unused, m.if_empty, session.id)
                .await?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Queue(AMQPMethod::DeleteOk(DeleteOk { message_count })),
                );
            }
        }
        other => return Err(crate::connection::server_only(&AMQPClass::Queue(other))),
    }
    Ok(())
}

/// A passive declaration changes nothing but tells whether the resource exists (and a
/// queue's counts): as in RabbitMQ (4.2.6 on), any one permission on it is enough, and
/// without one it is refused, so names cannot be probed. Configure is asked last, so a
/// refusal reads as a regular declaration's.
pub(crate) async fn authorize_any(
    session: &mut Session,
    kind: ResourceKind,
    name: &str,
) -> AmqpResult<()> {
    for permission in [Permission::Read, Permission::Write] {
        if session.authorize(kind, name, permission).await.is_ok() {
            return Ok(());
        }
    }
    session.authorize(kind, name, Permission::Configure).await
}

/// A new queue with `x-dead-letter-exchange` sends messages to that exchange on the user's
/// behalf, so RabbitMQ asks read on the queue and write on the exchange at declaration
/// (a value that is not a string is refused by the argument checks).
async fn authorize_dead_lettering(
    session: &mut Session,
    queue: &str,
    arguments: &FieldTable,
) -> AmqpResult<()> {
    let Some(exchange) = arguments
        .get("x-dead-letter-exchange")
        .and_then(FieldValue::as_str)
    else {
        return Ok(());
    };
    session
        .authorize(ResourceKind::Queue, queue, Permission::Read)
        .await?;
    session
        .authorize(ResourceKind::Exchange, exchange, Permission::Write)
        .await
}

/// A queue binding's names after RabbitMQ's shortcuts, checked against permissions: write on
/// the queue, read on the exchange.
struct Binding {
    queue: String,
    exchange: String,
    routing_key: String,
}

impl Binding {
    async fn resolve(
        session: &mut Session,
        channel: &Channel,
        queue: &ShortString,
        exchange: &ShortString,
        routing_key: &ShortString,
    ) -> AmqpResult<Self> {
        let name = channel.queue_name(queue.as_str())?;
        // An empty queue name with an empty routing key binds with the queue's name as key.
        let routing_key = if queue.as_str().is_empty() && routing_key.as_str().is_empty() {
            name.clone()
        } else {
            routing_key.as_str().to_owned()
        };
        session
            .authorize(ResourceKind::Queue, &name, Permission::Write)
            .await?;
        session
            .authorize(ResourceKind::Exchange, exchange.as_str(), Permission::Read)
            .await?;
        session
            .authorize_binding_key(exchange.as_str(), &routing_key)
            .await?;
        Ok(Self {
            queue: name,
            exchange: exchange.as_str().to_owned(),
            routing_key,
        })
    }
}
