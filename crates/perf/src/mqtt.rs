//! MQTT 3.1.1 runs with rumqttc: publishers and subscribers on one topic, each its own
//! connection (clean session); every subscriber gets every message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode,
};
use serde_json::{Map, json};
use tokio::sync::watch;

use crate::amqp::rate_text;
use crate::bench::{Bench, ConsumerStats, Counters, Pacer, join_all};
use crate::cli::{Endpoint, MqttArgs};
use crate::payload;
use crate::report::{Summary, report};

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs an MQTT benchmark; returns the exit code.
pub async fn run(args: MqttArgs) -> anyhow::Result<i32> {
    let mut bench = Bench::new(&args.common)?;
    let common = bench.common.clone();
    let endpoint = common.endpoint("mqtt", 1883)?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("perf/{}", bench.run_id));
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let max_packet = (common.size + topic.len() + 64).max(10 * 1024);
    let settings = Settings {
        endpoint,
        run_id: bench.run_id.clone(),
        max_packet,
        qos,
    };

    let mut subscribers = Vec::with_capacity(common.consumers);
    for index in 0..common.consumers {
        let (client, mut eventloop) = settings.client(&format!("s{index}"), 100, 16);
        client.subscribe(topic.as_str(), qos).await?;
        tokio::time::timeout(SETUP_TIMEOUT, await_suback(&mut eventloop))
            .await
            .context("no SUBACK in time")??;
        subscribers.push(tokio::spawn(subscribe(
            client,
            eventloop,
            bench.consumer_stats(),
            bench.stop_signal(),
        )));
    }

    let mut publishers = Vec::with_capacity(common.producers);
    let mut connected = Vec::with_capacity(common.producers);
    for index in 0..common.producers {
        let (client, mut eventloop) = settings.client(
            &format!("p{index}"),
            args.confirm.max(1),
            common.batch.max(16),
        );
        tokio::time::timeout(SETUP_TIMEOUT, await_connack(&mut eventloop))
            .await
            .context("no CONNACK in time")??;
        connected.push((client, eventloop));
    }
    bench.begin()?;
    for (index, (client, eventloop)) in connected.into_iter().enumerate() {
        let publisher = Publisher {
            index: index as u16,
            run_tag: bench.run_tag,
            size: common.size,
            topic: topic.clone(),
            qos,
            counters: bench.counters.clone(),
            confirm_deadline: bench.confirm_deadline(),
        };
        let pacer = bench.pacer(index);
        publishers.push(tokio::spawn(publisher.run(client, eventloop, pacer)));
    }
    let published = join_all(publishers).await;
    bench.producers_done();
    if let Err(error) = published {
        bench.stop_consumers();
        let _ = join_all(subscribers).await;
        return Err(error);
    }

    let confirms = qos != QoS::AtMostOnce;
    let copies = common.consumers as u64;
    let counted = if confirms {
        Counters::get(&bench.counters.confirmed)
    } else {
        Counters::get(&bench.counters.sent)
    };
    let expected = counted * copies;
    bench.drain(Some(expected)).await;
    let stats = join_all(subscribers).await?;
    let timing = bench.finish()?;

    let mut json_settings = Map::new();
    json_settings.insert("qos".into(), json!(args.qos));
    json_settings.insert("topic".into(), json!(topic));
    json_settings.insert("confirm".into(), json!(confirms.then_some(args.confirm)));
    let scenario = format!(
        "{} publisher(s), {} subscriber(s), topic {topic}, QoS {}, {} B, {}{}, {} s",
        common.producers,
        common.consumers,
        args.qos,
        common.size,
        rate_text(common.rate),
        if confirms {
            format!(", inflight {}", args.confirm)
        } else {
            String::new()
        },
        common.duration
    );
    let summary = Summary {
        protocol: "mqtt",
        scenario,
        settings: json_settings,
        confirms,
        copies,
        must_arrive: confirms,
        expected,
    };
    report(&bench, summary, &stats, &timing)
}

/// What every connection of a run shares.
struct Settings {
    endpoint: Endpoint,
    run_id: String,
    max_packet: usize,
    qos: QoS,
}

impl Settings {
    /// A client and its event loop for the connection called `name` (client id
    /// `perf-<run-id>-<name>`), with TCP_NODELAY (rumqttc leaves Nagle's algorithm on, which
    /// holds QoS 0 publishes back for tens of milliseconds when nothing flows the other way).
    fn client(&self, name: &str, inflight: u16, capacity: usize) -> (AsyncClient, EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(self.options(name, inflight), capacity);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(SETUP_TIMEOUT.as_secs());
        eventloop.set_network_options(network);
        (client, eventloop)
    }

