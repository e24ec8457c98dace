//! Tutorial 6, the client: sends each number given on the command line to `rpc_queue` with a
//! private reply queue and a fresh correlation id, then matches the replies by correlation id.
//! Usage: `rpc_client N...` (default 30).

use std::collections::HashMap;

use futures_lite::StreamExt;
use junction_examples::{args, connect, text};
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let numbers = if args.words.is_empty() {
        vec!["30".to_owned()]
    } else {
        args.words
    };
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut pending: HashMap<String, String> = HashMap::new();
    for (i, n) in numbers.iter().enumerate() {
        let id = format!("{}-{i}", std::process::id());
        channel
            .basic_publish(
                "".into(),
                "rpc_queue".into(),
                BasicPublishOptions::default(),
                n.as_bytes(),
                BasicProperties::default()
                    .with_reply_to(reply_queue.name().clone())
                    .with_correlation_id(ShortString::from(id.as_str())),
            )
            .await?;
        println!("Requested fib({n})");
        pending.insert(id, n.clone());
    }
    while !pending.is_empty() {
        let Some(delivery) = replies.next().await else {
            anyhow::bail!("the reply stream ended");
        };
        let delivery = delivery?;
        let id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string());
        if let Some(n) = id.and_then(|id| pending.remove(&id)) {
            println!("fib({n}) = {}", text(&delivery.data));
        }
    }
    connection.close(200, "bye".into()).await?;
    Ok(())
}
