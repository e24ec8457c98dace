//! The queue class: declare, bind, unbind, purge and delete, as core calls.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::queue::{AMQPMethod, BindOk, DeclareOk, DeleteOk, PurgeOk, UnbindOk};
use junction_core::vhost::generate_queue_name;
use junction_core::{Permission, QueueSpec, ResourceKind};

use crate::channel::Channel;
use crate::direct_reply;
use crate::error::AmqpResult;
use crate::properties::table_from_wire;
use crate::session::Session;

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
            if !m.passive {
                session.authorize(ResourceKind::Queue, &name, Permission::Configure)?;
            }
            let spec = QueueSpec {
                name,
                durable: m.durable,
                exclusive: m.exclusive,
                auto_delete: m.auto_delete,
                arguments: table_from_wire(&m.arguments),
            };
            let declared = vhost
                .declare_queue(spec, m.passive, server_named, session.id)
                .await?;
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
            session.authorize(ResourceKind::Queue, m.queue.as_str(), Permission::Write)?;
            session.authorize(
                ResourceKind::Exchange,
                m.exchange.as_str(),
                Permission::Read,
            )?;
            vhost.bind_queue(
                m.queue.as_str(),
                m.exchange.as_str(),
                m.routing_key.as_str(),
                table_from_wire(&m.arguments),
                session.id,
            )?;
            if !m.nowait {
                session.send(number, AMQPClass::Queue(AMQPMethod::BindOk(BindOk {})));
            }
        }
        AMQPMethod::Unbind(m) => {
            session.authorize(ResourceKind::Queue, m.queue.as_str(), Permission::Write)?;
            session.authorize(
                ResourceKind::Exchange,
                m.exchange.as_str(),
                Permission::Read,
            )?;
            vhost.unbind_queue(
                m.queue.as_str(),
                m.exchange.as_str(),
                m.routing_key.as_str(),
                table_from_wire(&m.arguments),
                session.id,
            )?;
            session.send(number, AMQPClass::Queue(AMQPMethod::UnbindOk(UnbindOk {})));
        }
        AMQPMethod::Purge(m) => {
            session.authorize(ResourceKind::Queue, m.queue.as_str(), Permission::Read)?;
            let queue = vhost.queue_for(m.queue.as_str(), session.id)?;
            let message_count = queue.purge().await?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Queue(AMQPMethod::PurgeOk(PurgeOk { message_count })),
                );
            }
        }
        AMQPMethod::Delete(m) => {
            session.authorize(ResourceKind::Queue, m.queue.as_str(), Permission::Configure)?;
            let message_count = vhost
                .delete_queue(m.queue.as_str(), m.if_unused, m.if_empty, session.id)
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
