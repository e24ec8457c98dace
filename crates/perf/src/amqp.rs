//! AMQP 0-9-1 runs with lapin: one connection per producer and per consumer, queues
//! `perf-q-<i>` declared (after deleting leftovers) by a setup connection that deletes them
//! again at the end.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use anyhow::Context;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind, PublisherConfirm,
};
use serde_json::{Map, json};
use tokio::sync::watch;

use crate::bench::{Bench, ConsumerStats, Counters, Pacer, join_all};
use crate::cli::{AmqpArgs, ExchangeType};
use crate::payload;
use crate::report::{Summary, report};

/// How a run publishes and routes, worked out from the options.
struct Plan {
    url: String,
    /// The CA to trust over TLS (amqps).
    cacert: Option<std::path::PathBuf>,
    exchange: String,
    queues: Vec<String>,
    /// Whether every queue gets a copy of every message.
    to_every_queue: bool,
    declare_exchange: bool,
}

impl Plan {
    fn new(args: &AmqpArgs) -> anyhow::Result<Plan> {
        let common = &args.common;
        anyhow::ensure!(args.queues >= 1, "--queues must be at least 1");
        anyhow::ensure!(
            common.consumers == 0 || common.consumers >= args.queues,
            "every queue needs a consumer: --consumers ({}) must be at least --queues ({})",
            common.consumers,
            args.queues
        );
        let url = match &common.url {
            Some(url) => url.clone(),
            None => {
                let endpoint = common.endpoint("amqp", 5672)?;
                let host = if endpoint.host.contains(':') {
                    format!("[{}]", endpoint.host)
                } else {
                    endpoint.host
                };
                let scheme = if common.cacert.is_some() {
                    "amqps"
                } else {
                    "amqp"
                };
                format!(
                    "{scheme}://{}:{}@{host}:{}/%2f",
                    endpoint.user, endpoint.password, endpoint.port
                )
            }
        };
        let fanout = args.exchange_type == ExchangeType::Fanout;
        let exchange = match &args.exchange {
            Some(name) => name.clone(),
            None if fanout => "perf-fanout".to_owned(),
            None => String::new(),
        };
        anyhow::ensure!(
            !(fanout && exchange.is_empty()),
            "the default exchange is direct: give --exchange a name for a fanout"
        );
        Ok(Plan {
            url,
            cacert: common.cacert.clone(),
            to_every_queue: !exchange.is_empty() && (fanout || args.routing_key.is_some()),
            declare_exchange: !exchange.is_empty() && !exchange.starts_with("amq."),
            exchange,
            queues: (0..args.queues).map(|i| format!("perf-q-{i}")).collect(),
        })
    }

    /// The routing key of producer `index`.
    fn routing_key(&self, args: &AmqpArgs, index: usize) -> String {
        match &args.routing_key {
            Some(key) => key.clone(),
            None => self.queues[index % self.queues.len()].clone(),
        }
    }
}

async fn connect(url: &str, cacert: Option<&std::path::Path>) -> anyhow::Result<Connection> {
    let connected = match cacert {
        None => Connection::connect(url, ConnectionProperties::default()).await,
        Some(path) => {
            let chain = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Connection::connect_with_config(
                url,
                ConnectionProperties::default(),
                lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(chain),
                },
                lapin::runtime::default_runtime()?,
            )
            .await
        }
    };
    connected.with_context(|| format!("cannot connect to {url}"))
}

