//! A consumer that stops reading its socket: it connects, subscribes where a backlog waits
//! (an AMQP no-ack consumer, a STOMP `ack:auto` subscription, or an MQTT persistent session
//! whose queue holds messages), reads the answer that says it is subscribed, and then never
//! reads again. Meanwhile the broker's resident memory is sampled: a broker that bounds what
//! it hands a consumer grows by little more than that bound; one that pushes the backlog into
//! an unbounded delivery buffer grows by the backlog.
//!
//! The AMQP consumer is a few hand-written frames (no client library reads behind our back);
//! STOMP and MQTT use the tool's own clients. Filling the backlog is done before, by the
//! protocol's ordinary run with `--consumers 0 --count N` (see `bench/stalled.sh`).

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{Endpoint, StallArgs, StallProtocol};
use crate::memory::Sampler;
use crate::{mqtt, mqtt_wire, stomp};

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the stalled consumer (or only prepares an MQTT session); returns the exit code.
pub async fn run(args: StallArgs) -> anyhow::Result<i32> {
    let endpoint = Endpoint {
        host: args.host.clone(),
        port: args.port.unwrap_or(match args.protocol {
            StallProtocol::Amqp => 5672,
            StallProtocol::Stomp => 61613,
            StallProtocol::Mqtt => 1883,
        }),
        user: args.user.clone(),
        password: args.password.clone(),
        tls: None,
    };
    if args.prepare {
        anyhow::ensure!(
            args.protocol == StallProtocol::Mqtt,
            "--prepare is for MQTT sessions"
        );
        prepare_mqtt(&endpoint, &args).await?;
        println!(
            "MQTT session {} subscribed to {} with QoS {}",
            args.client_id, args.topic, args.qos
        );
        return Ok(0);
    }
    let pid = args
        .broker_pid
        .context("--broker-pid is needed to sample the broker's memory")?;
    let sampler = Sampler::start(pid).context("cannot read the broker's /proc/PID/status")?;
    let (what, connection) = match args.protocol {
        StallProtocol::Amqp => (
            format!("AMQP no-ack consumer on {}", args.queue),
            Box::new(stall_amqp(&endpoint, &args).await?) as Held,
        ),
        StallProtocol::Stomp => (
            format!("STOMP ack:auto subscriber on {}", args.destination),
            stall_stomp(&endpoint, &args).await?,
        ),
        StallProtocol::Mqtt => (
            format!(
                "MQTT session {} (QoS {} subscription to {})",
                args.client_id, args.qos, args.topic
            ),
            stall_mqtt(&endpoint, &args).await?,
        ),
    };
    let subscribed_kib = sampler.peak_kib();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let figures = sampler.stop();
    drop(connection);
    if args.protocol == StallProtocol::Mqtt && args.clean_up {
        // Give the broker a moment to see the stalled connection go before taking its id.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop_mqtt_session(&endpoint, &args).await?;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let growth = figures.peak_kib.saturating_sub(figures.start_kib);
    println!("junction-perf stall: {what}, stalled for {} s", args.hold);
    println!(
        "memory    broker resident {:.1} MiB before, {:.1} MiB once subscribed, peak {:.1} MiB, {:.1} MiB at the end: grew by {:.1} MiB",
        mib(figures.start_kib),
        mib(subscribed_kib),
        mib(figures.peak_kib),
        mib(figures.end_kib),
        mib(growth)
    );
    let protocol = match args.protocol {
        StallProtocol::Amqp => "amqp",
        StallProtocol::Stomp => "stomp",
        StallProtocol::Mqtt => "mqtt",
    };
    println!(
        "JSON {}",
        json!({
            "scenario": "stall",
            "protocol": protocol,
            "what": what,
            "hold_s": args.hold,
            "qos": (args.protocol == StallProtocol::Mqtt).then_some(args.qos),
            "broker_pid": pid,
            "broker_rss_start_kib": figures.start_kib,
            "broker_rss_peak_kib": figures.peak_kib,
            "broker_rss_end_kib": figures.end_kib,
            "broker_hwm_kib": figures.hwm_kib,
            "broker_rss_growth_kib": growth,
        })
    );
    Ok(0)
}

/// A stalled connection, kept open (and never read) until dropped.
type Held = Box<dyn Send>;

// ---------------------------------------------------------------------------------------------
// AMQP 0-9-1, by hand.

/// Appends a method frame on `channel`.
fn method_frame(out: &mut Vec<u8>, channel: u16, class: u16, method: u16, args: &[u8]) {
    out.push(1);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&((4 + args.len()) as u32).to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&method.to_be_bytes());
    out.extend_from_slice(args);
    out.push(0xce);
}

/// Appends a short string.
fn short_str(out: &mut Vec<u8>, text: &str) {
    out.push(text.len().min(255) as u8);
    out.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
}

