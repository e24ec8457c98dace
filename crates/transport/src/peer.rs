//! Who is at the other end of a connection, as far as the transport knows: the address and,
//! over TLS, the session's version and the user name the client's certificate carries.

use std::net::SocketAddr;
use std::sync::Arc;

/// The far end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address (None for in-process streams).
    pub addr: Option<SocketAddr>,
    /// The TLS session, when the connection came over TLS.
    pub tls: Option<Arc<TlsInfo>>,
    /// Its place among the connections logging in (see [`crate::LoginGate`]): the protocol
    /// drops it once the client has logged in.
    pub login_ticket: Option<Arc<crate::gate::LoginTicket>>,
}

impl Peer {
    /// A plain TCP (or WebSocket over TCP) client at `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr: Some(addr),
            tls: None,
            login_ticket: None,
        }
    }

    /// The user name the client's verified certificate carries, if any.
    pub fn certificate_user(&self) -> Option<&str> {
        self.tls.as_ref()?.certificate_user.as_deref()
    }
}

/// A TLS session's facts, for certificate login and the management API.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The negotiated cipher suite's name.
    pub cipher: &'static str,
    /// The negotiated cipher suite's IANA number, which tells the version and the name too
    /// (see [`TlsInfo::describe_suite`]): what a connection that must stay small keeps.
    pub suite: u16,
    /// The user name from the client's certificate, verified against the configured CA
    /// (only with `verify_peer`; None when the client sent no certificate).
    pub certificate_user: Option<String>,
}

impl TlsInfo {
    /// The TLS version and the name of the cipher suite numbered `suite`: TLS 1.3's suites
    /// (0x1301 to 0x1305) are TLS 1.3's alone, and Junction offers only 1.2 besides.
    pub fn describe_suite(suite: u16) -> (&'static str, &'static str) {
        let version = if (0x1301..=0x1305).contains(&suite) {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        let cipher = rustls::CipherSuite::from(suite)
            .as_str()
            .unwrap_or("unknown");
        (version, cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::TlsInfo;

    #[test]
    fn a_suite_number_tells_the_version_and_the_name() {
        assert_eq!(
            TlsInfo::describe_suite(0x1302),
            ("TLSv1.3", "TLS13_AES_256_GCM_SHA384")
        );
        assert_eq!(
            TlsInfo::describe_suite(0xc02f),
            ("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
        );
    }
}
