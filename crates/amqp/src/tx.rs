//! The tx class: publishes and acknowledgements made in a transaction take effect on commit and
//! are dropped on rollback.

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::tx::{AMQPMethod, CommitOk, RollbackOk, SelectOk};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use junction_core::OnDurable;
use junction_core::persistence::Durability;

use crate::basic::{apply_settlements, publish_message};
use crate::channel::{Channel, Transaction};
use crate::error::{AmqpError, AmqpResult, code};
use crate::session::Session;

/// Handles one tx-class method.
pub async fn handle(
    session: &mut Session,
    channel: &mut Channel,
    method: AMQPMethod,
) -> AmqpResult<()> {
    let number = channel.id.number;
    match method {
        AMQPMethod::Select(_) => {
            if channel.confirm.is_some() {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    "cannot switch from confirm to tx mode",
                ));
            }
            if channel.tx.is_none() {
                channel.tx = Some(Transaction::default());
            }
            session.send(number, AMQPClass::Tx(AMQPMethod::SelectOk(SelectOk {})));
        }
        AMQPMethod::Commit(_) => {
            let tx = channel
                .tx
                .replace(Transaction::default())
                .ok_or_else(not_transactional)?;
            let unwritten = Unwritten::default();
            for (message, mandatory) in tx.publishes {
                // The exchange is looked up at commit: it may have gone since the publish.
                let exchange = session.vhost()?.exchange(&message.exchange)?;
                publish_message(
                    session,
                    channel,
                    &exchange,
                    message,
                    mandatory,
                    Some(&unwritten),
                )
                .await?;
            }
            for (_, delivery, requeue) in tx.settlements {
                apply_settlements(channel, vec![delivery], requeue).await;
            }
            if unwritten.written()
                && let Some(store) = session.broker.message_store()
            {
                // commit-ok promises the transaction's persistent messages are on disk.
                let (done, on_disk) = tokio::sync::oneshot::channel();
                store.sync(Box::new(move |durability| {
                    let _ = done.send(durability);
                }));
                // Completions run in request order: by the time the sync reports, every
                // publish of the transaction has reported too, and a failed one counts even
                // if the store could write again by the time of the sync.
                if on_disk.await != Ok(Durability::OnDisk) || unwritten.any() {
                    return Err(AmqpError::connection(
                        code::INTERNAL_ERROR,
                        "the message store could not write the transaction's persistent messages",
                    ));
                }
            }
            session.send(number, AMQPClass::Tx(AMQPMethod::CommitOk(CommitOk {})));
        }
        AMQPMethod::Rollback(_) => {
            let tx = channel
                .tx
                .replace(Transaction::default())
                .ok_or_else(not_transactional)?;
            // Settlements rolled back leave their deliveries unacknowledged, as before.
            for (tag, delivery, _) in tx.settlements {
                channel.unacked.insert(tag, delivery);
            }
            session.send(number, AMQPClass::Tx(AMQPMethod::RollbackOk(RollbackOk {})));
        }
        other => return Err(crate::connection::server_only(&AMQPClass::Tx(other))),
    }
    Ok(())
}

fn not_transactional() -> AmqpError {
    AmqpError::channel(code::PRECONDITION_FAILED, "channel is not transactional")
}

/// Whether the persistent messages of a committing transaction reached the disk: the pipeline
/// makes a completion for each message it writes, and each reports here, so commit-ok waits
/// for the disk only when something was written, and is not sent for a transaction whose
/// messages were not.
#[derive(Debug, Clone, Default)]
pub struct Unwritten {
    written: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Unwritten {
    /// A completion for one persistent message of the transaction, being written.
    pub fn completion(&self) -> OnDurable {
        self.written.store(true, Ordering::Release);
        let failed = self.failed.clone();
        Box::new(move |durability| {
            if durability == Durability::Failed {
                failed.store(true, Ordering::Release);
            }
        })
    }

    /// Whether any message of the transaction was written to the store.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }

    /// Whether any message's write failed.
    pub fn any(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}
