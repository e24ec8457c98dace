//! The HTTP listeners' connections: our own accept loop (the one the TCP listeners use, with
//! its back-off on accept errors) and hyper's HTTP/1 connection, with the limits a stranger
//! must not get past: the request head must arrive within [`HEADER_READ_TIMEOUT`] and fit in
//! [`MAX_HEAD_BUFFER`] bytes. A connection that sends nothing, or a head byte by byte, is
//! closed when the timeout passes (keep-alive connections between requests too).
//!
//! Each connection's stream is [`Metered`], and its [`Allowance`] travels with each request
//! (as [`ConnectionAllowance`]) so a WebSocket upgrade can bound what the client sends before
//! it has logged in. Routing is axum's; this module only runs connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accept_clients;
use crate::allowance::{Allowance, Metered};
use crate::peer::Peer;
use crate::stream::ClientStream;
use crate::tls::TlsListener;

/// How long a client has to send a request head (the WebSocket upgrade included), and how
/// long a keep-alive connection may wait for its next request, unless the listener is given
/// another (the configuration's handshake timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a request head buffered (hyper answers 431 beyond).
pub const MAX_HEAD_BUFFER: usize = 32 * 1024;

/// The [`Allowance`] of the connection a request came on (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionAllowance(pub Arc<Allowance>);

/// Serves `app` on `listener` until `shutdown` turns true. Requests in flight then finish;
/// idle connections close. A request head must arrive within `head_timeout`.
pub async fn serve_http(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsListener>,
    head_timeout: Duration,
    app: Router,
) {
    let connections = shutdown.clone();
    // No login gate: HTTP requests log in one by one, and WebSocket clients are bounded by
    // the head timeout and their protocol's own login timeout.
    accept_clients(listener, shutdown, tls, None, move |stream, peer| {
        serve_connection(stream, peer, app.clone(), head_timeout, connections.clone())
    })
    .await;
}

async fn serve_connection(
    stream: ClientStream,
    peer: Peer,
    app: Router,
    head_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let allowance = Allowance::unlimited();
    let io = TokioIo::new(Metered::new(stream, allowance.clone()));
    let addr = peer
        .addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let service = Requests {
        app,
        addr,
        peer,
        allowance,
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD_BUFFER);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stop => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "HTTP connection ended");
    }
}

/// The requests of one connection, handed to the router with the peer (its address also as
/// axum's `ConnectInfo`) and the connection's allowance.
#[derive(Clone)]
struct Requests {
    app: Router,
    addr: SocketAddr,
    peer: Peer,
    allowance: Arc<Allowance>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Requests {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.addr));
        request.extensions_mut().insert(self.peer.clone());
        request
            .extensions_mut()
            .insert(ConnectionAllowance(self.allowance.clone()));
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, request)
    }
}
