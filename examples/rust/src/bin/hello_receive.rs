//! Tutorial 1, the receiver: prints what arrives on the `hello` queue.

use junction_examples::{args, connect, consume_each, text, waiting};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            "hello".into(),
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
        println!("Received {}", text(&delivery.data));
        Ok(())
    })
    .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}
