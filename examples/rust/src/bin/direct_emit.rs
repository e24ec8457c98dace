//! Tutorial 4, the emitter: sends a log line with a severity as routing key to the `direct_logs`
//! direct exchange. Usage: `direct_emit SEVERITY MESSAGE...`.

use junction_examples::{args, connect};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mut words = args.words.into_iter();
    let key = words.next().unwrap_or_else(|| "info".to_owned());
    let rest: Vec<String> = words.collect();
    let body = if rest.is_empty() {
        "Hello World!".to_owned()
    } else {
        rest.join(" ")
    };
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
    channel
        .basic_publish(
            "direct_logs".into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await?;
    println!("Sent {key}:{body}");
    connection.close(200, "bye".into()).await?;
    Ok(())
}
