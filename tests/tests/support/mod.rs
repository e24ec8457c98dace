//! Helpers shared by end-to-end tests that speak a protocol by hand.

pub mod perf;
pub mod raw_amqp;
pub mod raw_mqtt;
