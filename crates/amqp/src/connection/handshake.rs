//! The opening handshake: connection.start with our capabilities, start-ok with PLAIN or
//! AMQPLAIN credentials checked by the auth chain, tune/tune-ok, and open with vhost access.

use super::*;

impl Connection {
    /// The user name the client's verified TLS certificate carries, for `EXTERNAL`.
    fn certificate_user(&self) -> Option<&str> {
        self.session.tls.as_ref()?.certificate_user.as_deref()
    }

    pub(super) fn send_start(&mut self) {
        let settings = &self.session.settings;
        let mut capabilities = WireTable::default();
        for capability in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities.insert(capability.into(), AMQPValue::Boolean(true));
        }
        let mut properties = WireTable::default();
        properties.insert("product".into(), str_value(&settings.product));
        properties.insert("version".into(), str_value(&settings.version));
        properties.insert("platform".into(), str_value("Rust"));
        properties.insert("cluster_name".into(), str_value(&settings.cluster_name));
        properties.insert(
            "information".into(),
            str_value("Junction, a multi-protocol message broker"),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.session.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Start(Start {
                version_major: 0,
                version_minor: 9,
                server_properties: properties,
                // RabbitMQ offers EXTERNAL when its plugin is on; Junction offers it to
                // clients whose certificate names a user.
                mechanisms: if self.certificate_user().is_some() {
                    "PLAIN AMQPLAIN EXTERNAL".into()
                } else {
                    "PLAIN AMQPLAIN".into()
                },
                locales: "en_US".into(),
            })),
        );
        self.state = State::AwaitingStartOk;
    }

    pub(super) async fn on_start_ok(&mut self, m: conn::StartOk) -> AmqpResult<()> {
        if let Some(AMQPValue::FieldTable(caps)) = m.client_properties.inner().get("capabilities") {
            let flag =
                |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
            self.session.capabilities.consumer_cancel_notify = flag("consumer_cancel_notify");
            self.session.capabilities.authentication_failure_close =
                flag("authentication_failure_close");
            self.session.capabilities.connection_blocked = flag("connection.blocked");
        }
        self.session.client_properties = crate::properties::table_from_wire(&m.client_properties);
        let mechanism = m.mechanism.as_str();
        let credentials = match mechanism {
            "PLAIN" => plain_credentials(m.response.as_bytes()),
            "AMQPLAIN" => amqplain_credentials(m.response.as_bytes()),
            "EXTERNAL" => match self.certificate_user() {
                Some(user) => Some((user.to_owned(), String::new())),
                None => {
                    return Err(AmqpError::connection(
                        code::ACCESS_REFUSED,
                        "EXTERNAL login mechanism needs a verified TLS client certificate",
                    ));
                }
            },
            other => {
                return Err(AmqpError::connection(
                    code::ACCESS_REFUSED,
                    format!("unsupported authentication mechanism '{other}'"),
                ));
            }
        };
        let Some((username, password)) = credentials else {
            return Err(AmqpError::connection(
                code::ACCESS_REFUSED,
                format!("malformed {mechanism} response"),
            ));
        };
        let request = if mechanism == "EXTERNAL" {
            LoginRequest::by_certificate(Protocol::Amqp, &username)
        } else {
            LoginRequest::new(Protocol::Amqp, &username, &password)
        }
        .with_peer(self.session.peer);
        match self.session.broker.auth().login(&request).await {
            Ok(principal) => {
                self.session.principal = Some(principal);
                self.session.auth_mechanism = match mechanism {
                    "AMQPLAIN" => "AMQPLAIN",
                    "EXTERNAL" => "EXTERNAL",
                    _ => "PLAIN",
                };
            }
            Err(refused) => {
                let reason = refused.reason;
                // One line per peer address and window: a client retrying in a loop does not
                // flood the log.
                let peer = self.session.peer.map(|peer| peer.ip());
                if let Some(left_out) = self.session.broker.refused_logins().admit("amqp", peer) {
                    tracing::warn!(user = %username, peer = ?self.session.peer, %reason, left_out, "login refused");
                }
                let error = AmqpError::connection(
                    code::ACCESS_REFUSED,
                    format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ),
                );
                if self.session.capabilities.authentication_failure_close {
                    return Err(error);
                }
                // Clients without the capability expect the socket to close (AMQP 0-9-1 §2.2.4).
                self.state = State::Closed;
                return Ok(());
            }
        }
        let settings = &self.session.settings;
        self.session.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Tune(Tune {
                channel_max: settings.channel_max,
                frame_max: settings.frame_max,
                heartbeat: settings.heartbeat,
            })),
        );
        self.state = State::AwaitingTuneOk;
        Ok(())
    }

    /// Checks the client's choices against what connection.tune offered, as RabbitMQ does:
    /// a value above the offer (or 0, "no limit", when the offer has one) or below the minimum
    /// closes the connection with 530.
    pub(super) fn on_tune_ok(&mut self, m: conn::TuneOk) -> AmqpResult<()> {
        let settings = self.session.settings.clone();
        negotiated(
            "frame_max",
            FRAME_MIN_SIZE as u64,
            u64::from(settings.frame_max),
            u64::from(m.frame_max),
        )?;
        negotiated(
            "channel_max",
            1,
            u64::from(settings.channel_max),
            u64::from(m.channel_max),
        )?;
        let frame_max = if m.frame_max == 0 {
            settings.frame_max
        } else {
            m.frame_max
        };
        let channel_max = if m.channel_max == 0 {
            settings.channel_max
        } else {
            m.channel_max
        };
        self.session.frame_max = frame_max as usize;
        self.session.channel_max = channel_max;
        self.session.heartbeat = m.heartbeat;
        self.state = State::AwaitingOpen;
        Ok(())
    }

    pub(super) async fn on_open(&mut self, m: conn::Open) -> AmqpResult<()> {
        let name = m.virtual_host.as_str();
        let vhost = self.session.broker.vhost(name).map_err(|_| {
            AmqpError::connection(code::NOT_ALLOWED, format!("vhost {name} not found"))
        })?;
        let Some(principal) = &self.session.principal else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "not logged in",
            ));
        };
        if !principal.check_vhost(name).await {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "access to vhost '{name}' refused for user '{}'",
                    principal.user.name
                ),
            ));
        }
        let slot = self
            .session
            .broker
            .limits()
            .admit(&principal.user.name, name, Default::default())
            .map_err(|exceeded| {
                tracing::info!(peer = ?self.session.peer, %exceeded, "connection refused");
                AmqpError::connection(code::NOT_ALLOWED, exceeded.to_string())
            })?;
        self.session.limit_slot = slot;
        self.session.login_ticket = None;
        self.session.vhost = Some(vhost);
        self.session.register(name);
        self.session.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::OpenOk(OpenOk {})),
        );
        self.state = State::Open;
        Ok(())
    }
}

