//! Junction's AMQP 0-9-1 adapter.
//!
//! `amq-protocol` (generated from the AMQP specification, maintained with lapin) parses and
//! generates method and content-header payloads; [`frame`] is our own frame layer, which owns
//! frame boundaries, `frame_max`, heartbeats and zero-copy bodies. The [`connection`] and
//! [`channel`] state machines do no I/O; one module per method class ([`exchange`], [`queue`],
//! [`basic`], [`confirm`], [`tx`]) turns decoded methods into core calls and core results into
//! replies; [`io`] drives a connection over a socket.

pub mod basic;
pub mod channel;
pub mod confirm;
pub mod connection;
pub mod direct_reply;
pub mod error;
pub mod exchange;
pub mod frame;
pub mod io;
pub mod nesting;
pub mod properties;
pub mod queue;
pub mod session;
pub mod settings;
pub mod tx;

pub use io::serve;
pub use settings::Settings;
