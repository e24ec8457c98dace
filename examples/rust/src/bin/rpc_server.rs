//! Tutorial 6, the server: answers requests on `rpc_queue` with the Fibonacci number of the
//! request, sending the reply to the request's `reply_to` with its `correlation_id`.

use junction_examples::{args, connect, consume_each, text, waiting};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.saturating_add(b));
    }
    a
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            "rpc_queue".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            "rpc_queue".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    waiting();
    let replies = channel.clone();
    consume_each(consumer, args.count, move |delivery| {
        let replies = replies.clone();
        async move {
            let n: u64 = text(&delivery.data).trim().parse().unwrap_or(0);
            println!("fib({n})");
            if let Some(reply_to) = delivery.properties.reply_to().clone() {
                let mut properties = BasicProperties::default();
                if let Some(id) = delivery.properties.correlation_id().clone() {
                    properties = properties.with_correlation_id(id);
                }
                replies
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        fib(n).to_string().as_bytes(),
                        properties,
                    )
                    .await?;
            }
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
    })
    .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}
