//! Tutorial 1, the sender: puts one message on the `hello` queue through the default exchange.

use junction_examples::{args, connect};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let body = if args.words.is_empty() {
        "Hello World!".to_owned()
    } else {
        args.words.join(" ")
    };
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_publish(
            "".into(),
            "hello".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await?;
    println!("Sent {body}");
    connection.close(200, "bye".into()).await?;
    Ok(())
}
