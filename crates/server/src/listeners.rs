//! Starting the listeners: each binds, prints its `listening <name> <addr>` line, and serves
//! connections until shutdown, counted so shutdown can wait for them to close.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use junction_transport::{
    ClientStream, ListenAddr, LoginGate, Peer, TlsListener, WebSocketLimits, WebSocketProtocol,
    WebSocketRoutes, accept_clients, bind_tcp, serve_http, serve_websockets,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// The running listeners, the shutdown signal they share and the count of open connections.
pub struct Listeners {
    tasks: JoinSet<()>,
    shutdown: watch::Receiver<bool>,
    connections: Tracker,
    /// Told of each bound listener, for the management API's overview.
    admin: Arc<junction_admin::Admin>,
    /// How long an HTTP client has to send a request head (the WebSocket upgrade included).
    head_timeout: std::time::Duration,
    /// The cap on AMQP, MQTT and STOMP connections logging in at once.
    gate: LoginGate,
}

impl Listeners {
    /// No listeners yet; `shutdown` turning true stops them all.
    /// HTTP clients get `head_timeout` to send each request head; protocol clients pass
    /// `gate` before they log in.
    pub fn new(
        shutdown: watch::Receiver<bool>,
        admin: Arc<junction_admin::Admin>,
        head_timeout: std::time::Duration,
        gate: LoginGate,
    ) -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown,
            connections: Tracker::default(),
            admin,
            head_timeout,
            gate,
        }
    }

    /// Binds listener `name`, prints its `listening` line and tells the management API.
    pub async fn bind(&self, name: &str, addr: &str) -> anyhow::Result<TcpListener> {
        let listener = bind_tcp(addr).await?;
        let bound = listener.local_addr().context("listener has no address")?;
        println!("listening {name} {bound}");
        // RabbitMQ's protocol names for the overview's listeners.
        let protocol = match name {
            "web-stomp" => "http/web-stomp",
            "web-mqtt" => "http/web-mqtt",
            "prometheus" => "http/prometheus",
            "amqps" => "amqp/ssl",
            "mqtts" => "mqtt/ssl",
            "stomps" => "stomp/ssl",
            "https" => "https",
            "web-stomps" => "https/web-stomp",
            "web-mqtts" => "https/web-mqtt",
            "prometheus-tls" => "https/prometheus",
            other => other,
        };
        self.admin.add_listener(protocol, bound);
        Ok(listener)
    }

    /// Serves a protocol on TCP at `addr` (nothing when it is `off`), over TLS when `tls`
    /// is given. `serve` runs one connection: stream, peer, shutdown signal.
    pub async fn tcp<F, Fut>(
        &mut self,
        name: &str,
        addr: ListenAddr,
        tls: Option<TlsListener>,
        serve: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(ClientStream, Peer, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let ListenAddr::At(addr) = addr else {
            return Ok(());
        };
        let listener = self.bind(name, &addr).await?;
        let shutdown = self.shutdown.clone();
        let connections = self.connections.clone();
        self.tasks.spawn(accept_clients(
            listener,
            self.shutdown.clone(),
            tls,
            Some(self.gate.clone()),
            move |stream, peer| {
                let guard = connections.enter();
                let connection = serve(stream, peer, shutdown.clone());
                async move {
                    connection.await;
                    drop(guard);
                }
            },
        ));
        Ok(())
    }

    /// A protocol for WebSocket listeners, selected by the subprotocol `names`, with its
    /// message and pre-login limits.
    pub fn websocket_protocol<F, Fut>(
        &self,
        names: Vec<&'static str>,
        text_output: bool,
        limits: WebSocketLimits,
        serve: F,
    ) -> WebSocketProtocol
    where
        F: Fn(tokio::io::DuplexStream, Peer, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let connections = self.connections.clone();
        WebSocketProtocol {
            names,
            text_output,
            limits,
            handler: Arc::new(move |stream, peer| {
                let guard = connections.enter();
                let connection = serve(stream, peer, shutdown.clone());
                Box::pin(async move {
                    connection.await;
                    drop(guard);
                })
            }),
        }
    }

    /// Serves WebSocket upgrades at `/ws` on `addr` (nothing when it is `off`), over TLS
    /// when `tls` is given.
    pub async fn websocket(
        &mut self,
        name: &str,
        addr: ListenAddr,
        tls: Option<TlsListener>,
        routes: WebSocketRoutes,
    ) -> anyhow::Result<()> {
        let ListenAddr::At(addr) = addr else {
            return Ok(());
        };
        let listener = self.bind(name, &addr).await?;
        self.tasks.spawn(serve_websockets(
            listener,
            self.shutdown.clone(),
            tls,
            self.head_timeout,
            routes,
        ));
        Ok(())
    }

    /// Serves plain HTTP routes on `addr` (nothing when it is `off`), over TLS when `tls` is
    /// given.
    pub async fn http(
        &mut self,
        name: &str,
        addr: ListenAddr,
        tls: Option<TlsListener>,
        routes: axum::Router,
    ) -> anyhow::Result<()> {
        let ListenAddr::At(addr) = addr else {
            return Ok(());
        };
        let listener = self.bind(name, &addr).await?;
        self.tasks.spawn(serve_http(
            listener,
            self.shutdown.clone(),
            tls,
            self.head_timeout,
            routes,
        ));
        Ok(())
    }

    /// Waits for the listeners to stop (after shutdown), then up to `grace` for connections
    /// to close; false if some were still open.
    pub async fn stopped(mut self, grace: std::time::Duration) -> bool {
        while self.tasks.join_next().await.is_some() {}
        tokio::time::timeout(grace, self.connections.idle())
            .await
            .is_ok()
    }
}

/// Counts live connections so shutdown can wait for them to close.
#[derive(Clone, Default)]
struct Tracker(Arc<(AtomicUsize, Notify)>);

struct Guard(Tracker);

impl Tracker {
    fn enter(&self) -> Guard {
        self.0.0.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.0.0.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if (self.0).0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.0).0.1.notify_waiters();
        }
    }
}