/// Reads frames until a method frame of `class`.`method` arrives; returns its arguments.
/// A `connection.close` or `channel.close` from the broker is an error with its text.
async fn expect_method(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    class: u16,
    method: u16,
) -> anyhow::Result<Vec<u8>> {
    loop {
        while buf.len() >= 7 {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            if buf.len() < 7 + size + 1 {
                break;
            }
            let frame: Vec<u8> = buf.drain(..7 + size + 1).collect();
            let payload = &frame[7..7 + size];
            if frame[0] != 1 || payload.len() < 4 {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if got == (class, method) {
                return Ok(payload[4..].to_vec());
            }
            if got == (10, 50) || got == (20, 40) {
                let text = payload
                    .get(7..)
                    .and_then(|rest| rest.get(..usize::from(payload[6])))
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                anyhow::bail!(
                    "the broker closed: {} {text}",
                    u16::from_be_bytes([payload[4], payload[5]])
                );
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the broker closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects, opens channel 1, starts a no-ack consumer on `--queue`, and waits for
/// `basic.consume-ok`; deliveries that follow are never read.
async fn stall_amqp(endpoint: &Endpoint, args: &StallArgs) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", endpoint.host, endpoint.port))?;
    stream.set_nodelay(true)?;
    let setup = async {
        let mut buf = Vec::new();
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        expect_method(&mut stream, &mut buf, 10, 10).await?;
        let mut out = Vec::new();
        let mut start_ok = Vec::new();
        start_ok.extend_from_slice(&0u32.to_be_bytes()); // client properties: none
        short_str(&mut start_ok, "PLAIN");
        let response = format!("\0{}\0{}", endpoint.user, endpoint.password);
        start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
        start_ok.extend_from_slice(response.as_bytes());
        short_str(&mut start_ok, "en_US");
        method_frame(&mut out, 0, 10, 11, &start_ok);
        stream.write_all(&out).await?;
        let tune = expect_method(&mut stream, &mut buf, 10, 30).await?;
        anyhow::ensure!(tune.len() >= 8, "a short connection.tune");
        let mut tune_ok = tune[..6].to_vec(); // channel-max and frame-max as offered
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        out.clear();
        method_frame(&mut out, 0, 10, 31, &tune_ok);
        let mut open = Vec::new();
        short_str(&mut open, &args.vhost);
        short_str(&mut open, "");
        open.push(0);
        method_frame(&mut out, 0, 10, 40, &open);
        stream.write_all(&out).await?;
        expect_method(&mut stream, &mut buf, 10, 41).await?;
        out.clear();
        method_frame(&mut out, 1, 20, 10, &[0]);
        let mut consume = Vec::new();
        consume.extend_from_slice(&0u16.to_be_bytes());
        short_str(&mut consume, &args.queue);
        short_str(&mut consume, "perf-stalled");
        consume.push(0x02); // no-ack
        consume.extend_from_slice(&0u32.to_be_bytes());
        method_frame(&mut out, 1, 60, 20, &consume);
        stream.write_all(&out).await?;
        expect_method(&mut stream, &mut buf, 20, 11).await?;
        expect_method(&mut stream, &mut buf, 60, 21).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .context("the AMQP consumer was not set up in time")??;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// STOMP and MQTT, with the tool's clients.

/// Subscribes with `ack:auto` and waits for the SUBSCRIBE's RECEIPT.
async fn stall_stomp(endpoint: &Endpoint, args: &StallArgs) -> anyhow::Result<Held> {
    let (mut reader, mut write, _) = stomp::connect(endpoint, &args.vhost).await?;
    let subscribe = format!(
        "SUBSCRIBE\nid:0\ndestination:{}\nack:auto\nreceipt:subscribed\n\n\0",
        args.destination
    );
    write.write_all(subscribe.as_bytes()).await?;
    tokio::time::timeout(SETUP_TIMEOUT, reader.expect_skipping("RECEIPT"))
        .await
        .context("no RECEIPT for SUBSCRIBE in time")??;
    Ok(Box::new((reader, write)))
}

/// Connects as the persistent session (clean session 0); its queue is delivered and never
/// read.
async fn stall_mqtt(endpoint: &Endpoint, args: &StallArgs) -> anyhow::Result<Held> {
    let (reader, write) = mqtt::connect(endpoint, &args.client_id, false).await?;
    Ok(Box::new((reader, write)))
}

/// Creates the persistent session: connect with clean session 0, subscribe, disconnect.
async fn prepare_mqtt(endpoint: &Endpoint, args: &StallArgs) -> anyhow::Result<()> {
    let (mut reader, mut write) = mqtt::connect(endpoint, &args.client_id, false).await?;
    let mut out = Vec::new();
    mqtt_wire::subscribe(&mut out, 1, &args.topic, args.qos);
    write.write_all(&out).await?;
    let suback = tokio::time::timeout(SETUP_TIMEOUT, reader.expect(mqtt_wire::SUBACK))
        .await
        .context("no SUBACK in time")??;
    anyhow::ensure!(
        suback.ack_code().is_some_and(|code| code != 0x80),
        "subscription refused"
    );
    out.clear();
    mqtt_wire::disconnect(&mut out);
    write.write_all(&out).await?;
    let _ = write.shutdown().await;
    // Wait for the broker to close, so the session is stored before the publishers start.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while reader.fill().await.unwrap_or(false) {}
    })
    .await;
    Ok(())
}

/// Ends the persistent session: connect with clean session 1 and disconnect.
async fn drop_mqtt_session(endpoint: &Endpoint, args: &StallArgs) -> anyhow::Result<()> {
    let (_reader, mut write) = mqtt::connect(endpoint, &args.client_id, true).await?;
    let mut out = Vec::new();
    mqtt_wire::disconnect(&mut out);
    write.write_all(&out).await?;
    let _ = write.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_frame_is_well_formed() {
        let mut out = Vec::new();
        method_frame(&mut out, 1, 20, 10, &[0]);
        assert_eq!(out, vec![1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xce]);
    }
}
