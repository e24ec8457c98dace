//! The broker model of Junction, shared by every protocol adapter.
//!
//! This crate knows virtual hosts, exchanges, bindings, queues, consumers, deliveries,
//! acknowledgements, users and permissions. It knows nothing about sockets or wire formats:
//! AMQP, MQTT and STOMP adapters translate their frames into calls on [`Broker`] and
//! [`VirtualHost`], and turn [`ConsumerEvent`]s back into frames.
//!
//! Extension points are traits: [`ExchangeType`] (routing algorithms, registered in an
//! [`ExchangeTypeRegistry`]; see [`plugin`] for what they get from the broker) and
//! [`AuthBackend`] (authentication and authorisation, chained in an [`Authorizer`]). The
//! built-in exchange types and the internal user database are registered through the same
//! traits that plugins use.

pub mod auth;
pub mod broker;
pub mod definitions;
pub mod error;
pub mod events;
pub mod exchange;
pub mod field;
pub mod flow;
pub mod ledger;
pub mod limits;
pub mod message;
pub mod persistence;
pub mod plugin;
pub mod publish;
pub mod queue;
pub mod stats;
pub mod vhost;

pub use auth::{
    AuthBackend, Authorizer, Decision, InternalUsers, LoginOutcome, LoginRequest, Permission,
    Principal, Protocol, ResourceKind, User,
};
pub use broker::{Broker, BrokerConfig};
pub use definitions::{
    AdapterStateStore, BindingRecord, DefinitionStore, StoreFailure, VhostDefinitions,
};
pub use error::CoreResult;
pub use error::{CoreError, ErrorKind};
pub use exchange::{
    Binding, BindingTarget, Exchange, ExchangeEvent, ExchangeHandler, ExchangeSpec, ExchangeType,
    ExchangeTypeRegistry, HeldMessage, Router, Routing,
};
pub use field::{FieldTable, FieldValue};
pub use flow::FlowHold;
pub use ledger::Ledger;
pub use message::{Message, Properties};
pub use persistence::{MessageStore, OnDurable, QueueKey, Recovered, Storage, StoredAt};
pub use plugin::{PluginContext, StateStore, StateTable};
pub use publish::{Publication, Published};
pub use queue::{
    ChannelCredit, ChannelId, ConnectionId, ConsumerEvent, ConsumerSink, ConsumerSpec,
    ConsumerSummary, DEFAULT_DELIVERY_BUDGET, Delivery, DeliveryBudget, DeliveryPermit, GetResult,
    QueueHandle, QueueSpec, QueueStats,
};
pub use vhost::VirtualHost;
