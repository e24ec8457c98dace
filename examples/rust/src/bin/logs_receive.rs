//! Tutorial 3, a subscriber: binds its own server-named, exclusive queue to the `logs` fanout
//! exchange and prints every log line; the queue disappears when the program exits.

use junction_examples::{args, connect, consume_each, text, waiting};
use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Fanout,
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
    channel
        .queue_bind(
            queue.name().clone(),
            "logs".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
        println!("{}", text(&delivery.data));
        Ok(())
    })
    .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}
