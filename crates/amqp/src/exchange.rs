//! The exchange class: declare, delete, bind and unbind (exchange-to-exchange), as core calls,
//! each after the permission checks RabbitMQ's channel makes for it.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::exchange::{AMQPMethod, BindOk, DeclareOk, DeleteOk, UnbindOk};
use junction_core::{ExchangeSpec, FieldTable, FieldValue, Permission, ResourceKind};

use crate::channel::Channel;
use crate::error::AmqpResult;
use crate::properties::table_from_wire;
use crate::session::Session;

/// Handles one exchange-class method.
pub async fn handle(
    session: &mut Session,
    channel: &mut Channel,
    method: AMQPMethod,
) -> AmqpResult<()> {
    let number = channel.id.number;
    let vhost = session.vhost()?;
    match method {
        AMQPMethod::Declare(m) => {
            let name = m.exchange.as_str();
            let arguments = table_from_wire(&m.arguments);
            if m.passive {
                // The default exchange is refused by the core (403), as RabbitMQ does first.
                if !name.is_empty() {
                    crate::queue::authorize_any(session, ResourceKind::Exchange, name).await?;
                }
            } else {
                session
                    .authorize(ResourceKind::Exchange, name, Permission::Configure)
                    .await?;
                if vhost.exchange(name).is_err() {
                    authorize_alternate(session, name, &arguments).await?;
                }
            }
            let mut spec = ExchangeSpec::new(name, m.kind.as_str());
            spec.durable = m.durable;
            spec.auto_delete = m.auto_delete;
            spec.internal = m.internal;
            spec.arguments = arguments;
            vhost.declare_exchange(spec, m.passive)?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Exchange(AMQPMethod::DeclareOk(DeclareOk {})),
                );
            }
        }
        AMQPMethod::Delete(m) => {
            let name = m.exchange.as_str();
            session
                .authorize(ResourceKind::Exchange, name, Permission::Configure)
                .await?;
            vhost.delete_exchange(name, m.if_unused)?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Exchange(AMQPMethod::DeleteOk(DeleteOk {})),
                );
            }
        }
        AMQPMethod::Bind(m) => {
            authorize_binding(
                session,
                m.destination.as_str(),
                m.source.as_str(),
                m.routing_key.as_str(),
            )
            .await?;
            vhost.bind_exchange(
                m.destination.as_str(),
                m.source.as_str(),
                m.routing_key.as_str(),
                table_from_wire(&m.arguments),
            )?;
            if !m.nowait {
                session.send(number, AMQPClass::Exchange(AMQPMethod::BindOk(BindOk {})));
            }
        }
        AMQPMethod::Unbind(m) => {
            authorize_binding(
                session,
                m.destination.as_str(),
                m.source.as_str(),
                m.routing_key.as_str(),
            )
            .await?;
            vhost.unbind_exchange(
                m.destination.as_str(),
                m.source.as_str(),
                m.routing_key.as_str(),
                table_from_wire(&m.arguments),
            )?;
            if !m.nowait {
                session.send(
                    number,
                    AMQPClass::Exchange(AMQPMethod::UnbindOk(UnbindOk {})),
                );
            }
        }
        other => return Err(crate::connection::server_only(&AMQPClass::Exchange(other))),
    }
    Ok(())
}

/// An exchange-to-exchange binding needs write on the destination and read on the source
/// (and on its routing key, when the source is a topic exchange).
async fn authorize_binding(
    session: &mut Session,
    destination: &str,
    source: &str,
    routing_key: &str,
) -> AmqpResult<()> {
    session
        .authorize(ResourceKind::Exchange, destination, Permission::Write)
        .await?;
    session
        .authorize(ResourceKind::Exchange, source, Permission::Read)
        .await?;
    session.authorize_binding_key(source, routing_key).await
}

/// A new exchange with an `alternate-exchange` passes what it cannot route to that exchange on
/// the publisher's behalf, so RabbitMQ asks read on the exchange declared and write on the
/// alternate at declaration.
async fn authorize_alternate(
    session: &mut Session,
    exchange: &str,
    arguments: &FieldTable,
) -> AmqpResult<()> {
    let Some(alternate) = arguments
        .get("alternate-exchange")
        .and_then(FieldValue::as_str)
    else {
        return Ok(());
    };
    session
        .authorize(ResourceKind::Exchange, exchange, Permission::Read)
        .await?;
    session
        .authorize(ResourceKind::Exchange, alternate, Permission::Write)
        .await
}
