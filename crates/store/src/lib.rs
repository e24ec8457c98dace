//! Durable storage for Junction. Today: the definitions store, which keeps durable exchanges,
//! queues and bindings in one redb file (`definitions.redb` in the data directory), each change
//! committed atomically and durably. The persistent message log comes next.
//!
//! Opening the same data directory from a second broker fails: redb locks its file, and
//! [`Definitions::open`] reports that as [`OpenError::InUse`].

mod definitions;

pub use definitions::{Definitions, OpenError};
