//! WebSocket listeners. A WebSocket connection is turned into a byte stream (one half of an
//! in-memory duplex pipe), so the MQTT and STOMP adapters run over it exactly as over TCP and
//! never see WebSocket messages: packets split across messages or batched within one are the
//! same bytes to them.
//!
//! One listener can serve several protocols on `/ws`; the client's `Sec-WebSocket-Protocol`
//! picks the handler (`mqtt`, `v12.stomp`, ...). A listener may name a protocol to assume when
//! the client offers none of its protocols (RabbitMQ's Web-MQTT and Web-STOMP listeners do).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The boxed future a [`StreamHandler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one protocol connection over a byte stream (the adapter's `serve`).
pub type StreamHandler = Arc<dyn Fn(DuplexStream, SocketAddr) -> HandlerFuture + Send + Sync>;

/// Bytes buffered between the WebSocket and the adapter in each direction.
const PIPE_CAPACITY: usize = 64 * 1024;
/// The largest WebSocket message accepted.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A protocol served over WebSocket.
#[derive(Clone)]
pub struct WebSocketProtocol {
    /// The subprotocol names that select it (`mqtt`; `v10.stomp`, `v11.stomp`, `v12.stomp`).
    pub names: Vec<&'static str>,
    /// Send output as text messages when it is valid UTF-8 (STOMP clients expect text);
    /// otherwise as binary messages (MQTT).
    pub text_output: bool,
    /// Serves a connection.
    pub handler: StreamHandler,
}

/// A static file served over HTTP (pages embedded in the binary).
#[derive(Debug, Clone, Copy)]
pub struct StaticFile {
    /// The path it is served at (`/demo/`).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// What one WebSocket listener serves.
#[derive(Clone)]
pub struct WebSocketRoutes {
    /// The protocols, in order of preference.
    pub protocols: Vec<WebSocketProtocol>,
    /// Index of the protocol assumed when the client offers none of the names above.
    pub fallback: Option<usize>,
    /// Static files served beside `/ws`.
    pub files: Vec<StaticFile>,
}

impl WebSocketRoutes {
    fn choose(&self, offered: Option<&str>) -> Option<&WebSocketProtocol> {
        if let Some(name) = offered
            && let Some(protocol) = self.protocols.iter().find(|p| p.names.contains(&name))
        {
            return Some(protocol);
        }
        self.fallback.and_then(|i| self.protocols.get(i))
    }

    fn names(&self) -> Vec<&'static str> {
        self.protocols
            .iter()
            .flat_map(|p| p.names.iter().copied())
            .collect()
    }
}

/// Serves HTTP on `listener` until `shutdown` turns true: WebSocket upgrades on `/ws` go to
/// the protocol chosen by the client's subprotocol, the static files are served at their
/// paths, and other paths are 404 (the management API is to come).
pub async fn serve_websockets(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    routes: WebSocketRoutes,
) {
    let mut app = Router::new().route("/ws", get(upgrade));
    for file in &routes.files {
        let file = *file;
        app = app.route(
            file.path,
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, file.content_type)],
                    file.body,
                )
            }),
        );
    }
    let app = app.with_state(Arc::new(routes));
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    {
        tracing::error!(%error, "HTTP listener failed");
    }
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(routes): State<Arc<WebSocketRoutes>>,
) -> Response {
    let ws = ws.protocols(routes.names()).max_message_size(MAX_MESSAGE);
    let offered = ws
        .selected_protocol()
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let Some(protocol) = routes.choose(offered.as_deref()).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "Sec-WebSocket-Protocol must name one of: {}\n",
                routes.names().join(", ")
            ),
        )
            .into_response();
    };
    ws.on_upgrade(move |socket| bridge(socket, peer, protocol))
}

/// The WebSocket message for `chunk`, and how many bytes at its end are kept for the next
/// one. With `text_output`, valid UTF-8 goes as a text message; a character cut by the end of
/// the chunk is kept back so the text stays whole; anything that is not UTF-8 goes as binary.
fn encode_message(chunk: &[u8], text_output: bool) -> (Option<Message>, usize) {
    if !text_output {
        return (
            Some(Message::Binary(axum::body::Bytes::copy_from_slice(chunk))),
            0,
        );
    }
    match std::str::from_utf8(chunk) {
        Ok(text) => (Some(Message::Text(text.into())), 0),
        Err(error) if error.error_len().is_none() => {
            let valid = error.valid_up_to();
            let text = std::str::from_utf8(&chunk[..valid]).unwrap_or_default();
            let message = (!text.is_empty()).then(|| Message::Text(text.into()));
            (message, chunk.len() - valid)
        }
        Err(_) => (
            Some(Message::Binary(axum::body::Bytes::copy_from_slice(chunk))),
            0,
        ),
    }
}

/// Runs the protocol's handler over a pipe and moves bytes between the pipe and the socket.
async fn bridge(socket: WebSocket, peer: SocketAddr, protocol: WebSocketProtocol) {
    let (adapter_side, pipe) = tokio::io::duplex(PIPE_CAPACITY);
    let handler = tokio::spawn((protocol.handler)(adapter_side, peer));
    let (mut pipe_reader, mut pipe_writer) = tokio::io::split(pipe);
    let (mut sink, mut stream) = socket.split();
    let inbound = async move {
        while let Some(Ok(message)) = stream.next().await {
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Text(text) => axum::body::Bytes::from(text),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if pipe_writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = pipe_writer.shutdown().await;
    };
    let outbound = async move {
        let mut buffer = vec![0u8; PIPE_CAPACITY];
        // Bytes of a UTF-8 character cut by the end of the previous read (at most 3).
        let mut carried = 0;
        loop {
            let n = match pipe_reader.read(&mut buffer[carried..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => carried + n,
            };
            let (message, rest) = encode_message(&buffer[..n], protocol.text_output);
            buffer.copy_within(n - rest..n, 0);
            carried = rest;
            if let Some(message) = message
                && sink.send(message).await.is_err()
            {
                break;
            }
        }
        let _ = sink.close().await;
    };
    // Either direction ending ends the connection: the adapter sees end of input when the
    // client goes, and the client sees a close when the adapter finishes.
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
    let _ = handler.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_keeps_a_cut_character_for_the_next_message() {
        let text = "é€".as_bytes();
        let (message, kept) = encode_message(&text[..3], true);
        assert!(matches!(message, Some(Message::Text(t)) if t.as_str() == "é"));
        assert_eq!(kept, 1, "the first byte of '€' waits for the rest");
        let (message, kept) = encode_message(&text[..1], true);
        assert!(message.is_none());
        assert_eq!(kept, 1);
        let (message, _) = encode_message(&[0xff, 0x00], true);
        assert!(
            matches!(message, Some(Message::Binary(_))),
            "not UTF-8: binary"
        );
        let (message, _) = encode_message(b"abc", false);
        assert!(matches!(message, Some(Message::Binary(_))));
    }
}
