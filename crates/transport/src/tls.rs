//! TLS for every listener, with rustls (the `ring` provider), TLS 1.2 and 1.3 only.
//!
//! [`Tls`] holds the server configurations built from one certificate, key and (for client
//! certificates) CA file: one per ALPN offer, so MQTT listeners say `mqtt` and HTTP listeners
//! `http/1.1` while AMQP and STOMP, which have no registered name, offer none. [`Tls::reload`]
//! reads the files again and swaps the configurations in: connections already open keep the
//! session they made, new ones get the new certificate. A file that cannot be read or parsed
//! is an error at start and, on reload, leaves the old configuration in force.
//!
//! [`TlsListener`] runs one connection's handshake within the handshake timeout and tells who
//! the client is: with `verify_peer`, the name its certificate carries (its common name, or
//! a subject alternative name), which the protocols use for certificate login (AMQP's
//! `EXTERNAL`, MQTT and STOMP without a user name).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::peer::{Peer, TlsInfo};
use crate::stream::ClientStream;

/// Which name of a client certificate is its user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateName {
    /// The subject's common name (CN), as RabbitMQ's `ssl_cert_login_from = common_name`.
    #[default]
    CommonName,
    /// The first subject alternative name of this kind.
    SubjectAltName(SanKind),
}

/// A kind of subject alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// A DNS name.
    Dns,
    /// An e-mail address (RFC 822 name).
    Email,
    /// A URI.
    Uri,
}

/// Where the certificate, key and CA come from, and what is asked of clients.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain, PEM, the server's own certificate first.
    pub certfile: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// CA certificates, PEM, that client certificates are verified against.
    pub cacertfile: Option<PathBuf>,
    /// Ask clients for a certificate (and verify any they send).
    pub verify_peer: bool,
    /// Refuse clients that send no certificate (with `verify_peer`).
    pub fail_if_no_peer_cert: bool,
    /// Which name of a verified client certificate is the client's user name, for
    /// certificate login; None turns certificate login off.
    pub login_name: Option<CertificateName>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The files are readable but rustls refused them (a key that does not match the
    /// certificate, an unusable CA, `verify_peer` without a CA file).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The protocol names a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// None (AMQP and STOMP have no registered name; clients do not send one).
    None,
    /// `mqtt`, the name IANA registered for MQTT.
    Mqtt,
    /// `http/1.1`, for the HTTP and WebSocket listeners.
    Http,
}

/// The server configurations, one per ALPN offer.
struct Configs {
    none: Arc<ServerConfig>,
    mqtt: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The TLS configuration every TLS listener shares; reloadable.
pub struct Tls {
    files: TlsFiles,
    configs: ArcSwap<Configs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads the files and builds the configurations.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let configs = build(&files)?;
        Ok(Arc::new(Self {
            files,
            configs: ArcSwap::from_pointee(configs),
        }))
    }

    /// Reads the files again; new connections use what they hold from now on. On an error
    /// the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.files)?;
        self.configs.store(Arc::new(configs));
        Ok(())
    }

    /// Which name of a client certificate is its user name (None: no certificate login).
    pub fn login_name(&self) -> Option<CertificateName> {
        self.files.login_name
    }

    /// The configuration in force for listeners offering `alpn`.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let configs = self.configs.load();
        match alpn {
            Alpn::None => configs.none.clone(),
            Alpn::Mqtt => configs.mqtt.clone(),
            Alpn::Http => configs.http.clone(),
        }
    }
}

/// Runs TLS handshakes for one listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// The shared configuration.
    pub tls: Arc<Tls>,
    /// What this listener offers in ALPN.
    pub alpn: Alpn,
    /// How long a client has to finish the handshake.
    pub handshake_timeout: Duration,
}

impl TlsListener {
    /// Runs the handshake on `stream` from `addr`; None (logged) if it fails or takes longer
    /// than the handshake timeout.
    pub async fn accept(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Option<(ClientStream, Peer)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.config(self.alpn));
        let stream =
            match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(peer = %addr, %error, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return None;
                }
            };
        let session = stream.get_ref().1;
        let certificate_user = self.tls.login_name().and_then(|name| {
            let leaf = session.peer_certificates()?.first()?;
            certificate_name(leaf, name)
        });
        let suite = session
            .negotiated_cipher_suite()
            .map_or(0, |suite| u16::from(suite.suite()));
        let (version, cipher) = TlsInfo::describe_suite(suite);
        let info = TlsInfo {
            version,
            cipher,
            suite,
            certificate_user,
        };
        Some((
            ClientStream::Tls(Box::new(stream)),
            Peer {
                addr: Some(addr),
                tls: Some(Arc::new(info)),
                login_ticket: None,
            },
        ))
    }
}

