//! STOMP runs with a small client of the tool's own (no STOMP crate is maintained): tokio TCP,
//! CONNECT, SEND (batched into one write per batch), SUBSCRIBE, and an incremental frame
//! parser for what comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::{ReadHalf as OwnedReadHalf, WriteHalf as OwnedWriteHalf};
use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use serde_json::{Map, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

use crate::amqp::rate_text;
use crate::bench::{Bench, ConsumerStats, Counters, Pacer, join_all};
use crate::cli::{Endpoint, StompArgs};
use crate::payload;
use crate::report::{Summary, report};

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A flat-out producer without receipts fills its buffer up to about this much before
/// writing it.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The longest header block the parser accepts.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A frame as received: command, raw header lines, body.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The command (`MESSAGE`, `RECEIPT`, `ERROR`, ...).
    pub command: Bytes,
    headers: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// The value of the first header called `name` (not unescaped: the tool only reads
    /// values that need no escaping).
    pub fn header(&self, name: &str) -> Option<&str> {
        let text = std::str::from_utf8(&self.headers).ok()?;
        text.split('\n').find_map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (key, value) = line.split_once(':')?;
            (key == name).then_some(value)
        })
    }

    /// An ERROR frame's message and body, for an error report.
    fn error_text(&self) -> String {
        format!(
            "{} {}",
            self.header("message").unwrap_or("(no message)"),
            String::from_utf8_lossy(&self.body).trim()
        )
    }
}

/// Takes the first whole frame off `buf` (skipping heart-beat end-of-lines), or returns
/// `None` if `buf` does not hold one yet.
pub fn parse(buf: &mut BytesMut) -> anyhow::Result<Option<Frame>> {
    let eols = buf
        .iter()
        .take_while(|b| **b == b'\n' || **b == b'\r')
        .count();
    buf.advance(eols);
    if buf.is_empty() {
        return Ok(None);
    }
    // The header block ends at the first empty line.
    let mut header_end = None;
    let mut from = 0;
    while let Some(offset) = buf[from..].iter().position(|b| *b == b'\n') {
        let eol = from + offset;
        match &buf[eol + 1..] {
            [b'\n', ..] => {
                header_end = Some((eol, eol + 2));
                break;
            }
            [b'\r', b'\n', ..] => {
                header_end = Some((eol, eol + 3));
                break;
            }
            [] | [b'\r'] => break,
            _ => from = eol + 1,
        }
    }
    let Some((headers_end, body_start)) = header_end else {
        anyhow::ensure!(
            buf.len() <= MAX_HEADER_BYTES,
            "a frame's headers are longer than {MAX_HEADER_BYTES} bytes"
        );
        return Ok(None);
    };
    let command_end = buf.iter().position(|b| *b == b'\n').unwrap_or(headers_end);
    let headers_start = (command_end + 1).min(headers_end);
    let content_length = std::str::from_utf8(&buf[headers_start..headers_end])
        .ok()
        .and_then(|text| {
            text.split('\n').find_map(|line| {
                let value = line.strip_prefix("content-length:")?;
                value.trim_end_matches('\r').trim().parse::<usize>().ok()
            })
        });
    let body_end = match content_length {
        Some(length) => {
            let end = body_start + length;
            if buf.len() <= end {
                return Ok(None);
            }
            anyhow::ensure!(buf[end] == 0, "a frame's body is not followed by NUL");
            end
        }
        None => match buf[body_start..].iter().position(|b| *b == 0) {
            Some(offset) => body_start + offset,
            None => return Ok(None),
        },
    };
    let frame = buf.split_to(body_end + 1).freeze();
    let command = frame.slice(..command_end);
    let command = match command.last() {
        Some(b'\r') => command.slice(..command.len() - 1),
        _ => command,
    };
    Ok(Some(Frame {
        command,
        headers: frame.slice(headers_start..headers_end),
        body: frame.slice(body_start..body_end),
    }))
}

/// The reading half of a connection, with its buffer.
pub struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// The next frame, reading more as needed; `None` when the server closed the connection.
    async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(frame) = parse(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads frames until one is `command` (an ERROR frame becomes the error); skips others.
    pub async fn expect_skipping(&mut self, command: &str) -> anyhow::Result<Frame> {
        loop {
            match self.next().await? {
                Some(frame) if frame.command == command.as_bytes() => return Ok(frame),
                Some(frame) if frame.command == "ERROR".as_bytes() => {
                    anyhow::bail!("the broker answered ERROR: {}", frame.error_text())
                }
                Some(_) => {}
                None => anyhow::bail!("the broker closed the connection"),
            }
        }
    }

    /// The next frame, which must be `command` (an ERROR frame becomes the error).
    async fn expect(&mut self, command: &str) -> anyhow::Result<Frame> {
        match self.next().await? {
            Some(frame) if frame.command == command.as_bytes() => Ok(frame),
            Some(frame) if frame.command == "ERROR".as_bytes() => {
                anyhow::bail!("the broker answered ERROR: {}", frame.error_text())
            }
            Some(frame) => anyhow::bail!(
                "expected {command}, got {}",
                String::from_utf8_lossy(&frame.command)
            ),
            None => anyhow::bail!("the broker closed the connection"),
        }
    }
}

