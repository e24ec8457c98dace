//! Junction's MQTT 3.1.1 adapter.
//!
//! MQTT is mapped onto the core as RabbitMQ maps it: a topic `a/b/c` is the routing key `a.b.c`
//! on a topic exchange (`amq.topic` unless configured otherwise), each session's subscriptions
//! are one queue bound to that exchange (durable for `clean_session = 0`, so offline QoS 1 and 2
//! messages wait for the device), and whatever else is bound there (AMQP queues, STOMP
//! subscriptions) sees what devices publish.
//!
//! - [`codec`]: the wire format; [`topic`]: topic names, filters and their mapping.
//! - [`retained`]: retained messages per vhost, kept in the adapter state store.
//! - [`sessions`]: which client id is connected where (for takeover) and the state a persistent
//!   session keeps between connections.
//! - `connection`: the per-connection state machine (no I/O); `io`: the driver that runs it
//!   over a byte stream (TCP or a WebSocket turned into one).

pub mod codec;
mod connection;
mod io;
pub mod retained;
pub mod sessions;
mod settings;
mod signal;
pub mod topic;

pub use io::serve;
pub use settings::{Mqtt, SessionSummary, Settings};
