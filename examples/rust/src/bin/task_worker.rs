//! Tutorial 2, the worker: takes one task at a time (prefetch 1), "works" a second per dot, and
//! acknowledges only when done, so a task of a worker that dies goes to another worker.

use std::time::Duration;

use junction_examples::{args, connect, consume_each, text, waiting};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
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
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            "task_queue".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    waiting();
    consume_each(consumer, args.count, |delivery| async move {
        let task = text(&delivery.data);
        println!("Received {task}");
        let dots = task.matches('.').count() as u64;
        tokio::time::sleep(Duration::from_secs(dots)).await;
        println!("Done");
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    })
    .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}