/// Connects and logs in; returns the halves of the connection and the negotiated version.
pub async fn connect(
    endpoint: &Endpoint,
    vhost: &str,
) -> anyhow::Result<(Reader, OwnedWriteHalf, String)> {
    let (read, mut write) =
        crate::net::open(&endpoint.host, endpoint.port, endpoint.tls.as_ref()).await?;
    let connect = format!(
        "CONNECT\naccept-version:1.0,1.1,1.2\nhost:{vhost}\nlogin:{}\npasscode:{}\nheart-beat:0,0\n\n\0",
        endpoint.user, endpoint.password
    );
    crate::net::send(&mut write, connect.as_bytes()).await?;
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(64 * 1024),
    };
    let connected = tokio::time::timeout(SETUP_TIMEOUT, reader.expect("CONNECTED"))
        .await
        .context("no CONNECTED in time")??;
    let version = connected.header("version").unwrap_or("1.0").to_owned();
    Ok((reader, write, version))
}

/// Runs a STOMP benchmark; returns the exit code.
pub async fn run(args: StompArgs) -> anyhow::Result<i32> {
    let mut bench = Bench::new(&args.common)?;
    let common = bench.common.clone();
    let endpoint = common.endpoint("stomp", 61613)?;
    let destination = args
        .destination
        .clone()
        .unwrap_or_else(|| format!("/queue/perf-{}", bench.run_id));
    let ack_every = (!args.auto_ack).then(|| match args.prefetch {
        0 => 100,
        n => u64::from(n / 2).max(1),
    });

    let mut consumers = Vec::with_capacity(common.consumers);
    for index in 0..common.consumers {
        let (mut reader, mut write, version) = connect(&endpoint, &args.vhost).await?;
        let mut subscribe = format!(
            "SUBSCRIBE\nid:{index}\ndestination:{destination}\nack:{}\nreceipt:subscribed\n",
            if args.auto_ack { "auto" } else { "client" }
        );
        if !args.auto_ack && args.prefetch > 0 {
            subscribe.push_str(&format!("prefetch-count:{}\n", args.prefetch));
        }
        subscribe.push_str("\n\0");
        crate::net::send(&mut write, subscribe.as_bytes()).await?;
        let mut stats = bench.consumer_stats();
        tokio::time::timeout(SETUP_TIMEOUT, async {
            loop {
                // Messages left from an earlier run with the same id may come first.
                match reader.next().await? {
                    Some(frame) if &frame.command[..] == b"MESSAGE" => stats.record(&frame.body),
                    Some(frame) if &frame.command[..] == b"RECEIPT" => return anyhow::Ok(()),
                    Some(frame) if &frame.command[..] == b"ERROR" => {
                        anyhow::bail!("cannot subscribe: {}", frame.error_text())
                    }
                    Some(_) => {}
                    None => anyhow::bail!("the broker closed the connection"),
                }
            }
        })
        .await
        .context("no RECEIPT for SUBSCRIBE in time")??;
        consumers.push(tokio::spawn(consume(
            reader,
            write,
            version == "1.2",
            index,
            stats,
            bench.stop_signal(),
            ack_every,
        )));
    }

    let mut connected = Vec::with_capacity(common.producers);
    for _ in 0..common.producers {
        let (reader, write, _) = connect(&endpoint, &args.vhost).await?;
        connected.push((reader, write));
    }
    bench.begin()?;
    let mut producers = Vec::with_capacity(common.producers);
    for (index, (reader, write)) in connected.into_iter().enumerate() {
        let producer = Producer {
            index: index as u16,
            run_tag: bench.run_tag,
            size: common.size,
            batch: common.batch,
            destination: destination.clone(),
            persistent: args.persistent,
            confirm: args.confirm.map(|window| window.max(1)),
            flat_out: common.rate <= 0.0,
            counters: bench.counters.clone(),
            confirm_deadline: bench.confirm_deadline(),
        };
        let pacer = bench.pacer(index);
        producers.push(tokio::spawn(producer.run(reader, write, pacer)));
    }
    let produced = join_all(producers).await;
    bench.producers_done();
    if let Err(error) = produced {
        bench.stop_consumers();
        let _ = join_all(consumers).await;
        return Err(error);
    }

    let confirms = args.confirm.is_some();
    let copies = if common.consumers == 0 {
        0
    } else if destination.starts_with("/queue/") || destination.starts_with("/amq/queue/") {
        1
    } else {
        common.consumers as u64
    };
    let counted = if confirms {
        Counters::get(&bench.counters.confirmed)
    } else {
        Counters::get(&bench.counters.sent)
    };
    let expected = counted * copies + common.expect;
    bench.drain(Some(expected)).await;
    let stats = join_all(consumers).await?;
    let timing = bench.finish()?;

    let mut settings = Map::new();
    settings.insert("destination".into(), json!(destination));
    settings.insert("confirm".into(), json!(args.confirm));
    settings.insert("persistent".into(), json!(args.persistent));
    settings.insert("auto_ack".into(), json!(args.auto_ack));
    settings.insert("prefetch".into(), json!(args.prefetch));
    let scenario = format!(
        "{} producer(s), {} consumer(s), {destination}, {} B, {}, {}, {}, {}, {} s",
        common.producers,
        common.consumers,
        common.size,
        rate_text(common.rate),
        match args.confirm {
            Some(window) => format!("receipts (window {window})"),
            None => "no receipts".to_owned(),
        },
        if args.persistent {
            "persistent"
        } else {
            "transient"
        },
        if args.auto_ack {
            "ack:auto".to_owned()
        } else {
            format!("ack:client (prefetch {})", args.prefetch)
        },
        common.duration
    );
    let summary = Summary {
        protocol: "stomp",
        scenario,
        settings,
        confirms,
        copies,
        must_arrive: confirms || args.persistent,
        expected,
    };
    report(&bench, summary, &stats, &timing)
}

