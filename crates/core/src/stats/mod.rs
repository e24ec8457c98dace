//! What the broker counts about itself, for the management API and metrics: queue and
//! exchange counters ([`counters`]) and the connections of every protocol with each
//! protocol's message counts ([`connections`]). Counters are cheap on the hot path: a queue's
//! task stores its tally once per batch, a connection's traffic is stored by its own task
//! after each wake-up, message counts go to per-thread stripes, and readers sum them up.

pub mod connections;
pub mod counters;

pub use connections::{
    Closer, ConnectionCounters, ConnectionDetails, ConnectionInfo, ConnectionSnapshot,
    ConnectionSource, ConnectionState, Connections, Family, MessageCounters, MessageTotals,
    Registration, TlsSession, Traffic, connection_name, id_of_name, now_ms,
};
pub use counters::{ExchangeCounters, QueueCounters, QueueTally};
