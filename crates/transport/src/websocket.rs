//! WebSocket listeners. A WebSocket connection is turned into a byte stream (one half of an
//! in-memory duplex pipe), so the MQTT and STOMP adapters run over it exactly as over TCP and
//! never see WebSocket messages: packets split across messages or batched within one are the
//! same bytes to them.
//!
//! One listener can serve several protocols on `/ws`; the client's `Sec-WebSocket-Protocol`
//! picks the handler (`mqtt`, `v12.stomp`, ...). A listener may name a protocol to assume when
//! the client offers none of its protocols (RabbitMQ's Web-MQTT and Web-STOMP listeners do).
//!
//! Each protocol brings its [`WebSocketLimits`]: the largest message (and frame) accepted,
//! and how much a client may send before the adapter has answered its login. Connections are
//! run by `http.rs` (request-head timeout) and bridged by `bridge.rs` (bounded buffers).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bridge::{self, MAX_WRITE_BUFFER};
use crate::http::{ConnectionAllowance, serve_http};
use crate::peer::Peer;
use crate::tls::TlsListener;

/// The boxed future a [`StreamHandler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one protocol connection over a byte stream (the adapter's `serve`).
pub type StreamHandler = Arc<dyn Fn(DuplexStream, Peer) -> HandlerFuture + Send + Sync>;

/// What tungstenite reads from the socket at once. Its read buffer is allocated (and
/// touched) at this size for every connection, so it is small: idle connections are many.
const READ_BUFFER: usize = 4 * 1024;

/// The limits of one protocol over WebSocket.
#[derive(Debug, Clone, Copy)]
pub struct WebSocketLimits {
    /// The largest message, and the largest frame, accepted from a client (the adapter's
    /// largest frame or packet, plus its framing); a larger one closes the connection.
    pub max_message_size: usize,
    /// The bytes (WebSocket framing included) a client may send before the adapter has
    /// written anything, that is before its login is answered; past them the client is not
    /// read until then (the adapter's login timeout closes it).
    pub pre_login_bytes: usize,
}

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
    /// Message sizes and what may be sent before login.
    pub limits: WebSocketLimits,
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
    /// More routes served on the same port (the management API and console).
    pub extra: Option<Router>,
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
/// paths, then the extra routes; other paths are 404.
pub async fn serve_websockets(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsListener>,
    head_timeout: std::time::Duration,
    mut routes: WebSocketRoutes,
) {
    let extra = routes.extra.take();
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
    let mut app = app.with_state(Arc::new(routes));
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    serve_http(listener, shutdown, tls, head_timeout, app).await;
}

async fn upgrade(
    ws: WebSocketUpgrade,
    Extension(peer): Extension<Peer>,
    Extension(ConnectionAllowance(allowance)): Extension<ConnectionAllowance>,
    State(routes): State<Arc<WebSocketRoutes>>,
) -> Response {
    let ws = ws.protocols(routes.names());
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
    let limits = protocol.limits;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(limits.max_message_size)
        .max_frame_size(limits.max_message_size);
    allowance.limit(limits.pre_login_bytes);
    ws.on_upgrade(move |socket| bridge::run(socket, peer, protocol, allowance))
}
