//! Tutorial 2, the producer: sends a task to the durable `task_queue` as a persistent message.
//! Each dot in the text stands for a second of work.

use junction_examples::{args, connect};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
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
            "task_queue".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_publish(
            "".into(),
            "task_queue".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    println!("Sent {body}");
    connection.close(200, "bye".into()).await?;
    Ok(())
}
