//! An [`AuthBackend`] that asks an HTTP server, compatible with RabbitMQ's
//! `rabbitmq_auth_backend_http`: the same four paths (user, vhost, resource, topic), the same
//! parameter names (a query string for GET, a form body for POST) and the same answers, a body
//! of `allow`, `allow <tags...>` (user path only) or `deny`.
//!
//! A `deny` at login passes the login to the next backend, as in RabbitMQ. A server that
//! cannot be reached, answers with a status other than 200 or takes longer than the timeout
//! makes the backend *unavailable*: logged, and an operation is refused; a login goes on to
//! the next backend and is refused as unavailable if none lets the user in. A topic path left out allows every routing key.
//! Answers are cached by the broker's authoriser (`[auth] cache_ttl_ms`), so a busy publisher
//! does not cost a request per message. Plain `http://` only for now.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use junction_core::auth::{
    AuthBackend, Decision, LoginOutcome, LoginRequest, ResourceRequest, TopicRequest, User,
    VhostRequest, async_trait,
};

/// The largest answer read, in bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// GET (query string) or POST (form body), as RabbitMQ's `http_method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Parameters in the query string (RabbitMQ's default).
    #[default]
    Get,
    /// Parameters in an `application/x-www-form-urlencoded` body (keeps passwords out of
    /// access logs).
    Post,
}

/// The backend's settings: `[auth.http]` in the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// GET or POST.
    #[serde(default)]
    pub method: Method,
    /// Asked at login: `username`, `password` (and `vhost`, `client_id` when the protocol
    /// gives them).
    pub user_path: String,
    /// Asked when a vhost is opened: `username`, `vhost`, `ip`, `tags`.
    pub vhost_path: String,
    /// Asked for queues and exchanges: `username`, `vhost`, `resource`, `name`,
    /// `permission`, `tags`.
    pub resource_path: String,
    /// Asked for routing keys on topic exchanges: `username`, `vhost`, `resource` (`topic`),
    /// `name` (the exchange), `permission`, `routing_key`, `tags` and `variable_map.*`.
    /// Absent: every routing key is allowed.
    #[serde(default)]
    pub topic_path: Option<String>,
    /// How long one request may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5000
}

/// The HTTP auth backend.
pub struct HttpBackend {
    settings: Settings,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What the server said.
enum Answer {
    Allow(Vec<String>),
    Deny,
}

impl HttpBackend {
    /// A backend with `settings`. Needs a Tokio runtime when it is asked, not when it is
    /// made.
    pub fn new(settings: Settings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(settings.timeout_ms)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { settings, client }
    }

    /// Asks `url` with `parameters`; an error says why no answer came.
    async fn ask(&self, url: &str, parameters: &[(&str, &str)]) -> Result<Answer, String> {
        let encoded = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (name, value) in parameters {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let request = match self.settings.method {
            Method::Get => {
                let separator = if url.contains('?') { '&' } else { '?' };
                hyper::Request::get(format!("{url}{separator}{encoded}"))
                    .body(Full::new(Bytes::new()))
            }
            Method::Post => hyper::Request::post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(encoded))),
        }
        .map_err(|error| format!("invalid request to {url}: {error}"))?;
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("{url}: {error}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|error| format!("{url}: {error}"))?
                .to_bytes();
            if status != hyper::StatusCode::OK {
                return Err(format!("{url} answered HTTP {status}"));
            }
            Ok(body)
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{url} did not answer within {} ms", timeout.as_millis()))??;
        let text = String::from_utf8_lossy(&body);
        let mut words = text.split_whitespace();
        match words.next().map(str::to_ascii_lowercase).as_deref() {
            Some("allow") => Ok(Answer::Allow(words.map(str::to_owned).collect())),
            Some("deny") => Ok(Answer::Deny),
            _ => {
                tracing::warn!(url, answer = %text.trim(), "auth server answered neither allow nor deny; denied");
                Ok(Answer::Deny)
            }
        }
    }

    async fn decide(&self, url: &str, parameters: &[(&str, &str)]) -> Decision {
        match self.ask(url, parameters).await {
            Ok(Answer::Allow(_)) => Decision::Allow,
            Ok(Answer::Deny) => Decision::Deny,
            Err(reason) => Decision::Unavailable(reason),
        }
    }
}

#[async_trait]
impl AuthBackend for HttpBackend {
    fn name(&self) -> &str {
        "http"
    }

    async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
        let mut parameters = vec![
            ("username", request.username.as_str()),
            ("password", request.password.as_str()),
        ];
        if let Some(vhost) = &request.vhost {
            parameters.push(("vhost", vhost));
        }
        if let Some(client_id) = &request.client_id {
            parameters.push(("client_id", client_id));
        }
        match self.ask(&self.settings.user_path, &parameters).await {
            Ok(Answer::Allow(tags)) => {
                LoginOutcome::Allow(User::new(request.username.clone(), tags))
            }
            // As in RabbitMQ, a server's "deny" passes the login to the next backend: the
            // server cannot tell a wrong password from a user it does not know.
            Ok(Answer::Deny) => LoginOutcome::Next,
            Err(reason) => LoginOutcome::Unavailable(reason),
        }
    }

    async fn check_vhost(&self, user: &User, request: &VhostRequest) -> Decision {
        let ip = request.peer.map(|ip| ip.to_string()).unwrap_or_default();
        let tags = user.tags.join(" ");
        let parameters = [
            ("username", user.name.as_str()),
            ("vhost", request.vhost.as_str()),
            ("ip", ip.as_str()),
            ("tags", tags.as_str()),
        ];
        self.decide(&self.settings.vhost_path, &parameters).await
    }

    async fn check_resource(&self, user: &User, request: &ResourceRequest) -> Decision {
        let tags = user.tags.join(" ");
        let parameters = [
            ("username", user.name.as_str()),
            ("vhost", request.vhost.as_str()),
            ("resource", request.kind.as_str()),
            ("name", request.name.as_str()),
            ("permission", request.permission.as_str()),
            ("tags", tags.as_str()),
        ];
        self.decide(&self.settings.resource_path, &parameters).await
    }

    async fn check_topic(&self, user: &User, request: &TopicRequest) -> Decision {
        let Some(url) = &self.settings.topic_path else {
            return Decision::Allow;
        };
        let tags = user.tags.join(" ");
        let variables = &request.variables;
        let parameters = [
            ("username", user.name.as_str()),
            ("vhost", request.vhost.as_str()),
            ("resource", "topic"),
            ("name", request.exchange.as_str()),
            ("permission", request.permission.as_str()),
            ("routing_key", request.routing_key.as_str()),
            ("tags", tags.as_str()),
            ("variable_map.username", variables.username.as_str()),
            ("variable_map.vhost", variables.vhost.as_str()),
            (
                "variable_map.client_id",
                variables.client_id.as_deref().unwrap_or(""),
            ),
        ];
        self.decide(url, &parameters).await
    }
}
