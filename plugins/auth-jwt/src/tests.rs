use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use junction_core::auth::{Protocol, TopicVariables};
use junction_core::{Permission, ResourceKind};

use super::*;

const SECRET: &str = "a shared secret of some length";
const PRIVATE_PEM: &str = include_str!("../testdata/private.pem");
const PUBLIC_PEM: &str = include_str!("../testdata/public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn backend() -> JwtBackend {
    JwtBackend::new(Settings {
        resource_server_id: "rabbitmq".into(),
        verify_aud: true,
        keys: vec![
            KeySettings {
                id: "hmac".into(),
                algorithm: "HS256".into(),
                secret: Some(SECRET.into()),
                public_key_pem: None,
                public_key_file: None,
            },
            KeySettings {
                id: "rsa".into(),
                algorithm: "RS256".into(),
                secret: None,
                public_key_pem: Some(PUBLIC_PEM.into()),
                public_key_file: None,
            },
        ],
        default_key: None,
    })
    .expect("settings")
}

fn token(kid: Option<&str>, claims: serde_json::Value) -> String {
    match kid {
        Some("rsa") => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rsa".into());
            let key = EncodingKey::from_rsa_pem(PRIVATE_PEM.as_bytes()).expect("private key");
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        }
        kid => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        }
    }
}

fn claims(scope: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({ "sub": "svc-1", "aud": ["rabbitmq"], "exp": exp, "scope": scope })
}

async fn login(backend: &JwtBackend, token: &str) -> LoginOutcome {
    backend
        .authenticate(&LoginRequest::new(Protocol::Amqp, "anyone", token))
        .await
}

#[tokio::test]
async fn a_signed_token_logs_in_as_its_subject_with_its_scopes() {
    let backend = backend();
    let scope = "rabbitmq.read:*/* rabbitmq.write:prod/orders rabbitmq.write:*/amq.topic/sensors.* rabbitmq.tag:management other.write:*/*";
    for kid in [Some("hmac"), Some("rsa"), None] {
        let LoginOutcome::Allow(user) =
            login(&backend, &token(kid, claims(scope, now() + 60))).await
        else {
            panic!("{kid:?}: refused");
        };
        assert_eq!(user.name, "svc-1");
        assert_eq!(user.tags, ["management"]);
        let resource = |permission, vhost: &str, name: &str| {
            ResourceRequest::new(vhost, ResourceKind::Exchange, name, permission)
        };
        let allowed = async |request: ResourceRequest| {
            backend.check_resource(&user, &request).await == Decision::Allow
        };
        assert!(allowed(resource(Permission::Read, "any", "thing")).await);
        assert!(allowed(resource(Permission::Write, "prod", "orders")).await);
        assert!(!allowed(resource(Permission::Write, "prod", "billing")).await);
        assert!(!allowed(resource(Permission::Configure, "prod", "orders")).await);
        let topic = |key: &str| {
            TopicRequest::new(
                "/",
                "amq.topic",
                key,
                Permission::Write,
                TopicVariables::new("svc-1", "/", None),
            )
        };
        assert_eq!(
            backend.check_topic(&user, &topic("sensors.t1")).await,
            Decision::Allow
        );
        assert_eq!(
            backend.check_topic(&user, &topic("alerts.t1")).await,
            Decision::Deny
        );
        let vhost = VhostRequest::new("prod", None);
        assert_eq!(backend.check_vhost(&user, &vhost).await, Decision::Allow);
    }
}

#[tokio::test]
async fn expired_forged_and_foreign_tokens_are_refused() {
    let backend = backend();
    let expired = token(Some("hmac"), claims("rabbitmq.read:*/*", now() - 5));
    assert!(
        matches!(login(&backend, &expired).await, LoginOutcome::Deny(reason) if reason.contains("xpired"))
    );
    let mut forged = token(Some("hmac"), claims("rabbitmq.read:*/*", now() + 60));
    forged.push('x');
    assert!(matches!(
        login(&backend, &forged).await,
        LoginOutcome::Deny(_)
    ));
    let wrong_audience = token(
        Some("rsa"),
        serde_json::json!({ "sub": "x", "aud": "someone-else", "exp": now() + 60 }),
    );
    assert!(matches!(
        login(&backend, &wrong_audience).await,
        LoginOutcome::Deny(_)
    ));
    let unknown_key = token(Some("nope"), claims("rabbitmq.read:*/*", now() + 60));
    assert!(
        matches!(login(&backend, &unknown_key).await, LoginOutcome::Deny(reason) if reason.contains("unknown signing key"))
    );
    // Not a token at all: another backend's password.
    assert!(matches!(login(&backend, "guest").await, LoginOutcome::Next));
}

#[tokio::test]
async fn a_token_that_expires_after_login_grants_nothing_more() {
    let backend = backend();
    let token = token(Some("hmac"), claims("rabbitmq.read:*/*", now() + 1));
    let LoginOutcome::Allow(user) = login(&backend, &token).await else {
        panic!("refused");
    };
    let request = ResourceRequest::new("/", ResourceKind::Queue, "q", Permission::Read);
    assert_eq!(
        backend.check_resource(&user, &request).await,
        Decision::Allow
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        backend.check_resource(&user, &request).await,
        Decision::Deny
    );
}

#[test]
fn bad_key_settings_are_refused_at_start() {
    let settings = |algorithm: &str| Settings {
        resource_server_id: "rabbitmq".into(),
        verify_aud: true,
        keys: vec![KeySettings {
            id: "k".into(),
            algorithm: algorithm.into(),
            secret: None,
            public_key_pem: Some("not a pem".into()),
            public_key_file: None,
        }],
        default_key: None,
    };
    assert!(JwtBackend::new(settings("HS256")).is_err(), "no secret");
    assert!(JwtBackend::new(settings("RS256")).is_err(), "bad PEM");
    assert!(
        JwtBackend::new(settings("ES999")).is_err(),
        "unknown algorithm"
    );
}
