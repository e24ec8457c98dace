use std::time::{Duration, Instant};

use bytes::Bytes;
use junction_core::queue::{ChannelId, ConnectionId, QueueSpec};
use junction_core::{FieldTable, Properties, VirtualHost};

use super::*;

const OWNER: ConnectionId = ConnectionId(1);

fn vhost() -> Arc<VirtualHost> {
    let registry = Arc::new(ExchangeTypeRegistry::with_builtins());
    register(&registry);
    VirtualHost::new("/", registry)
}

fn delayed_spec(name: &str, inner: Option<&str>) -> ExchangeSpec {
    let mut arguments = FieldTable::new();
    if let Some(inner) = inner {
        arguments.insert(DELAYED_TYPE, FieldValue::string(inner));
    }
    let mut spec = ExchangeSpec::new(name, TYPE_NAME);
    spec.arguments = arguments;
    spec
}

fn with_delay(key: &str, delay: FieldValue, body: &'static str) -> Message {
    let mut headers = FieldTable::new();
    headers.insert(DELAY_HEADER, delay);
    let mut properties = Properties::default();
    properties.headers = Some(headers);
    Message::new(
        "later",
        key,
        properties,
        Bytes::from_static(body.as_bytes()),
    )
}

async fn queue(vhost: &VirtualHost, name: &str) -> junction_core::QueueHandle {
    let spec = QueueSpec {
        name: name.to_owned(),
        ..Default::default()
    };
    vhost
        .declare_queue(spec, false, false, OWNER)
        .await
        .expect("declare")
        .handle
}

/// Takes the next message of `queue`, waiting for it at most `limit`.
async fn next_message(queue: &junction_core::QueueHandle, limit: Duration) -> Option<Message> {
    let channel = ChannelId {
        connection: OWNER,
        number: 1,
        generation: 0,
    };
    let deadline = Instant::now() + limit;
    loop {
        if let Some(got) = queue.get(channel, true).await.expect("get") {
            return Some((*got.message).clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn a_delay_is_read_from_integers_strings_and_floats() {
    let delay = |value: FieldValue| delay_of(&with_delay("k", value, ""));
    assert_eq!(delay(FieldValue::I32(1500)), Some(1500));
    assert_eq!(delay(FieldValue::U8(7)), Some(7));
    assert_eq!(delay(FieldValue::string("250")), Some(250));
    assert_eq!(delay(FieldValue::F64(99.9)), Some(99));
    assert_eq!(delay(FieldValue::I64(0)), None);
    assert_eq!(delay(FieldValue::I64(-5000)), None);
    assert_eq!(delay(FieldValue::I64(MAX_DELAY_MS + 1)), None);
    assert_eq!(delay(FieldValue::string("soon")), None);
    assert_eq!(delay(FieldValue::Bool(true)), None);
    let plain = Message::new("later", "k", Properties::default(), Bytes::new());
    assert_eq!(delay_of(&plain), None);
}

#[tokio::test]
async fn declarations_need_an_existing_delayed_type_other_than_itself() {
    let vhost = vhost();
    for (inner, says) in [
        (None, "'x-delayed-type' must be an existing exchange type"),
        (
            Some("x-nope"),
            "'x-delayed-type' must be an existing exchange type",
        ),
        (
            Some(TYPE_NAME),
            "'x-delayed-message' can't be used for 'x-delayed-type'",
        ),
    ] {
        let error = vhost
            .declare_exchange(delayed_spec("bad", inner), false)
            .expect_err("refused");
        assert!(error.to_string().contains(says), "{inner:?}: {error}");
    }
    assert!(vhost.exchange("bad").is_err(), "nothing was created");
    vhost
        .declare_exchange(delayed_spec("good", Some("topic")), false)
        .expect("a topic-routed delayed exchange");
    queue(&vhost, "q").await;
    // Bindings are checked by the delayed type: a topic key of too many words is refused.
    let long_key = vec!["w"; 300].join(".");
    assert!(
        vhost
            .bind_queue("q", "good", &long_key, FieldTable::new(), OWNER)
            .is_err()
    );
}

#[tokio::test]
async fn held_messages_arrive_in_due_order_with_x_delay_negated() {
    let vhost = vhost();
    vhost
        .declare_exchange(delayed_spec("later", Some("direct")), false)
        .expect("declare");
    let q = queue(&vhost, "due").await;
    vhost
        .bind_queue("due", "later", "k", FieldTable::new(), OWNER)
        .expect("bind");
    let exchange = vhost.exchange("later").expect("exchange");
    let started = Instant::now();
    for (delay, body) in [(300, "third"), (100, "first"), (200, "second")] {
        let published = vhost
            .publish(junction_core::Publication::new(
                &exchange,
                with_delay("k", FieldValue::I32(delay), body),
            ))
            .await;
        assert_eq!(published.queues, 1, "held counts as taken");
    }
    // Not delayed: a negative x-delay routes at once.
    vhost
        .publish(junction_core::Publication::new(
            &exchange,
            with_delay("k", FieldValue::I32(-1), "now"),
        ))
        .await;
    let now = next_message(&q, Duration::from_millis(50))
        .await
        .expect("now");
    assert_eq!(now.body, "now");
    for (body, delay) in [("first", 100i64), ("second", 200), ("third", 300)] {
        let message = next_message(&q, Duration::from_secs(5)).await.expect(body);
        assert_eq!(message.body, body);
        assert!(
            started.elapsed() >= Duration::from_millis(delay as u64),
            "{body} came early"
        );
        let headers = message.properties.headers.expect("headers");
        assert_eq!(headers.get(DELAY_HEADER), Some(&FieldValue::I64(-delay)));
    }
}

#[tokio::test]
async fn deleting_the_exchange_drops_its_pending_messages() {
    let vhost = vhost();
    vhost
        .declare_exchange(delayed_spec("later", Some("fanout")), false)
        .expect("declare");
    let q = queue(&vhost, "dropped").await;
    vhost
        .bind_queue("dropped", "later", "", FieldTable::new(), OWNER)
        .expect("bind");
    let exchange = vhost.exchange("later").expect("exchange");
    vhost
        .publish(junction_core::Publication::new(
            &exchange,
            with_delay("", FieldValue::I32(50), "gone"),
        ))
        .await;
    vhost.delete_exchange("later", false).expect("delete");
    assert!(next_message(&q, Duration::from_millis(300)).await.is_none());
}
