//! Junction's STOMP 1.0/1.1/1.2 adapter.
//!
//! STOMP is mapped onto the core as RabbitMQ's STOMP plugin maps it (see [`destination`]):
//! `/queue/N` is queue N through the default exchange, `/topic/K` is `amq.topic` with key K,
//! `/exchange/X/K` is exchange X, `/amq/queue/N` an existing queue, `/temp-queue/N` a
//! per-connection reply queue. Headers map to message properties and the headers table both
//! ways ([`headers`]), so AMQP and MQTT clients see what STOMP clients send.
//!
//! - [`codec`]: the wire format; `connection`: the per-connection state machine (no I/O);
//!   `io`: the driver that runs it over a byte stream (TCP or a WebSocket turned into one),
//!   with heart-beats.

pub mod codec;
mod connection;
pub mod destination;
pub mod headers;
mod io;
pub mod queue_headers;
mod settings;

pub use io::serve;
pub use settings::Settings;
