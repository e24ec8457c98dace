//! Durable storage for Junction. Today: the definitions store, which keeps durable exchanges,
//! queues and bindings in one redb file (`definitions.redb` in the data directory), each change
//! committed atomically and durably; and the persistent message log ([`MessageLog`]), an
//! append-only segment log with checksummed records and group commit; and the overflow
//! ([`OverflowFiles`]), unsynced files where queues page out bodies the log does not hold; and
//! plugins' durable key-value state ([`PluginStateFile`], `plugin-state.redb`).
//!
//! Opening the same data directory from a second broker fails: redb locks its file, and
//! [`Definitions::open`] reports that as [`OpenError::InUse`].

mod definitions;
mod log;
mod overflow;
mod plugin_state;

pub use definitions::{Definitions, OpenError};
pub use log::{LogError, MessageLog, RecoveryReport};
pub use overflow::{OverflowError, OverflowFiles, QueueOverflow};
pub use plugin_state::PluginStateFile;
