//! The WebSocket-to-protocol bridge: a client upgrades on `/ws` of a real
//! `serve_websockets` listener (on loopback, in this process) and sends the fuzz input as
//! its WebSocket bytes: tungstenite decodes them with the limits Junction sets, and the bridge
//! turns the messages into the byte stream a protocol adapter reads. The adapter here echoes
//! what it reads, so the bridge's output path (binary for MQTT, text split at UTF-8 boundaries
//! for STOMP) runs too. Checked, besides "no panic":
//!
//! - the adapter reads a prefix of the data frames' payloads in the input (nothing invented,
//!   nothing reordered);
//! - the client receives, in data frames, a prefix of what the adapter wrote.
//!
//! The first input byte picks the protocol (`mqtt` or `v12.stomp`).

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use junction_transport::{
    HandlerFuture, StreamHandler, WebSocketLimits, WebSocketProtocol, WebSocketRoutes,
    serve_websockets,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc, watch};

/// The server, alive for the whole fuzzing process.
struct Server {
    runtime: Runtime,
    addr: SocketAddr,
    /// What each connection's adapter read (and so wrote back), when it ends.
    echoed: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    _stop: watch::Sender<bool>,
}

fn echo_handler(done: mpsc::UnboundedSender<Vec<u8>>) -> StreamHandler {
    Arc::new(move |mut stream, _peer| -> HandlerFuture {
        let done = done.clone();
        Box::pin(async move {
            let mut seen = Vec::new();
            let mut buffer = vec![0u8; 8192];
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
                seen.extend_from_slice(&buffer[..n]);
            }
            let _ = done.send(seen);
        })
    })
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (done, echoed) = mpsc::unbounded_channel();
        let limits = WebSocketLimits {
            max_message_size: 64 * 1024 + 64,
            // Unlimited: this echo adapter has no login timeout to close a client that
            // exhausts the allowance (the real adapters have), so the session would hang.
            pre_login_bytes: usize::MAX / 2,
        };
        let routes = WebSocketRoutes {
            protocols: vec![
                WebSocketProtocol {
                    names: vec!["mqtt"],
                    text_output: false,
                    handler: echo_handler(done.clone()),
                    limits,
                },
                WebSocketProtocol {
                    names: vec!["v12.stomp"],
                    text_output: true,
                    handler: echo_handler(done),
                    limits,
                },
            ],
            fallback: None,
            files: Vec::new(),
            extra: None,
        };
        let (stop, shutdown) = watch::channel(false);
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn(serve_websockets(
                listener,
                shutdown,
                None,
                Duration::from_secs(10),
                routes,
            ));
            addr
        });
        Server {
            runtime,
            addr,
            echoed: Mutex::new(echoed),
            _stop: stop,
        }
    })
}

/// The payloads of the data frames (text, binary, continuation) at the start of `bytes`,
/// unmasked when masked, concatenated; parsing stops at the first incomplete frame.
fn data_payloads(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let [first, second, rest @ ..] = bytes {
        let opcode = first & 0x0f;
        let masked = second & 0x80 != 0;
        let (len, rest) = match second & 0x7f {
            126 => match rest {
                [a, b, rest @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), rest),
                _ => break,
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((len, rest)) => (u64::from_be_bytes(*len), rest),
                None => break,
            },
            small => (u64::from(small), rest),
        };
        let (mask, rest) = if masked {
            match rest.split_first_chunk::<4>() {
                Some((mask, rest)) => (*mask, rest),
                None => break,
            }
        } else {
            ([0; 4], rest)
        };
        let Some(len) = usize::try_from(len).ok().filter(|len| *len <= rest.len()) else {
            break;
        };
        let (payload, rest) = rest.split_at(len);
        if matches!(opcode, 0..=2) {
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        bytes = rest;
    }
    out
}

async fn session(addr: SocketAddr, protocol: &str, frames: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the listener accepts");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    // The response head, and whatever came with it.
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.expect("a response");
        assert!(n > 0, "the server answers the upgrade");
        head.extend_from_slice(&buffer[..n]);
    }
    let (mut reader, mut writer) = stream.into_split();
    let write = async move {
        let _ = writer.write_all(frames).await;
        let _ = writer.shutdown().await;
        // Keep the write half until the server closes.
        writer
    };
    let read = async move {
        let mut received = Vec::new();
        let _ = reader.read_to_end(&mut received).await;
        received
    };
    let (_writer, rest) = tokio::join!(write, read);
    (head, rest)
}

fuzz_target!(|data: &[u8]| {
    let [mode, frames @ ..] = data else {
        return;
    };
    let protocol = if mode % 2 == 0 { "mqtt" } else { "v12.stomp" };
    let server = server();
    server.runtime.block_on(async {
        let (mut received, rest) = tokio::time::timeout(
            Duration::from_secs(30),
            session(server.addr, protocol, frames),
        )
        .await
        .expect("the session ends");
        assert!(
            received.starts_with(b"HTTP/1.1 101"),
            "the upgrade is accepted: {:?}",
            String::from_utf8_lossy(&received)
        );
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response head")
            + 4;
        received.extend_from_slice(&rest);
        let echoed = tokio::time::timeout(Duration::from_secs(30), async {
            server.echoed.lock().await.recv().await
        })
        .await
        .expect("the adapter ends")
        .expect("the adapter reports");
        let sent = data_payloads(frames);
        assert!(
            sent.starts_with(&echoed),
            "the adapter read {} bytes that are not a prefix of the {} sent",
            echoed.len(),
            sent.len()
        );
        let back = data_payloads(&received[head_end..]);
        assert!(
            echoed.starts_with(&back),
            "the client got {} bytes that are not a prefix of the {} the adapter wrote",
            back.len(),
            echoed.len()
        );
    });
});
