//! BEGIN, COMMIT and ABORT: SENDs, ACKs and NACKs that name a transaction are held until
//! COMMIT, which applies them in order, or ABORT, which drops them.

use super::ack::outside_transaction;
use super::{Connection, Handled, Refusal};
use crate::codec::Frame;
use crate::destination::Destination;

impl Connection {
    fn transaction_name(frame: &Frame) -> Result<String, Refusal> {
        frame
            .get("transaction")
            .map(str::to_owned)
            .ok_or_else(|| Refusal::missing_transaction(&frame.command))
    }

    pub(super) fn on_begin(&mut self, frame: &Frame) -> Handled {
        let name = Self::transaction_name(frame)?;
        let session = self.session_mut()?;
        if session.transactions.contains_key(&name) {
            return Err(Refusal::new(
                "Invalid transaction",
                format!("transaction '{name}' is already active"),
            ));
        }
        session.transactions.insert(name, Vec::new());
        Ok(())
    }

    /// Applies the transaction. Its persistent SENDs take their places in the receipts'
    /// ledger, so the COMMIT's receipt, owed after them, waits until they are on disk. A SEND
    /// that asked for a receipt gets it now, right after it is applied.
    pub(super) async fn on_commit(&mut self, frame: &Frame) -> Handled {
        let name = Self::transaction_name(frame)?;
        let Some(frames) = self.session_mut()?.transactions.remove(&name) else {
            return Err(Refusal::bad_transaction(&name));
        };
        for held in frames {
            let held = outside_transaction(held);
            match held.command.as_ref() {
                "SEND" => {
                    let destination = held.get("destination").unwrap_or_default();
                    let destination = Destination::parse(destination)?;
                    let receipt = held.get("receipt").map(str::to_owned);
                    self.publish(&destination, held).await?;
                    if let Some(receipt) = receipt {
                        self.owe_receipt(receipt);
                    }
                }
                "ACK" => self.on_ack(&held, false).await?,
                "NACK" => self.on_ack(&held, true).await?,
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn on_abort(&mut self, frame: &Frame) -> Handled {
        let name = Self::transaction_name(frame)?;
        if self.session_mut()?.transactions.remove(&name).is_none() {
            return Err(Refusal::bad_transaction(&name));
        }
        Ok(())
    }
}