/// One value of tune-ok checked against the server's offer (0: no limit) and the minimum, with
/// RabbitMQ's reply text.
fn negotiated(field: &str, min: u64, offered: u64, chosen: u64) -> AmqpResult<()> {
    let detail = if field == "channel_max" && chosen == 0 {
        " (no limit)"
    } else {
        ""
    };
    let refuse = |direction: &str, bound: &str, value: u64| {
        Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "negotiated {field} = {chosen}{detail} is {direction} than the {bound} allowed value ({value})"
            ),
        )
        .during((10, 31)))
    };
    if chosen != 0 && chosen < min {
        return refuse("lower", "minimum", min);
    }
    if offered != 0 && (chosen == 0 || chosen > offered) {
        return refuse("higher", "maximum", offered);
    }
    Ok(())
}

/// PLAIN: `authzid NUL authcid NUL password`.
fn plain_credentials(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let pass = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    Some((user, pass))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
fn amqplain_credentials(response: &[u8]) -> Option<(String, String)> {
    let mut framed = BytesMut::with_capacity(response.len() + 4);
    framed.put_u32(u32::try_from(response.len()).ok()?);
    framed.extend_from_slice(response);
    nesting::check_table_bytes(&framed, MAX_DEPTH).ok()?;
    let (_, table) = parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn plain_responses_are_split_on_nul() {
        assert_eq!(
            plain_credentials(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(plain_credentials(b"guest"), None);
    }

    #[test]
    fn amqplain_responses_are_read_as_tables() {
        let response = amq_protocol::auth::Credentials::new("bob".into(), "pw".into())
            .sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(
            amqplain_credentials(response.as_bytes()),
            Some(("bob".into(), "pw".into()))
        );
    }

    #[test]
    fn tune_ok_beyond_the_offer_is_refused_as_rabbitmq_does() {
        assert!(negotiated("channel_max", 1, 2047, 2047).is_ok());
        assert!(negotiated("channel_max", 1, 2047, 1).is_ok());
        assert!(negotiated("channel_max", 1, 0, 0).is_ok());
        let error = negotiated("channel_max", 1, 2047, 3000).expect_err("too many channels");
        assert_eq!(error.code, code::NOT_ALLOWED);
        assert_eq!(
            error.text,
            "negotiated channel_max = 3000 is higher than the maximum allowed value (2047)"
        );
        let error = negotiated("channel_max", 1, 2047, 0).expect_err("no limit");
        assert_eq!(
            error.text,
            "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"
        );
        let error = negotiated("frame_max", 4096, 131_072, 1024).expect_err("too small");
        assert_eq!(
            error.text,
            "negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"
        );
        assert!(negotiated("frame_max", 4096, 131_072, 131_073).is_err());
    }

    #[test]
    fn amqplain_tables_nested_too_deep_are_refused_before_parsing() {
        // LOGIN, then `k` holding 10,000 tables each holding the next as `k`.
        let depth = 10_000u32;
        let mut response = b"\x05LOGINS\x00\x00\x00\x01u\x01kF".to_vec();
        for level in 1..=depth {
            response.extend_from_slice(&(7 * (depth - level)).to_be_bytes());
            if level < depth {
                response.extend_from_slice(b"\x01kF");
            }
        }
        assert_eq!(amqplain_credentials(&response), None);
    }

    #[test]
    fn unknown_methods_are_not_implemented_and_garbage_is_a_syntax_error() {
        let unknown = decode_method(&[0, 60, 0, 99]).expect_err("unknown");
        assert_eq!(unknown.code, code::NOT_IMPLEMENTED);
        let garbage = decode_method(&[0, 50, 0, 10, 0xff]).expect_err("malformed");
        assert_eq!(garbage.code, code::SYNTAX_ERROR);
    }
}