/// The user name a verified client certificate (DER) carries, as `name` asks.
pub fn certificate_name(der: &CertificateDer<'_>, name: CertificateName) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    match name {
        CertificateName::CommonName => certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertificateName::SubjectAltName(kind) => {
            let names = certificate.subject_alternative_name().ok()??;
            names.value.general_names.iter().find_map(|general| {
                use x509_parser::extensions::GeneralName;
                match (kind, general) {
                    (SanKind::Dns, GeneralName::DNSName(name))
                    | (SanKind::Email, GeneralName::RFC822Name(name))
                    | (SanKind::Uri, GeneralName::URI(name)) => Some((*name).to_owned()),
                    _ => None,
                }
            })
        }
    }
}

fn build(files: &TlsFiles) -> Result<Configs, TlsError> {
    let chain = read_certificates("certificate file", &files.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&files.keyfile).map_err(|error| TlsError::File {
        what: "key file",
        path: files.keyfile.clone(),
        reason: error.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = if files.verify_peer {
        let Some(cacertfile) = &files.cacertfile else {
            return Err(TlsError::Config(
                "verify_peer needs cacertfile, the CA that client certificates are checked against"
                    .into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates("CA file", cacertfile)? {
            roots.add(certificate).map_err(|error| TlsError::File {
                what: "CA file",
                path: cacertfile.clone(),
                reason: error.to_string(),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if files.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut base = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    // No TLS 1.3 session tickets, as RabbitMQ (Erlang's ssl) sends none by default. A ticket
    // arrives right after the handshake, while clients such as stomp.py read on one thread
    // and write CONNECT on another over one OpenSSL session, which is not safe to share:
    // about one connection in three lost its first frame or failed with an EOF.
    base.send_tls13_tickets = 0;
    let with_alpn = |name: &[u8]| {
        let mut config = base.clone();
        config.alpn_protocols = vec![name.to_vec()];
        Arc::new(config)
    };
    Ok(Configs {
        mqtt: with_alpn(b"mqtt"),
        http: with_alpn(b"http/1.1"),
        none: Arc::new(base),
    })
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_certificate(cn: &str, sans: Vec<String>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    #[test]
    fn the_login_name_is_the_common_name_or_the_chosen_alternative_name() {
        let der = client_certificate("device-7", vec!["device-7.example".into()]);
        assert_eq!(
            certificate_name(&der, CertificateName::CommonName).as_deref(),
            Some("device-7")
        );
        assert_eq!(
            certificate_name(&der, CertificateName::SubjectAltName(SanKind::Dns)).as_deref(),
            Some("device-7.example")
        );
        assert_eq!(
            certificate_name(&der, CertificateName::SubjectAltName(SanKind::Email)),
            None
        );
        assert_eq!(
            certificate_name(
                &CertificateDer::from(vec![1, 2, 3]),
                CertificateName::CommonName
            ),
            None
        );
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("junction-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        std::fs::write(&key, "").expect("write");
        let files = TlsFiles {
            certfile: cert.clone(),
            keyfile: key.clone(),
            cacertfile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            login_name: Some(CertificateName::CommonName),
        };
        let error = Tls::load(files.clone()).expect_err("no certificate");
        assert!(error.to_string().contains("certificate file"), "{error}");
        let signed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&cert, signed.cert.pem()).expect("write");
        let error = Tls::load(files.clone()).expect_err("no key");
        assert!(error.to_string().contains("key file"), "{error}");
        std::fs::write(&key, signed.signing_key.serialize_pem()).expect("write");
        let tls = Tls::load(files.clone()).expect("loads");
        assert_eq!(
            tls.config(Alpn::Mqtt).alpn_protocols,
            vec![b"mqtt".to_vec()]
        );
        let error = Tls::load(TlsFiles {
            verify_peer: true,
            ..files
        })
        .expect_err("no CA");
        assert!(error.to_string().contains("cacertfile"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