/// Receives MESSAGE frames until told to stop; with client acks, sends a cumulative ACK
/// every `ack_every` messages.
async fn consume(
    mut reader: Reader,
    mut write: OwnedWriteHalf,
    stomp_1_2: bool,
    subscription: usize,
    mut stats: ConsumerStats,
    mut stop: watch::Receiver<bool>,
    ack_every: Option<u64>,
) -> anyhow::Result<ConsumerStats> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    let mut unacked = 0;
    let mut last: Option<Frame> = None;
    let ack = |frame: &Frame| -> String {
        if stomp_1_2 {
            format!("ACK\nid:{}\n\n\0", frame.header("ack").unwrap_or_default())
        } else {
            format!(
                "ACK\nmessage-id:{}\nsubscription:{subscription}\n\n\0",
                frame.header("message-id").unwrap_or_default()
            )
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            frame = reader.next() => {
                let Some(frame) = frame? else {
                    anyhow::bail!("the broker closed a consumer's connection");
                };
                match &frame.command[..] {
                    b"MESSAGE" => {
                        stats.record(&frame.body);
                        if let Some(every) = ack_every {
                            unacked += 1;
                            if unacked >= every {
                                crate::net::send(&mut write, ack(&frame).as_bytes()).await?;
                                unacked = 0;
                                last = None;
                            } else {
                                last = Some(frame);
                            }
                        }
                    }
                    b"ERROR" => anyhow::bail!("consumer got ERROR: {}", frame.error_text()),
                    _ => {}
                }
            }
        }
    }
    if let Some(frame) = last {
        let _ = crate::net::send(&mut write, ack(&frame).as_bytes()).await;
    }
    let _ = crate::net::send(&mut write, b"DISCONNECT\n\n\0").await;
    Ok(stats)
}

/// One publishing connection.
struct Producer {
    index: u16,
    run_tag: u16,
    size: usize,
    batch: usize,
    destination: String,
    persistent: bool,
    confirm: Option<usize>,
    flat_out: bool,
    counters: Arc<Counters>,
    confirm_deadline: tokio::time::Instant,
}

