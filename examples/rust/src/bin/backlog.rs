//! A load tool for the storage guarantees (not a tutorial): `backlog publish N` streams N
//! persistent 1 KiB messages with publisher confirms into the durable queue `backlog` and waits
//! for every confirm; `backlog drain N` consumes N messages with manual acks and checks that
//! they arrive in publish order. `bench/backlog.sh` drives it against a real broker.

use std::collections::VecDeque;
use std::time::Instant;

use futures_lite::StreamExt;
use junction_examples::{args, connect};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

const QUEUE: &str = "backlog";
/// Confirms outstanding at once.
const WINDOW: usize = 512;

fn body(n: u64) -> Vec<u8> {
    let mut body = format!("{n:016}").into_bytes();
    body.resize(1024, b'.');
    body
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mode = args.words.first().cloned().unwrap_or_default();
    let count: u64 = args
        .words
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    match mode.as_str() {
        "publish" => {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut pending = VecDeque::with_capacity(WINDOW);
            for n in 0..count {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        QUEUE.into(),
                        BasicPublishOptions::default(),
                        &body(n),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                pending.push_back(confirm);
                if pending.len() >= WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    oldest.await?;
                }
            }
            for confirm in pending {
                confirm.await?;
            }
        }
        "drain" => {
            channel.basic_qos(1000, BasicQosOptions::default()).await?;
            let mut consumer = channel
                .basic_consume(
                    QUEUE.into(),
                    "backlog-drain".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            for n in 0..count {
                let Some(delivery) = consumer.next().await else {
                    anyhow::bail!("the queue ran dry after {n} messages");
                };
                let delivery = delivery?;
                anyhow::ensure!(
                    delivery.data == body(n),
                    "message {n} is out of order or damaged"
                );
                if n % 100 == 99 || n + 1 == count {
                    delivery.ack(BasicAckOptions { multiple: true }).await?;
                }
            }
        }
        _ => anyhow::bail!("usage: backlog publish|drain N"),
    }
    let elapsed = started.elapsed();
    println!(
        "{mode} {count} messages in {:.1} s: {:.0} msg/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    connection.close(200, "bye".into()).await?;
    Ok(())
}
