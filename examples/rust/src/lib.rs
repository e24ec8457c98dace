//! Shared plumbing for the tutorial programs: where the broker is, the command line, and a
//! consumer loop that stops after `--count N` messages.

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::{Connection, ConnectionProperties, Consumer};

/// The broker URL: `AMQP_URL`, or guest on the local default port.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to [`amqp_url`].
pub async fn connect() -> anyhow::Result<Connection> {
    Ok(Connection::connect(&amqp_url(), ConnectionProperties::default()).await?)
}

/// The command line: positional words and the value of `--count`, if given.
#[derive(Debug, Default)]
pub struct Args {
    /// Words that are not flags.
    pub words: Vec<String>,
    /// Stop after this many messages (consumers only).
    pub count: Option<usize>,
}

/// Parses the program's arguments.
pub fn args() -> anyhow::Result<Args> {
    let mut parsed = Args::default();
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        if arg == "--count" {
            let value = raw
                .next()
                .ok_or_else(|| anyhow::anyhow!("--count needs a number"))?;
            parsed.count = Some(value.parse()?);
        } else {
            parsed.words.push(arg);
        }
    }
    Ok(parsed)
}

/// Announces that the consumer is ready (tests wait for this line).
pub fn waiting() {
    println!("Waiting for messages. To exit press CTRL+C");
}

/// Hands each delivery to `handle` until the stream ends or `count` messages were handled.
pub async fn consume_each<F, Fut>(
    mut consumer: Consumer,
    count: Option<usize>,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(Delivery) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut handled = 0;
    while count.is_none_or(|limit| handled < limit) {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        handle(delivery?).await?;
        handled += 1;
    }
    Ok(())
}

/// A body as text, for printing.
pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