impl Producer {
    /// Publishes as the pacer allows, one write per batch; with receipts, at most `confirm`
    /// SENDs without a RECEIPT.
    async fn run(
        self,
        mut reader: Reader,
        mut write: OwnedWriteHalf,
        mut pacer: Pacer,
    ) -> anyhow::Result<()> {
        let window = Arc::new(Semaphore::new(self.confirm.unwrap_or(0)));
        let receipted = Arc::new(AtomicU64::new(0));
        let listener = {
            let (window, receipted, counters) =
                (window.clone(), receipted.clone(), self.counters.clone());
            tokio::spawn(async move {
                while let Some(frame) = reader.next().await? {
                    match &frame.command[..] {
                        b"RECEIPT" => {
                            receipted.fetch_add(1, Ordering::Relaxed);
                            Counters::add(&counters.confirmed, 1);
                            window.add_permits(1);
                        }
                        b"ERROR" => anyhow::bail!("producer got ERROR: {}", frame.error_text()),
                        _ => {}
                    }
                }
                anyhow::Ok(())
            })
        };
        let mut prefix = format!(
            "SEND\ndestination:{}\ncontent-length:{}\n",
            self.destination, self.size
        );
        if self.persistent {
            prefix.push_str("persistent:true\n");
        }
        let mut template = payload::blank(self.size);
        let mut frames = Vec::with_capacity(
            (self.batch * (prefix.len() + self.size + 24)).max(WRITE_BATCH_BYTES * 2),
        );
        let mut seq: u32 = 0;
        let mut sent: u64 = 0;
        while let Some(mut n) = pacer.next().await {
            if self.confirm.is_some() {
                let first = tokio::time::timeout_at(self.confirm_deadline, window.acquire())
                    .await
                    .context("no RECEIPT in time")?
                    .context("closed")?;
                first.forget();
                let mut granted = 1;
                while granted < n {
                    match window.try_acquire() {
                        Ok(permit) => {
                            permit.forget();
                            granted += 1;
                        }
                        Err(_) => break,
                    }
                }
                n = granted;
            }
            frames.clear();
            // Flat out and without receipts, one write carries about 64 KiB of SENDs.
            let fill = self.flat_out && self.confirm.is_none();
            let mut batch = 0;
            loop {
                // The send time of every message of one batch is the same.
                payload::stamp(&mut template, self.run_tag, self.index, seq);
                for _ in 0..n {
                    frames.extend_from_slice(prefix.as_bytes());
                    if self.confirm.is_some() {
                        frames.extend_from_slice(format!("receipt:{seq}\n").as_bytes());
                    }
                    frames.push(b'\n');
                    let start = frames.len();
                    frames.extend_from_slice(&template);
                    frames[start + 12..start + 16].copy_from_slice(&seq.to_le_bytes());
                    frames.push(0);
                    seq = seq.wrapping_add(1);
                }
                pacer.issued(n);
                batch += n;
                if !fill || frames.len() >= WRITE_BATCH_BYTES {
                    break;
                }
                match pacer.next().await {
                    Some(more) => n = more,
                    None => break,
                }
            }
            if let Err(error) = crate::net::send(&mut write, &frames).await {
                return Err(match listener.await {
                    Ok(Err(broker)) => broker,
                    _ => error.into(),
                });
            }
            sent += batch as u64;
            Counters::add(&self.counters.sent, batch as u64);
        }
        if self.confirm.is_some() {
            while receipted.load(Ordering::Relaxed) < sent {
                if listener.is_finished() || tokio::time::Instant::now() >= self.confirm_deadline {
                    eprintln!(
                        "producer {}: {} of {sent} receipted at the end",
                        self.index,
                        receipted.load(Ordering::Relaxed)
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let _ = crate::net::send(&mut write, b"DISCONNECT\n\n\0").await;
        let _ = write.shutdown().await;
        match tokio::time::timeout(Duration::from_secs(2), listener).await {
            Ok(Ok(Err(error))) => Err(error),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], cut: usize) -> Vec<(String, Option<String>, Vec<u8>)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input.chunks(cut) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = parse(&mut buf).unwrap() {
                out.push((
                    String::from_utf8(frame.command.to_vec()).unwrap(),
                    frame.header("destination").map(str::to_owned),
                    frame.body.to_vec(),
                ));
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn frames_parse_whatever_the_reads() {
        let input: &[u8] = b"\nMESSAGE\r\ndestination:/queue/a\r\ncontent-length:3\r\n\r\na\0b\0\n\nRECEIPT\nreceipt-id:7\n\n\0MESSAGE\ndestination:/queue/b\n\nno length\0";
        for cut in [1, 2, 3, 7, 100] {
            let parsed = frames(input, cut);
            assert_eq!(parsed.len(), 3, "cut {cut}");
            assert_eq!(parsed[0].0, "MESSAGE");
            assert_eq!(parsed[0].1.as_deref(), Some("/queue/a"));
            assert_eq!(parsed[0].2, b"a\0b");
            assert_eq!(parsed[1].0, "RECEIPT");
            assert_eq!(parsed[2].1.as_deref(), Some("/queue/b"));
            assert_eq!(parsed[2].2, b"no length");
        }
    }

    #[test]
    fn a_bad_content_length_is_an_error() {
        let mut buf = BytesMut::from(&b"MESSAGE\ncontent-length:1\n\nab\0"[..]);
        assert!(parse(&mut buf).is_err());
    }
}
