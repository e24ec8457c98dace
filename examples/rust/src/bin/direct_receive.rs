//! Tutorial 4, a receiver: binds a private queue to `direct_logs` once per severity given on
//! the command line and prints what arrives. Usage: `direct_receive [--count N] SEVERITY...`.

use junction_examples::{args, connect, consume_each, text, waiting};
use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    if args.words.is_empty() {
        anyhow::bail!("give at least one binding key");
    }
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            "direct_logs".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in &args.words {
        channel
            .queue_bind(
                queue.name().clone(),
                "direct_logs".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    waiting();
    consume_each(consumer, args.count, |delivery| async move {
        println!("{}:{}", delivery.routing_key, text(&delivery.data));
        Ok(())
    })
    .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}
