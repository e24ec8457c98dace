//! What the broker counts about itself, for the management API and metrics: queue and
//! exchange counters ([`counters`]) and the registry of logged-in connections
//! ([`connections`]). Counters are cheap on the hot path: a queue's task stores its tally once
//! per batch, a connection counts in atomics only it writes, and readers sum them up.

pub mod connections;
pub mod counters;

pub use connections::{
    Closer, ConnectionCounters, ConnectionDetails, ConnectionInfo, ConnectionState,
    ConnectionTotals, Connections, Registration,
};
pub use counters::{ExchangeCounters, QueueCounters, QueueTally};