    /// Options for the connection called `name`.
    fn options(&self, name: &str, inflight: u16) -> MqttOptions {
        let mut options = MqttOptions::new(
            format!("perf-{}-{name}", self.run_id),
            self.endpoint.host.clone(),
            self.endpoint.port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_credentials(self.endpoint.user.clone(), self.endpoint.password.clone())
            .set_clean_session(true)
            .set_max_packet_size(self.max_packet, self.max_packet);
        if self.qos != QoS::AtMostOnce {
            options.set_inflight(inflight);
        }
        options
    }
}

async fn await_connack(eventloop: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(connack)) =
            eventloop.poll().await.context("cannot connect")?
        {
            anyhow::ensure!(
                connack.code == ConnectReturnCode::Success,
                "connection refused: {:?}",
                connack.code
            );
            return Ok(());
        }
    }
}

async fn await_suback(eventloop: &mut EventLoop) -> anyhow::Result<()> {
    await_connack(eventloop).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(suback)) =
            eventloop.poll().await.context("cannot subscribe")?
        {
            anyhow::ensure!(
                !suback.return_codes.contains(&SubscribeReasonCode::Failure),
                "subscription refused"
            );
            return Ok(());
        }
    }
}

/// Sends DISCONNECT and lets the event loop write it.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Receives until told to stop.
async fn subscribe(
    client: AsyncClient,
    mut eventloop: EventLoop,
    mut stats: ConsumerStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<ConsumerStats> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            event = eventloop.poll() => {
                let event = event.context("subscriber connection failed")?;
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    stats.record(&publish.payload);
                }
            }
        }
    }
    disconnect(&client, &mut eventloop).await;
    Ok(stats)
}

/// One publishing connection.
struct Publisher {
    index: u16,
    run_tag: u16,
    size: usize,
    topic: String,
    qos: QoS,
    counters: Arc<Counters>,
    confirm_deadline: tokio::time::Instant,
}

impl Publisher {
    /// Publishes as the pacer allows while a task drives the event loop (which counts the
    /// publishes written and acknowledged), then waits until every publish is written (and
    /// acknowledged with QoS 1/2) and disconnects.
    async fn run(
        self,
        client: AsyncClient,
        mut eventloop: EventLoop,
        mut pacer: Pacer,
    ) -> anyhow::Result<()> {
        let written = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let driver = {
            let (written, acked, counters) =
                (written.clone(), acked.clone(), self.counters.clone());
            let qos = self.qos;
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                            written.fetch_add(1, Ordering::Relaxed);
                            Counters::add(&counters.sent, 1);
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            Counters::add(&counters.confirmed, 1);
                        }
                        Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            Counters::add(&counters.confirmed, 1);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                        Ok(_) => {}
                        Err(error) => return Err(error),
                    }
                }
            })
        };
        let mut body = payload::blank(self.size);
        let mut published: u64 = 0;
        let mut seq: u32 = 0;
        while let Some(n) = pacer.next().await {
            for _ in 0..n {
                payload::stamp(&mut body, self.run_tag, self.index, seq);
                seq = seq.wrapping_add(1);
                if client
                    .publish_bytes(
                        self.topic.as_str(),
                        self.qos,
                        false,
                        Bytes::copy_from_slice(&body),
                    )
                    .await
                    .is_err()
                {
                    return Err(match driver.await {
                        Ok(Err(error)) => anyhow::anyhow!("publisher connection failed: {error}"),
                        _ => anyhow::anyhow!("publisher connection ended"),
                    });
                }
            }
            published += n as u64;
            pacer.issued(n);
        }
        let target = |counter: &AtomicU64| counter.load(Ordering::Relaxed) >= published;
        while !(target(&written) && (self.qos == QoS::AtMostOnce || target(&acked))) {
            if driver.is_finished() || tokio::time::Instant::now() >= self.confirm_deadline {
                eprintln!(
                    "publisher {}: {} of {published} written, {} acknowledged at the end",
                    self.index,
                    written.load(Ordering::Relaxed),
                    acked.load(Ordering::Relaxed)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = client.try_disconnect();
        match tokio::time::timeout(Duration::from_secs(2), driver).await {
            Ok(Ok(Err(error))) => Err(anyhow::anyhow!("publisher connection failed: {error}")),
            _ => Ok(()),
        }
    }
}
