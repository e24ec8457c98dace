//! CONNECT: protocol checks, client id rules, authentication (a `vhost:user` name selects the
//! vhost, as in RabbitMQ), takeover of a session held by another connection, and resumption
//! or removal of a persistent session, each with the permission RabbitMQ asks for: configure
//! on the session's queue to remove it, read to resume it.

use junction_core::{
    CoreError, ErrorKind, LoginRequest, Permission, Principal, Protocol, QueueSpec, ResourceKind,
    VirtualHost,
};

use super::{Connection, Flow, Handled, Next, Session, Violation};
use crate::codec::{self, Connect, ConnectReturnCode, Packet};
use crate::sessions::{SessionKey, SessionState};
use crate::topic;

impl Connection {
    pub(super) async fn on_connect(&mut self, connect: Connect) -> Handled {
        if connect.protocol_name != "MQTT" && connect.protocol_name != "MQIsdp" {
            return Err(Violation(format!(
                "unknown protocol name '{}'",
                connect.protocol_name
            )));
        }
        if connect.protocol_name != "MQTT" || connect.protocol_level != 4 {
            return Ok(self.refuse(ConnectReturnCode::UnacceptableProtocolVersion));
        }
        if let Some(will) = &connect.will
            && !topic::valid_topic_name(&will.topic)
        {
            return Err(Violation(format!(
                "invalid will topic '{}'",
                topic::shortened(&will.topic)
            )));
        }
        let client_id = if connect.client_id.is_empty() {
            if !connect.clean_session {
                return Ok(self.refuse(ConnectReturnCode::IdentifierRejected));
            }
            generate_client_id()
        } else {
            connect.client_id.clone()
        };

        let settings = &self.mqtt.settings;
        // Its login ticket goes with it at the end of this CONNECT, accepted or not.
        let pre_login = self.pre_login.take();
        let tls = pre_login.and_then(|p| p.tls);
        let certificate_user = tls.as_ref().and_then(|t| t.certificate_user.clone());
        let by_certificate = connect.username.is_none() && certificate_user.is_some();
        let anonymous = connect.username.is_none() && !by_certificate;
        let (login, password) = match (&connect.username, &connect.password) {
            (Some(user), password) => {
                let password = match password {
                    None => String::new(),
                    Some(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) => text.to_owned(),
                        Err(_) => return Ok(self.refuse(ConnectReturnCode::BadUserNameOrPassword)),
                    },
                };
                (user.clone(), password)
            }
            (None, _) if let Some(user) = certificate_user => (user, String::new()),
            (None, _) if settings.allow_anonymous => (
                settings.anonymous_user.clone(),
                settings.anonymous_password.clone(),
            ),
            (None, _) => {
                self.log_refused_login("", &"no credentials and anonymous access is off");
                return Ok(self.refuse(ConnectReturnCode::NotAuthorized));
            }
        };
        let broker = self.mqtt.broker.clone();
        let (vhost_name, user) = match login.split_once(':') {
            Some((vhost, user)) if !vhost.is_empty() => (vhost.to_owned(), user.to_owned()),
            _ => (broker.config().default_vhost.clone(), login.clone()),
        };
        let request = if by_certificate {
            LoginRequest::by_certificate(Protocol::Mqtt, &user)
        } else {
            LoginRequest::new(Protocol::Mqtt, &user, &password)
        }
        .with_vhost(&vhost_name)
        .with_client_id(&client_id)
        .with_peer(self.peer);
        let principal = match broker.auth().login(&request).await {
            Ok(principal) => principal,
            Err(refused) => {
                let reason = refused.reason;
                self.log_refused_login(&user, &reason);
                // A client that sent no credentials gave no bad ones: it is not authorised
                // (the anonymous user may not log in from where it is, say).
                return Ok(self.refuse(if anonymous {
                    ConnectReturnCode::NotAuthorized
                } else {
                    ConnectReturnCode::BadUserNameOrPassword
                }));
            }
        };
        let vhost = match broker.vhost(&vhost_name) {
            Ok(vhost) if principal.check_vhost(&vhost_name).await => vhost,
            _ => {
                self.log_refused_login(&user, &format!("no access to vhost '{vhost_name}'"));
                return Ok(self.refuse(ConnectReturnCode::NotAuthorized));
            }
        };
        let limit_slot = match broker.limits().admit(
            &principal.user.name,
            &vhost_name,
            settings.publish_rate_per_client,
        ) {
            Ok(slot) => slot.map(Box::new),
            Err(exceeded) => {
                tracing::info!(peer = ?self.peer, %exceeded, "MQTT connection refused");
                // RabbitMQ answers a node limit with "server unavailable", a vhost or user
                // limit with "not authorised".
                return Ok(self.refuse(match exceeded {
                    junction_core::limits::LimitExceeded::Node(_) => {
                        ConnectReturnCode::ServerUnavailable
                    }
                    _ => ConnectReturnCode::NotAuthorized,
                }));
            }
        };
        let exchange = match vhost.exchange(&settings.exchange) {
            Ok(exchange) => exchange,
            Err(error) => {
                tracing::error!(exchange = settings.exchange, %error, "the MQTT exchange is missing");
                return Ok(self.refuse(ConnectReturnCode::ServerUnavailable));
            }
        };

