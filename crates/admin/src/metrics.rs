//! Prometheus metrics on their own listener (`--prometheus`, 15692 as RabbitMQ's
//! `rabbitmq_prometheus`): `/metrics` has the aggregated metrics under RabbitMQ's names and
//! labels, so existing Grafana dashboards work; `/metrics/per-object` adds one series per
//! queue (`vhost`, `queue` labels); `junction_*` metrics tell what only Junction has
//! (connections per protocol, parked MQTT connections, connections held by credit flow,
//! messages per fsync). Everything is read from the core's counters at scrape time
//! (prometheus-client collectors), so series of deleted queues disappear with them.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use junction_core::stats::ConnectionState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::Admin;
use crate::stats_json::node_totals;

type Labels = Vec<(String, String)>;

/// A label value escaped as the exposition format requires (`\`, `"` and line feeds): the
/// encoder writes values as they are, and a queue named by a client must not end a label or
/// start a series of its own.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family: name (counters without `_total`, which the encoder adds), help, type
/// and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: MetricType::Gauge,
            samples: vec![(Vec::new(), value)],
        }
    }

    fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: MetricType::Counter,
            samples: vec![(Vec::new(), value as f64)],
        }
    }

    fn labelled(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Labels, value: f64) {
        let labels = labels
            .into_iter()
            .map(|(key, value)| (key, escape_label(&value)))
            .collect();
        self.samples.push((labels, value));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        if let [(labels, value)] = &self.samples[..]
            && labels.is_empty()
        {
            return self.encode_value(*value, metric);
        }
        for (labels, value) in &self.samples {
            self.encode_value(*value, metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn encode_value(
        &self,
        value: f64,
        sample: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        match self.kind {
            MetricType::Counter => ConstCounter::new(value as u64).encode(sample),
            _ => ConstGauge::new(value).encode(sample),
        }
    }
}

/// Reads the broker's counters at each scrape.
struct BrokerCollector {
    admin: Arc<Admin>,
    per_object: bool,
}

impl std::fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCollector")
            .field("per_object", &self.per_object)
            .finish()
    }
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

impl BrokerCollector {
    fn families(&self) -> Vec<Family> {
        let admin = &self.admin;
        let broker = &admin.broker;
        let mut out = Vec::new();
        let registry = broker.connections();
        let states = registry.count_states();
        let (_, queues) = node_totals(admin);
        let vhosts = broker.vhosts();
        let queue_count: usize = vhosts.iter().map(|v| v.queues().len()).sum();
        let resources = admin.resources();
        let alarms = broker.alarms();
        let raised =
            |resource: &str| f64::from(u8::from(alarms.iter().any(|(r, _)| *r == resource)));

        out.push(Family::gauge(
            "rabbitmq_connections",
            "Connections currently open",
            registry.len() as f64,
        ));
        out.push(Family::counter(
            "rabbitmq_connections_opened",
            "Total number of connections opened",
            registry.opened_total(),
        ));
        out.push(Family::counter(
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            registry.closed_total(),
        ));
        let channels: usize = registry
            .snapshots_of(junction_core::stats::Family::Amqp)
            .iter()
            .map(|c| c.channels.len())
            .sum();
        out.push(Family::gauge(
            "rabbitmq_channels",
            "Channels currently open",
            channels as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_queues",
            "Queues available",
            queue_count as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_consumers",
            "Consumers currently connected",
            queues.consumers as f64,
        ));
        // /metrics/per-object has these per queue instead.
        if !self.per_object {
            out.push(Family::gauge(
                "rabbitmq_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                queues.ready as f64,
            ));
            out.push(Family::gauge(
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                queues.unacked as f64,
            ));
            out.push(Family::gauge(
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages",
                (queues.ready + queues.unacked) as f64,
            ));
            out.push(Family::gauge(
                "rabbitmq_queue_messages_ready_bytes",
                "Size in bytes of ready messages",
                queues.ready_bytes as f64,
            ));
            out.push(Family::gauge(
                "rabbitmq_queue_consumers",
                "Consumers on a queue",
                queues.consumers as f64,
            ));
        }
        out.push(Family::gauge(
            "rabbitmq_queue_messages_paged_out",
            "Messages paged out to disk",
            queues.paged as f64,
        ));

        // Global counters per protocol, as RabbitMQ labels them.
        let mut received = Family::labelled(
            "rabbitmq_global_messages_received",
            "Total number of messages received from publishers",
            MetricType::Counter,
        );
        let mut confirmed = Family::labelled(
            "rabbitmq_global_messages_confirmed",
            "Total number of messages confirmed to publishers",
            MetricType::Counter,
        );
        let mut returned = Family::labelled(
            "rabbitmq_global_messages_unroutable_returned",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            MetricType::Counter,
        );
        let mut dropped = Family::labelled(
            "rabbitmq_global_messages_unroutable_dropped",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            MetricType::Counter,
        );
        let mut routed = Family::labelled(
            "rabbitmq_global_messages_routed",
            "Total number of messages routed to queues or streams",
            MetricType::Counter,
        );
        for family in junction_core::stats::Family::ALL {
            let totals = registry.messages(family).totals();
            let labels = vec![("protocol".to_owned(), family.label().to_owned())];
            received.add(labels.clone(), totals.published as f64);
            confirmed.add(labels.clone(), totals.confirmed as f64);
            returned.add(labels.clone(), totals.returned as f64);
            dropped.add(labels.clone(), totals.dropped as f64);
            routed.add(
                labels,
                totals
                    .published
                    .saturating_sub(totals.returned + totals.dropped) as f64,
            );
        }
        out.extend([received, confirmed, returned, dropped, routed]);
        out.push(Family::counter(
            "rabbitmq_global_messages_delivered",
            "Total number of messages delivered to consumers",
            queues.delivered() + queues.got(),
        ));
        out.push(Family::counter(
            "rabbitmq_global_messages_delivered_consume_manual_ack",
            "Total number of messages delivered to consumers using manual acknowledgement mode",
            queues.delivered_manual_ack,
        ));
        out.push(Family::counter(
            "rabbitmq_global_messages_delivered_consume_auto_ack",
            "Total number of messages delivered to consumers using automatic acknowledgement mode",
            queues.delivered_auto_ack,
        ));
        out.push(Family::counter("rabbitmq_global_messages_delivered_get_manual_ack", "Total number of messages delivered to consumers via basic.get using manual acknowledgement mode", queues.got_manual_ack));
        out.push(Family::counter("rabbitmq_global_messages_delivered_get_auto_ack", "Total number of messages delivered to consumers via basic.get using automatic acknowledgement mode", queues.got_auto_ack));
        out.push(Family::counter(
            "rabbitmq_global_messages_get_empty",
            "Total number of times basic.get operations fetched no message",
            queues.got_empty,
        ));
        out.push(Family::counter(
            "rabbitmq_global_messages_redelivered",
            "Total number of messages redelivered to consumers",
            queues.redelivered,
        ));
        out.push(Family::counter(
            "rabbitmq_global_messages_acknowledged",
            "Total number of messages acknowledged by consumers",
            queues.acked,
        ));

        out.push(Family::gauge(
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            resources.mem_used as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            resources.mem_limit as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            resources.disk_free as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            resources.disk_free_limit as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            resources.fd_used as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            resources.fd_total as f64,
        ));
        out.push(Family::gauge(
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            raised("memory"),
        ));
        out.push(Family::gauge(
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            raised("disk"),
        ));
        out.push(Family::gauge(
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime",
            admin.uptime_ms() as f64 / 1000.0,
        ));
        let mut identity = Family::labelled(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            MetricType::Gauge,
        );
        identity.add(
            vec![
                ("rabbitmq_node".to_owned(), admin.node_name.clone()),
                ("rabbitmq_cluster".to_owned(), admin.node_name.clone()),
            ],
            1.0,
        );
        out.push(identity);
        let mut build = Family::labelled(
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            MetricType::Gauge,
        );
        build.add(
            vec![
                (
                    "rabbitmq_version".to_owned(),
                    crate::node::RABBITMQ_API_VERSION.to_owned(),
                ),
                ("product_name".to_owned(), "Junction".to_owned()),
                (
                    "product_version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ],
            1.0,
        );
        out.push(build);

        // What only Junction has.
        let mut per_protocol = Family::labelled(
            "junction_connections",
            "Connections currently open, per protocol",
            MetricType::Gauge,
        );
        for (family, count) in registry.count_families() {
            per_protocol.add(
                vec![("protocol".to_owned(), family.label().to_owned())],
                count as f64,
            );
        }
        out.push(per_protocol);
        let in_state = |state: ConnectionState| states[usize::from(state.as_u8())] as f64;
        out.push(Family::gauge(
            "junction_mqtt_parked_connections",
            "Idle MQTT connections parked without a task",
            in_state(ConnectionState::Parked),
        ));
        out.push(Family::gauge(
            "junction_flow_held_connections",
            "Publishers not read while a queue they publish to catches up (credit flow)",
            in_state(ConnectionState::Flow),
        ));
        out.push(Family::gauge(
            "junction_alarm_blocked_connections",
            "Publishers not read while a resource alarm is raised",
            in_state(ConnectionState::Blocked),
        ));
        if let Some(store) = broker.message_store() {
            let stats = store.stats();
            out.push(Family::counter(
                "junction_store_messages_written",
                "Persistent messages written to the message log",
                stats.messages,
            ));
            out.push(Family::counter(
                "junction_store_fsyncs",
                "Batches of the message log made durable, one fsync each",
                stats.syncs,
            ));
            out.push(Family::counter(
                "junction_store_bytes_written",
                "Bytes written to the message log",
                stats.bytes,
            ));
            let per_fsync = if stats.message_syncs == 0 {
                0.0
            } else {
                stats.messages as f64 / stats.message_syncs as f64
            };
            out.push(Family::gauge(
                "junction_store_messages_per_fsync",
                "Messages written per fsync that wrote messages, since start (group commit)",
                per_fsync,
            ));
        }

        if self.per_object {
            out.extend(self.per_queue());
        }
        out
    }

    fn per_queue(&self) -> Vec<Family> {
        let mut ready = Family::labelled(
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            MetricType::Gauge,
        );
        let mut unacked = Family::labelled(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            MetricType::Gauge,
        );
        let mut total = Family::labelled(
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages",
            MetricType::Gauge,
        );
        let mut bytes = Family::labelled(
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            MetricType::Gauge,
        );
        let mut consumers = Family::labelled(
            "rabbitmq_queue_consumers",
            "Consumers on a queue",
            MetricType::Gauge,
        );
        let mut published = Family::labelled(
            "rabbitmq_queue_messages_published",
            "Total number of messages published to queues",
            MetricType::Counter,
        );
        let mut acked = Family::labelled(
            "rabbitmq_queue_messages_acked",
            "Total number of messages acknowledged by consumers on a queue",
            MetricType::Counter,
        );
        for vhost in self.admin.broker.vhosts() {
            let mut queues = vhost.queues();
            queues.sort_by(|a, b| a.name().cmp(b.name()));
            for queue in queues {
                let t = queue.counters();
                let labels = vec![
                    ("vhost".to_owned(), vhost.name.clone()),
                    ("queue".to_owned(), queue.name().to_owned()),
                ];
                ready.add(labels.clone(), t.ready as f64);
                unacked.add(labels.clone(), t.unacked as f64);
                total.add(labels.clone(), (t.ready + t.unacked) as f64);
                bytes.add(labels.clone(), t.ready_bytes as f64);
                consumers.add(labels.clone(), t.consumers as f64);
                published.add(labels.clone(), t.published as f64);
                acked.add(labels, t.acked as f64);
            }
        }
        vec![ready, unacked, total, bytes, consumers, published, acked]
    }
}

fn render(admin: &Arc<Admin>, per_object: bool) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector {
        admin: admin.clone(),
        per_object,
    }));
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        let _ = write!(text, "# encoding failed: {error}");
        return (StatusCode::INTERNAL_SERVER_ERROR, text).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn aggregated(State(admin): State<Arc<Admin>>) -> Response {
    render(&admin, false)
}

async fn per_object(State(admin): State<Arc<Admin>>) -> Response {
    render(&admin, true)
}

impl Admin {
    /// The Prometheus listener's routes: `/metrics` and `/metrics/per-object`. Like
    /// RabbitMQ's, they need no login: bind the listener where only the scraper reaches it.
    pub fn metrics_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(aggregated))
            .route("/metrics/per-object", get(per_object))
            .with_state(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_end_a_label_or_a_line() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label("orders"), "orders");
    }
}
