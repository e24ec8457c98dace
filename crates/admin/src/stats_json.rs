//! Counters as RabbitMQ's API shows them: `message_stats` with a `<name>_details.rate` beside
//! each counter, and the sampling of every counter for [`crate::rates`].

use junction_core::stats::{Family, MessageTotals, QueueTally};
use junction_core::{Exchange, QueueHandle};
use serde_json::{Map, Value, json};

use crate::Admin;

/// The queue counters sampled for rates, in this order.
const QUEUE_COUNTERS: usize = 12;

fn queue_values(t: &QueueTally) -> Vec<u64> {
    vec![
        t.published,
        t.delivered_manual_ack,
        t.delivered_auto_ack,
        t.got_manual_ack,
        t.got_auto_ack,
        t.got_empty,
        t.acked,
        t.redelivered,
        t.delivered() + t.got(),
        t.ready,
        t.unacked,
        t.ready + t.unacked,
    ]
}

/// The node's message counters sampled for rates, in this order.
const MESSAGE_COUNTERS: usize = 4;

fn message_values(t: &MessageTotals) -> Vec<u64> {
    vec![t.published, t.confirmed, t.returned, t.dropped]
}

/// Adds `name` and `name_details: {rate}`.
fn counter(map: &mut Map<String, Value>, name: &str, value: u64, rate: f64) {
    map.insert(name.to_owned(), value.into());
    map.insert(format!("{name}_details"), json!({ "rate": rate }));
}

/// The rates key of a queue.
pub fn queue_key(queue: &QueueHandle) -> String {
    format!("queue\u{0}{}\u{0}{}", queue.vhost_name(), queue.name())
}

/// The rates key of an exchange.
pub fn exchange_key(vhost: &str, exchange: &Exchange) -> String {
    format!("exchange\u{0}{vhost}\u{0}{}", exchange.name)
}

/// The rates key of a vhost.
pub fn vhost_key(name: &str) -> String {
    format!("vhost\u{0}{name}")
}

/// `message_stats` and the message gauges of queue counters `t`, with the rates recorded
/// under `key`.
pub fn queue_stats(admin: &Admin, key: &str, t: &QueueTally, into: &mut Map<String, Value>) {
    let rates = admin.rates.of(key, QUEUE_COUNTERS);
    let mut stats = Map::new();
    counter(&mut stats, "publish", t.published, rates[0]);
    counter(&mut stats, "deliver", t.delivered_manual_ack, rates[1]);
    counter(&mut stats, "deliver_no_ack", t.delivered_auto_ack, rates[2]);
    counter(&mut stats, "get", t.got_manual_ack, rates[3]);
    counter(&mut stats, "get_no_ack", t.got_auto_ack, rates[4]);
    counter(&mut stats, "get_empty", t.got_empty, rates[5]);
    counter(&mut stats, "ack", t.acked, rates[6]);
    counter(&mut stats, "redeliver", t.redelivered, rates[7]);
    counter(&mut stats, "deliver_get", t.delivered() + t.got(), rates[8]);
    into.insert("message_stats".into(), Value::Object(stats));
    counter(into, "messages_ready", t.ready, rates[9]);
    counter(into, "messages_unacknowledged", t.unacked, rates[10]);
    counter(into, "messages", t.ready + t.unacked, rates[11]);
}

/// `message_stats` of an exchange.
pub fn exchange_stats(admin: &Admin, vhost: &str, exchange: &Exchange) -> Value {
    let rates = admin.rates.of(&exchange_key(vhost, exchange), 2);
    let mut stats = Map::new();
    let counters = exchange.counters();
    counter(&mut stats, "publish_in", counters.publish_in(), rates[0]);
    counter(&mut stats, "publish_out", counters.publish_out(), rates[1]);
    Value::Object(stats)
}

/// The node's totals: what every protocol's publishers sent, and what every queue did.
pub fn node_totals(admin: &Admin) -> (MessageTotals, QueueTally) {
    let mut published = MessageTotals::default();
    for family in Family::ALL {
        published.add(&admin.broker.connections().messages(family).totals());
    }
    let mut queues = QueueTally::default();
    for vhost in admin.broker.vhosts() {
        queues.add(&vhost.queue_totals());
    }
    (published, queues)
}

/// The node's `message_stats`, `queue_totals` and rates, as `/api/overview` shows them.
pub fn node_stats(admin: &Admin, into: &mut Map<String, Value>) {
    let (connections, queues) = node_totals(admin);
    let mut queue_part = Map::new();
    queue_stats(admin, "node", &queues, &mut queue_part);
    let mut stats = match queue_part.remove("message_stats") {
        Some(Value::Object(stats)) => stats,
        _ => Map::new(),
    };
    let rates = admin.rates.of("node\u{0}messages", MESSAGE_COUNTERS);
    // The queues' own publish count is copies enqueued; the node's is messages published.
    counter(&mut stats, "publish", connections.published, rates[0]);
    counter(&mut stats, "confirm", connections.confirmed, rates[1]);
    counter(
        &mut stats,
        "return_unroutable",
        connections.returned,
        rates[2],
    );
    counter(&mut stats, "drop_unroutable", connections.dropped, rates[3]);
    into.insert("message_stats".into(), Value::Object(stats));
    into.insert("queue_totals".into(), Value::Object(queue_part));
}

/// Every counter now, for the rates.
pub fn sample(admin: &Admin) -> Vec<(String, Vec<u64>)> {
    let mut objects = Vec::new();
    let (connections, queues) = node_totals(admin);
    objects.push(("node".to_owned(), queue_values(&queues)));
    objects.push(("node\u{0}messages".to_owned(), message_values(&connections)));
    for vhost in admin.broker.vhosts() {
        objects.push((vhost_key(&vhost.name), queue_values(&vhost.queue_totals())));
        for queue in vhost.queues() {
            objects.push((queue_key(&queue), queue_values(&queue.counters())));
        }
        for exchange in vhost.exchanges() {
            let counters = exchange.counters();
            objects.push((
                exchange_key(&vhost.name, &exchange),
                vec![counters.publish_in(), counters.publish_out()],
            ));
        }
    }
    objects
}
