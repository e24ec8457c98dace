//! CONNECT and STOMP: version negotiation, heart-beats, login/passcode through the `Authorizer`,
//! and the `host` header naming the vhost. A host that names no vhost is refused as RabbitMQ
//! refuses it, unless `unknown_host_uses_default_vhost` says to use the default vhost (some
//! clients send the machine's host name there).

use std::collections::{BTreeMap, HashMap};

use junction_core::{ChannelId, Ledger, LoginRequest, Protocol};

use super::{Connection, Handled, Refusal, Session};
use crate::codec::{self, Frame, Version};

impl Connection {
    pub(super) async fn on_connect(&mut self, frame: Frame) -> Handled {
        let Some(version) = Version::negotiate(frame.get("accept-version")) else {
            return Err(Refusal::new(
                "Version mismatch",
                "Supported versions are 1.0,1.1,1.2\n",
            ));
        };
        let settings = self.settings.clone();
        let by_certificate = frame.get("login").is_none() && self.certificate_user().is_some();
        let (login, passcode) = match (frame.get("login"), frame.get("passcode")) {
            (Some(login), passcode) => (login.to_owned(), passcode.unwrap_or_default().to_owned()),
            (None, _) if let Some(user) = self.certificate_user() => {
                (user.to_owned(), String::new())
            }
            (None, _) if settings.allow_anonymous => (
                settings.anonymous_user.clone(),
                settings.anonymous_password.clone(),
            ),
            (None, _) => {
                return Err(
                    Refusal::new("Bad CONNECT", "Missing login or passcode header(s)")
                        .of_login(&self.broker, self.peer),
                );
            }
        };
        let default_vhost = self.broker.config().default_vhost.clone();
        let vhost_name = match frame.get("host") {
            Some(host) if self.broker.vhost(host).is_ok() => host.to_owned(),
            Some(host) if settings.unknown_host_uses_default_vhost => {
                tracing::info!(host, vhost = %default_vhost, "STOMP host header names no vhost; using the default vhost");
                default_vhost
            }
            Some(host) => host.to_owned(),
            None => default_vhost,
        };
        let request = if by_certificate {
            LoginRequest::by_certificate(Protocol::Stomp, &login)
        } else {
            LoginRequest::new(Protocol::Stomp, &login, &passcode)
        }
        .with_vhost(&vhost_name)
        .with_peer(self.peer);
        let principal = self
            .broker
            .auth()
            .login(&request)
            .await
            .map_err(|refused| {
                // RabbitMQ's words; the reason (bad password, unknown user, not from loopback, a
                // backend that is down) goes to the log only.
                tracing::debug!(reason = %refused.reason, "STOMP login refused");
                Refusal::new(
                    "Bad CONNECT",
                    format!("Access refused for user '{login}'\n"),
                )
                .of_login(&self.broker, self.peer)
            })?;
        // A vhost that does not exist and one the user may not use read alike, as in RabbitMQ.
        let vhost = match self.broker.vhost(&vhost_name) {
            Ok(vhost) if principal.check_vhost(&vhost_name).await => vhost,
            _ => {
                return Err(Refusal::new(
                    "Bad CONNECT",
                    format!("Virtual host '{vhost_name}' access denied"),
                ));
            }
        };
        let limit_slot = self
            .broker
            .limits()
            .admit(&principal.user.name, &vhost_name, Default::default())
            .map_err(|exceeded| {
                tracing::info!(peer = ?self.peer, %exceeded, "STOMP connection refused");
                Refusal::new("Bad CONNECT", exceeded.to_string())
            })?;
        let (client_sends, client_wants) = parse_heartbeat(frame.get("heart-beat"))
            .ok_or_else(|| Refusal::new("Bad CONNECT", "invalid heart-beat header"))?;
        // What the server offers each way: `heartbeat_ms`, or more often when the client asks
        // for it (down to MIN_HEARTBEAT_MS). Then, as the specification says, each direction
        // is the larger of what one side can send and the other wants, 0 meaning none.
        let ours = u64::from(settings.heartbeat_ms);
        let offer = |asked: u64| match (ours, asked) {
            (0, _) => 0,
            (_, 0) => ours,
            (_, asked) => ours.min(asked.max(MIN_HEARTBEAT_MS)),
        };
        let (server_sends, server_wants) = (offer(client_wants), offer(client_sends));
        let negotiated = |sends: u64, wants: u64| {
            if sends == 0 || wants == 0 {
                0
            } else {
                sends.max(wants)
            }
        };
        self.heartbeat = (
            negotiated(server_sends, client_wants),
            negotiated(client_sends, server_wants),
        );
        self.decoder.version = Some(version);
        self.decoder.limits = settings.limits;
        let session_id = format!("session-{}", self.id.0);
        self.session = Some(Session {
            vhost,
            principal,
            version,
            channel: ChannelId {
                connection: self.id,
                number: 0,
                generation: 0,
            },
            subscriptions: HashMap::new(),
            unacked: BTreeMap::new(),
            next_message: 0,
            transactions: HashMap::new(),
            temp_queues: HashMap::new(),
            permissions: junction_core::auth::AccessCache::new(),
            receipts: Ledger::new(),
            limit_slot,
        });
        self.login_ticket = None;
        // heart-beat is always there (0,0 and STOMP 1.0 too), and names what was negotiated
        // (so a client that asked for none reads 0,0), as RabbitMQ sends it. The client's own
        // negotiation from it comes out the same.
        let (sends, wants) = self.heartbeat;
        // In RabbitMQ's order: its tests match the frame whole.
        let connected = Frame::new("CONNECTED")
            .header("server", settings.server.clone())
            .header("session", session_id)
            .header("heart-beat", format!("{sends},{wants}"))
            .header("version", version.as_str());
        codec::encode(&connected, Some(version), &mut self.out);
        self.register(version);
        Ok(())
    }
}

/// The shortest heart-beat interval the server sends or expects, in milliseconds, whatever
/// a client asks for.
const MIN_HEARTBEAT_MS: u64 = 100;

/// `cx,cy` from a heart-beat header (absent: `0,0`).
fn parse_heartbeat(header: Option<&str>) -> Option<(u64, u64)> {
    let Some(text) = header else {
        return Some((0, 0));
    };
    let (sends, wants) = text.split_once(',')?;
    Some((sends.trim().parse().ok()?, wants.trim().parse().ok()?))
}