/// Deletes what earlier runs may have left, then declares the exchange, the queues and their
/// bindings.
async fn declare(connection: &Connection, plan: &Plan, args: &AmqpArgs) -> anyhow::Result<()> {
    let mut channel = connection.create_channel().await?;
    let durable = args.persistent;
    if plan.declare_exchange {
        // Deleting a missing exchange is not an error on RabbitMQ or Junction; if a broker
        // says otherwise the channel is gone, so take a new one.
        if channel
            .exchange_delete(
                plan.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .is_err()
        {
            channel = connection.create_channel().await?;
        }
        let kind = match args.exchange_type {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
        };
        channel
            .exchange_declare(
                plan.exchange.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot declare exchange {}", plan.exchange))?;
    }
    for queue in &plan.queues {
        if channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .is_err()
        {
            channel = connection.create_channel().await?;
        }
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot declare queue {queue}"))?;
        if !plan.exchange.is_empty() {
            let key = args.routing_key.as_deref().unwrap_or(queue);
            channel
                .queue_bind(
                    queue.as_str().into(),
                    plan.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot bind {queue} to {}", plan.exchange))?;
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Deletes the queues and the exchange the run declared.
async fn clean_up(connection: &Connection, plan: &Plan) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    for queue in &plan.queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    if plan.declare_exchange {
        channel
            .exchange_delete(
                plan.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    Ok(())
}

/// Runs an AMQP benchmark; returns the exit code.
pub async fn run(args: AmqpArgs) -> anyhow::Result<i32> {
    let mut bench = Bench::new(&args.common)?;
    let plan = Arc::new(Plan::new(&args)?);
    let common = bench.common.clone();
    let setup = connect(&plan.url, plan.cacert.as_deref()).await?;
    if !args.existing {
        declare(&setup, &plan, &args).await?;
    }

    // Consumers first, each subscribed before the clock starts.
    let ack_every = (!args.auto_ack).then(|| match args.prefetch {
        0 => 100,
        n => u64::from(n / 2).max(1),
    });
    let mut consumers = Vec::with_capacity(common.consumers);
    for index in 0..common.consumers {
        let connection = connect(&plan.url, plan.cacert.as_deref()).await?;
        let channel = connection.create_channel().await?;
        if !args.auto_ack {
            channel
                .basic_qos(args.prefetch, BasicQosOptions::default())
                .await?;
        }
        let queue = &plan.queues[index % plan.queues.len()];
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("perf-c-{index}").into(),
                BasicConsumeOptions {
                    no_ack: args.auto_ack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {queue}"))?;
        consumers.push(tokio::spawn(consume(
            connection,
            channel,
            consumer,
            bench.consumer_stats(),
            bench.stop_signal(),
            ack_every,
        )));
    }

    bench.begin()?;
    let properties = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut producers = Vec::with_capacity(common.producers);
    for index in 0..common.producers {
        let producer = Producer {
            index: index as u16,
            run_tag: bench.run_tag,
            size: common.size,
            batch: common.batch,
            exchange: plan.exchange.as_str().into(),
            routing_key: plan.routing_key(&args, index).into(),
            properties: properties.clone(),
            confirm: args.confirm.map(|window| window.max(1)),
            counters: bench.counters.clone(),
            confirm_deadline: bench.confirm_deadline(),
        };
        let url = plan.url.clone();
        let cacert = plan.cacert.clone();
        let pacer = bench.pacer(index);
        producers.push(tokio::spawn(async move {
            let connection = connect(&url, cacert.as_deref()).await?;
            let result = producer.run(&connection, pacer).await;
            let _ = connection.close(200, "bye".into()).await;
            result
        }));
    }
    let produced = join_all(producers).await;
    bench.producers_done();
    if let Err(error) = produced {
        bench.stop_consumers();
        let _ = join_all(consumers).await;
        return Err(error);
    }

    let confirms = args.confirm.is_some();
    let copies = if common.consumers == 0 {
        0
    } else if plan.to_every_queue {
        plan.queues.len() as u64
    } else {
        1
    };
    let counted = if confirms {
        Counters::get(&bench.counters.confirmed)
    } else {
        Counters::get(&bench.counters.sent)
    };
    let expected = counted * copies + common.expect;
    bench.drain(Some(expected)).await;
    let stats = join_all(consumers).await?;
    let timing = bench.finish()?;
    if !args.keep && !args.existing {
        clean_up(&setup, &plan)
            .await
            .context("cannot delete the queues")?;
    }
    let _ = setup.close(200, "bye".into()).await;

    let mut settings = Map::new();
    settings.insert("queues".into(), json!(plan.queues.len()));
    settings.insert("exchange".into(), json!(plan.exchange));
    settings.insert("exchange_type".into(), json!(args.exchange_type.name()));
    settings.insert("routing_key".into(), json!(args.routing_key));
    settings.insert("confirm".into(), json!(args.confirm));
    settings.insert("persistent".into(), json!(args.persistent));
    settings.insert("auto_ack".into(), json!(args.auto_ack));
    settings.insert("prefetch".into(), json!(args.prefetch));
    settings.insert("existing".into(), json!(args.existing));
    let scenario = format!(
        "{} producer(s), {} consumer(s), {} queue(s){}, {} B, {}, {}, {}, {}, {} s",
        common.producers,
        common.consumers,
        plan.queues.len(),
        if plan.exchange.is_empty() {
            String::new()
        } else {
            format!(
                " behind {} exchange {}",
                args.exchange_type.name(),
                plan.exchange
            )
        },
        common.size,
        rate_text(common.rate),
        match args.confirm {
            Some(window) => format!("confirms (window {window})"),
            None => "no confirms".to_owned(),
        },
        if args.persistent {
            "persistent"
        } else {
            "transient"
        },
        if args.auto_ack {
            "auto-ack".to_owned()
        } else {
            format!("manual acks (prefetch {})", args.prefetch)
        },
        common.duration
    );
    let summary = Summary {
        protocol: "amqp",
        scenario,
        settings,
        confirms,
        copies,
        must_arrive: confirms || args.persistent,
        expected,
    };
    report(&bench, summary, &stats, &timing)
}

/// `--rate` for people.
pub fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate} msg/s per producer")
    } else {
        "unlimited rate".to_owned()
    }
}

/// Consumes until told to stop; acks with `multiple` every `ack_every` messages unless the
/// consumer is auto-ack (`None`).
async fn consume(
    connection: Connection,
    channel: Channel,
    mut consumer: Consumer,
    mut stats: ConsumerStats,
    mut stop: watch::Receiver<bool>,
    ack_every: Option<u64>,
) -> anyhow::Result<ConsumerStats> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    let mut unacked = 0;
    let mut last_tag = 0;
    loop {
        tokio::select! {
            biased;
            next = consumer.next() => {
                let Some(delivery) = next else { break };
                let delivery = delivery.context("consumer failed")?;
                stats.record(&delivery.data);
                if let Some(every) = ack_every {
                    unacked += 1;
                    last_tag = delivery.delivery_tag;
                    if unacked >= every {
                        channel
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await?;
                        unacked = 0;
                    }
                }
            }
            _ = &mut stopped => break,
        }
    }
    if unacked > 0 {
        let _ = channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await;
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(stats)
}

/// One publishing connection.
struct Producer {
    index: u16,
    run_tag: u16,
    size: usize,
    batch: usize,
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    confirm: Option<usize>,
    counters: Arc<Counters>,
    confirm_deadline: tokio::time::Instant,
}

impl Producer {
    /// Publishes as the pacer allows, each batch's publishes in flight together (lapin
    /// resolves a publish once its frames are written), with at most `confirm` unconfirmed.
    async fn run(&self, connection: &Connection, mut pacer: Pacer) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        if self.confirm.is_some() {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let mut bodies = payload::blank(self.size * self.batch);
        let mut pending: VecDeque<PublisherConfirm> = VecDeque::new();
        let mut seq: u32 = 0;
        while let Some(mut n) = pacer.next().await {
            if let Some(window) = self.confirm {
                self.settle_ready(&mut pending).await?;
                while pending.len() >= window {
                    let oldest = pending.pop_front().expect("window is at least 1");
                    self.settle(oldest.await?);
                    if pacer.over() {
                        break;
                    }
                }
                if pending.len() >= window {
                    break;
                }
                n = n.min(window - pending.len());
            }
            for (i, body) in bodies.chunks_mut(self.size).take(n).enumerate() {
                payload::stamp(body, self.run_tag, self.index, seq.wrapping_add(i as u32));
            }
            let batch = bodies.chunks(self.size).take(n);
            if self.confirm.is_some() {
                let publishes = batch.map(|body| self.publish(&channel, body));
                for published in join_in_order(publishes).await {
                    pending.push_back(published.context("publish failed")?);
                }
            } else {
                self.publish_unconfirmed(&channel, batch).await?;
            }
            seq = seq.wrapping_add(n as u32);
            pacer.issued(n);
            Counters::add(&self.counters.sent, n as u64);
        }
        let settled = tokio::time::timeout_at(self.confirm_deadline, async {
            for confirm in pending.drain(..) {
                self.settle(confirm.await?);
            }
            anyhow::Ok(())
        })
        .await;
        match settled {
            Ok(result) => result,
            Err(_) => {
                eprintln!(
                    "producer {}: confirms still outstanding at the end of the run",
                    self.index
                );
                Ok(())
            }
        }
    }

    /// Hands one body to lapin; the future resolves once its frames are written.
    fn publish<'a>(
        &self,
        channel: &'a Channel,
        body: &'a [u8],
    ) -> impl Future<Output = lapin::Result<PublisherConfirm>> + use<'a> {
        channel.basic_publish(
            self.exchange.clone(),
            self.routing_key.clone(),
            BasicPublishOptions::default(),
            body,
            self.properties.clone(),
        )
    }

    /// Publishes a batch without confirms and waits until its last message is written.
    ///
    /// A publish queues its frames on its first poll, and lapin writes a channel's queued
    /// publishes in order, so once the last one is written every other one is too. Waiting
    /// for the last alone spares what `join_in_order` (which confirms need) costs per
    /// message: a boxed future, polls again on every wake-up, and a wake-up as each one is
    /// written. The others are dropped after their first poll, which leaves their frames
    /// queued; if the connection fails before they are written, so does the last one.
    async fn publish_unconfirmed<'a>(
        &self,
        channel: &Channel,
        batch: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> anyhow::Result<()> {
        let last = batch.len().saturating_sub(1);
        for (i, body) in batch.enumerate() {
            let publish = pin!(self.publish(channel, body));
            let published = if i == last {
                Some(publish.await)
            } else {
                futures_lite::future::poll_once(publish).await
            };
            if let Some(published) = published {
                published.context("publish failed")?;
            }
        }
        Ok(())
    }

    /// Counts the confirms that have already arrived at the front of `pending`.
    async fn settle_ready(&self, pending: &mut VecDeque<PublisherConfirm>) -> anyhow::Result<()> {
        while let Some(front) = pending.front_mut() {
            match futures_lite::future::poll_once(front).await {
                Some(confirmation) => {
                    self.settle(confirmation?);
                    pending.pop_front();
                }
                None => break,
            }
        }
        Ok(())
    }

    fn settle(&self, confirmation: Confirmation) {
        match confirmation {
            Confirmation::Ack(_) => Counters::add(&self.counters.confirmed, 1),
            Confirmation::Nack(_) => Counters::add(&self.counters.nacked, 1),
            Confirmation::NotRequested => {}
        }
    }
}

/// Polls every future, first polls in order (so publishes go out in order), until all are
/// done; returns their outputs in order.
async fn join_in_order<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut first_pending = 0;
    std::future::poll_fn(|cx| {
        for (future, output) in futures
            .iter_mut()
            .zip(outputs.iter_mut())
            .skip(first_pending)
        {
            if output.is_none()
                && let Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *output = Some(value);
            }
        }
        while outputs.get(first_pending).is_some_and(Option::is_some) {
            first_pending += 1;
        }
        if first_pending == outputs.len() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_in_order_keeps_order() {
        let futures = (0..50u64).map(|i| async move {
            tokio::time::sleep(std::time::Duration::from_millis(50 - i)).await;
            i
        });
        let outputs = join_in_order(futures).await;
        assert_eq!(outputs, (0..50).collect::<Vec<_>>());
    }
}