        let key = SessionKey {
            vhost: self.mqtt.share_vhost_name(&vhost_name),
            client_id,
        };
        // Asked before the claim, so a user who may not touch the session does not kick the
        // connection holding it, and again after it (the holder may have made the queue
        // while closing), before anything is deleted or resumed.
        if let Err(reason) = self
            .may_take_session(&principal, &vhost, &key, connect.clean_session)
            .await
        {
            self.log_refused_login(&user, &reason);
            return Ok(self.refuse(ConnectReturnCode::NotAuthorized));
        }
        let claim = self
            .mqtt
            .sessions
            .claim(key.clone(), self.id, self.signal.clone())
            .await;
        if let Err(reason) = self
            .may_take_session(&principal, &vhost, &key, connect.clean_session)
            .await
        {
            self.log_refused_login(&user, &reason);
            self.mqtt.sessions.release(claim, self.id, &self.signal);
            return Ok(self.refuse(ConnectReturnCode::NotAuthorized));
        }
        let (state, session_present) = if connect.clean_session {
            self.mqtt.sessions.forget(&key);
            if let Err(error) = vhost
                .delete_queue(&key.queue_name(), false, false, self.id)
                .await
            {
                tracing::warn!(client_id = %key.client_id, %error, "cannot delete the previous session's queue");
            }
            (SessionState::default(), false)
        } else {
            match self.mqtt.sessions.take_saved(&key) {
                Some(state) => (state, true),
                None => (SessionState::default(), false),
            }
        };
        let resume = !state.subscriptions.is_empty();
        let released: Vec<u16> = state.released.iter().copied().collect();
        self.session = Some(Session {
            vhost,
            principal: self.mqtt.share_principal(principal),
            claim,
            clean: connect.clean_session,
            keep_alive: connect.keep_alive,
            exchange,
            queue: None,
            flow: (!state.is_empty()).then(|| {
                Box::new(Flow {
                    state,
                    ..Flow::default()
                })
            }),
            will: connect.will.map(Box::new),
            access: None,
            last_publish: None,
            limit_slot,
        });
        // The queue is resumed before the CONNACK, so a refusal can still be its return code
        // (the session's state is saved again when the connection ends).
        if resume && let Err(error) = self.session_queue().await {
            tracing::warn!(client_id = %key.client_id, %error, "cannot resume the session's queue");
            let code = match error.kind {
                ErrorKind::AccessRefused => ConnectReturnCode::NotAuthorized,
                _ => ConnectReturnCode::ServerUnavailable,
            };
            return Ok(self.refuse(code));
        }
        codec::encode(
            &Packet::ConnAck {
                session_present,
                code: ConnectReturnCode::Accepted,
            },
            &mut self.out,
        );
        tracing::debug!(client_id = %key.client_id, session_present, "MQTT client connected");
        self.log_in(tls);
        for id in released {
            codec::encode(&Packet::PubRel(id), &mut self.out);
        }
        Ok(Next::Continue)
    }

    /// Whether `principal` may take the session `key` as RabbitMQ's MQTT plugin decides, once
    /// the session exists (its queue, or state kept for it): a clean session deletes it, which
    /// needs configure on its queue; resuming one consumes from its queue, which needs read.
    /// A session that does not exist needs nothing here (its queue is declared, with the
    /// configure check, when first needed). The answer is not cached: a takeover is rare.
    async fn may_take_session(
        &self,
        principal: &Principal,
        vhost: &VirtualHost,
        key: &SessionKey,
        clean: bool,
    ) -> Result<(), String> {
        let queue = key.queue_name();
        if vhost.queue(&queue).is_none() && !self.mqtt.sessions.has_saved(key) {
            return Ok(());
        }
        let permission = if clean {
            Permission::Configure
        } else {
            Permission::Read
        };
        if principal
            .check_resource(&vhost.name, ResourceKind::Queue, &queue, permission)
            .await
        {
            Ok(())
        } else {
            Err(format!(
                "{} access to queue '{queue}' in vhost '{}' refused for user '{}'",
                permission.as_str(),
                vhost.name,
                principal.user.name
            ))
        }
    }

    /// Answers CONNECT with a refusal; the connection then closes.
    /// Logs a refused login, at most one line per peer address and window (the broker's
    /// [`junction_core::auth::RefusalLog`]): a client retrying in a loop does not flood the log.
    fn log_refused_login(&self, user: &str, reason: &dyn std::fmt::Display) {
        let peer = self.peer.map(|peer| peer.ip());
        if let Some(left_out) = self.mqtt.broker.refused_logins().admit("mqtt", peer) {
            tracing::info!(peer = ?self.peer, user, %reason, left_out, "MQTT login refused");
        }
    }

    fn refuse(&mut self, code: ConnectReturnCode) -> Next {
        codec::encode(
            &Packet::ConnAck {
                session_present: false,
                code,
            },
            &mut self.out,
        );
        Next::Close { graceful: true }
    }

    /// The session's queue, declared and consumed from on first need.
    pub(super) async fn session_queue(
        &mut self,
    ) -> junction_core::error::CoreResult<junction_core::QueueHandle> {
        let id = self.id;
        // One consumer per session: its sink needs no sharing.
        let sink = junction_core::ConsumerSink::new(
            self.events.sender(),
            self.mqtt.broker.config().delivery_budget,
        );
        let prefetch = self.mqtt.settings.max_inflight;
        let max_queued_qos0 = self.mqtt.settings.max_queued_qos0;
        let Some(session) = self.session.as_mut() else {
            return Err(CoreError::internal("no session"));
        };
        if let Some(queue) = &session.queue {
            return Ok(queue.clone());
        }
        // As RabbitMQ: declaring the queue needs configure (only when it is made), consuming
        // from it needs read.
        let name = session.claim.key.queue_name();
        let missing = session.vhost.queue(&name).is_none();
        for permission in [Permission::Configure, Permission::Read] {
            if (permission == Permission::Read || missing)
                && !session
                    .allowed(ResourceKind::Queue, &name, permission)
                    .await
            {
                return Err(CoreError::access_refused(format!(
                    "{} access to queue '{name}' in vhost '{}' refused for user '{}'",
                    permission.as_str(),
                    session.vhost.name,
                    session.principal.user.name
                )));
            }
        }
        let spec = QueueSpec {
            name,
            durable: !session.clean,
            exclusive: session.clean,
            auto_delete: false,
            arguments: Default::default(),
        };
        let declared = session.vhost.declare_queue(spec, false, false, id).await?;
        let queue = declared.handle;
        queue.limit_transient(max_queued_qos0);
        queue
            .consume(junction_core::ConsumerSpec {
                tag: session.consumer_tag(),
                channel: super::session_channel(id),
                no_ack: false,
                settles_transient: true,
                exclusive: false,
                prefetch,
                channel_credit: None,
                sink,
                priority: 0,
            })
            .await?;
        session.queue = Some(queue.clone());
        Ok(queue)
    }
}

/// A client id for a client that sent none (allowed with a clean session).
fn generate_client_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("junction-{hex}")
}
