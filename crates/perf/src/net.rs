//! Connections of the MQTT and STOMP clients: plain TCP, or TLS when `--cacert` names the CA
//! the broker's certificate is checked against (rustls, the same library the broker uses, so a
//! TLS run costs both brokers under test the same on the client side).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The reading half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A TLS client configuration trusting one CA file.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `cacert`; TLS 1.2 only with `tls12`.
    pub fn trusting(cacert: &Path, tls12: bool) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(cacert)
            .with_context(|| format!("cannot read {}", cacert.display()))?
        {
            roots.add(certificate.with_context(|| format!("bad PEM in {}", cacert.display()))?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(if tls12 {
            TLS12_ONLY
        } else {
            rustls::DEFAULT_VERSIONS
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// Writes `bytes` and flushes: over TLS the last records may otherwise wait in the
/// session's buffer (over TCP the flush does nothing).
pub async fn send(write: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    write.write_all(bytes).await?;
    write.flush().await
}

/// Connects to `host:port`, over TLS with `tls` (the certificate must name `host`).
pub async fn open(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
) -> anyhow::Result<(ReadHalf, WriteHalf)> {
    let stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    stream.set_nodelay(true)?;
    match tls {
        None => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Some(tls) => {
            let name = ServerName::try_from(host.to_owned())?;
            let stream = tls
                .connector
                .connect(name, stream)
                .await
                .with_context(|| format!("TLS handshake with {host}:{port} failed"))?;
            let (read, write) = tokio::io::split(stream);
            Ok((Box::new(EofWithoutCloseNotify(read)), Box::new(write)))
        }
    }
}

/// A TLS reading half that takes the end of the TCP stream as the end of the connection even
/// without a TLS close_notify before it: RabbitMQ's MQTT listener closes that way after
/// DISCONNECT, and MQTT and STOMP frame their own ends, so there is nothing to truncate.
struct EofWithoutCloseNotify<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for EofWithoutCloseNotify<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(error))
                if error.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
