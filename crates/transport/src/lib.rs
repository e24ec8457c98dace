//! Listeners: they accept connections and hand each stream to a protocol's handler. They only
//! move bytes; what the bytes mean is the protocol adapters' business.
//!
//! The HTTP listeners (`http.rs`) run hyper with a request-head timeout; WebSocket
//! connections (`websocket.rs`, `bridge.rs`) become byte streams with bounded buffers, and a
//! client's reads are capped until it has logged in (`allowance.rs`).
//!
//! Also the connection I/O pieces the adapters' drivers share: [`Conduit`] (a stream and its
//! buffers), [`LazyChannel`], [`Turns`] and [`broker_signals`], and the [`ParkingLot`] where
//! idle connections wait without a task.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod allowance;
mod bridge;
mod close_request;
mod conduit;
mod driver;
mod gate;
mod http;
mod lazy_channel;
mod park;
mod peer;
mod stream;
mod tls;
mod websocket;

pub use allowance::{Allowance, Metered};
pub use close_request::CloseRequest;
pub use conduit::{Conduit, Traffic};
pub use driver::{Arrival, BrokerSignal, BrokerSignals, Turns, broker_signals};
pub use gate::{LoginGate, LoginTicket};
pub use http::{HEADER_READ_TIMEOUT, MAX_HEAD_BUFFER, serve_http};
pub use lazy_channel::LazyChannel;
pub use park::{Detach, ParkingLot, Resume, Spot};
pub use peer::{Peer, TlsInfo};
pub use stream::ClientStream;
pub use tls::{
    Alpn, CertificateName, SanKind, Tls, TlsError, TlsFiles, TlsListener, certificate_name,
};

pub use websocket::{
    HandlerFuture, StaticFile, StreamHandler, WebSocketLimits, WebSocketProtocol, WebSocketRoutes,
    serve_websockets,
};

/// A listener address from the command line or configuration: `host:port`, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// Do not listen.
    Off,
    /// Listen on this `host:port` (port 0 picks a free port).
    At(String),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(ListenAddr::Off);
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ListenAddr::At(s.to_owned()))
            }
            _ => Err(format!("expected host:port or 'off', got '{s}'")),
        }
    }
}

/// Errors binding a listener.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: String,
    /// Why it failed.
    pub source: std::io::Error,
}

/// Binds a TCP listener.
pub async fn bind_tcp(addr: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr: addr.to_owned(),
        source,
    })
}

/// Accepts connections until `shutdown` turns true, spawning `handle` for each. Accept errors
/// (such as running out of file descriptors) back off instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream, peer));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Accepts clients as [`accept_loop`] does, runs each one's TLS handshake when `tls` is
/// given (within its handshake timeout, in the client's own task), and spawns `handle` for
/// the connections that got through. With a `gate`, each client first takes a login ticket
/// (closed at once when there is none), which it hands to its protocol in its [`Peer`].
pub async fn accept_clients<F, Fut>(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsListener>,
    gate: Option<LoginGate>,
    handle: F,
) where
    F: Fn(ClientStream, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    accept_loop(listener, shutdown, move |stream, addr| {
        let handle = handle.clone();
        let tls = tls.clone();
        let ticket = match &gate {
            None => Ok(None),
            Some(gate) => gate
                .enter()
                .map(|ticket| Some(std::sync::Arc::new(ticket)))
                .ok_or(()),
        };
        async move {
            // Dropping the stream closes it.
            let Ok(login_ticket) = ticket else { return };
            let (stream, mut peer) = match tls {
                None => (ClientStream::Tcp(stream), Peer::plain(addr)),
                // Boxed: the handshake's state (a rustls session and a timer) would
                // otherwise be part of every plain connection's task, for its whole life.
                Some(tls) => match Box::pin(tls.accept(stream, addr)).await {
                    Some(accepted) => accepted,
                    None => return,
                },
            };
            peer.login_ticket = login_ticket;
            handle(stream, peer).await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::ListenAddr;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("off".parse(), Ok(ListenAddr::Off));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(ListenAddr::At("127.0.0.1:0".into()))
        );
        assert_eq!(
            "[::1]:5672".parse(),
            Ok(ListenAddr::At("[::1]:5672".into()))
        );
        assert!("5672".parse::<ListenAddr>().is_err());
        assert!("localhost:x".parse::<ListenAddr>().is_err());
    }
}
