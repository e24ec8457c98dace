//! Tutorial 3, the emitter: broadcasts a log line to every subscriber through the `logs` fanout
//! exchange.

use junction_examples::{args, connect};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let body = if args.words.is_empty() {
        "info: Hello World!".to_owned()
    } else {
        args.words.join(" ")
    };
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
    channel
        .basic_publish(
            "logs".into(),
            "".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await?;
    println!("Sent {body}");
    connection.close(200, "bye".into()).await?;
    Ok(())
}
