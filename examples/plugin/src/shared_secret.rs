//! `shared-secret`: any user name logs in with the one secret from `[auth.shared-secret]`, and
//! may then do anything in the vhosts listed there. Other passwords are not its business: the
//! next backend is asked.

use std::sync::Arc;

use junction::{BackendSettings, BuildError};
use junction_core::auth::{
    AuthBackend, Decision, LoginOutcome, LoginRequest, ResourceRequest, User, VhostRequest,
    async_trait,
};

/// `[auth.shared-secret]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    secret: String,
    vhosts: Vec<String>,
}

struct SharedSecret {
    settings: Settings,
}

/// Builds the backend from its section of the configuration.
pub fn build(settings: &BackendSettings<'_>) -> Result<Arc<dyn AuthBackend>, BuildError> {
    Ok(Arc::new(SharedSecret {
        settings: settings.require()?,
    }))
}

#[async_trait]
impl AuthBackend for SharedSecret {
    fn name(&self) -> &str {
        "shared-secret"
    }

    async fn authenticate(&self, request: &LoginRequest) -> LoginOutcome {
        if request.password == self.settings.secret {
            LoginOutcome::Allow(User::new(request.username.clone(), Vec::new()))
        } else {
            LoginOutcome::Next
        }
    }

    async fn check_vhost(&self, _user: &User, request: &VhostRequest) -> Decision {
        Decision::from_bool(self.settings.vhosts.contains(&request.vhost))
    }

    async fn check_resource(&self, _user: &User, request: &ResourceRequest) -> Decision {
        Decision::from_bool(self.settings.vhosts.contains(&request.vhost))
    }
}
