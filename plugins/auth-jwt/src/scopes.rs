//! A token's scopes as permissions: `<prefix><permission>:<vhost>/<name>[/<routing key>]` with
//! `*` matching any run of characters, and `<prefix>tag:<tag>`. Scopes without the prefix
//! (other resource servers', OpenID's `openid`, ...) are ignored.

use junction_core::Permission;
use regex::Regex;

/// A wildcard pattern, matched against a whole name.
#[derive(Debug, Clone)]
struct Pattern(Regex);

impl Pattern {
    fn new(glob: &str) -> Option<Self> {
        let parts: Vec<String> = glob.split('*').map(regex::escape).collect();
        Regex::new(&format!("^{}$", parts.join(".*")))
            .ok()
            .map(Pattern)
    }

    fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// One permission scope.
#[derive(Debug, Clone)]
pub struct Scope {
    permission: Permission,
    vhost: Pattern,
    name: Pattern,
    routing_key: Option<Pattern>,
}

impl Scope {
    /// Reads `<permission>:<vhost>/<name>[/<routing key>]` (the prefix already taken off).
    fn parse(text: &str) -> Option<Self> {
        let (permission, resource) = text.split_once(':')?;
        let permission = match permission {
            "configure" => Permission::Configure,
            "write" => Permission::Write,
            "read" => Permission::Read,
            _ => return None,
        };
        let mut parts = resource.splitn(3, '/');
        let vhost = Pattern::new(parts.next()?)?;
        let name = Pattern::new(parts.next()?)?;
        let routing_key = match parts.next() {
            Some(key) => Some(Pattern::new(key)?),
            None => None,
        };
        Some(Self {
            permission,
            vhost,
            name,
            routing_key,
        })
    }
}

/// Everything a token grants, until it expires.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    grants: Vec<Scope>,
    tags: Vec<String>,
    /// The token's `exp`, seconds since the epoch.
    expires_at: Option<u64>,
}

impl Scopes {
    /// The scopes of a `scope` claim (a space-separated string or an array of strings) that
    /// start with `prefix`.
    pub fn from_claim(claim: Option<&serde_json::Value>, prefix: &str) -> Self {
        let words: Vec<&str> = match claim {
            Some(serde_json::Value::String(text)) => text.split_whitespace().collect(),
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        };
        let mut scopes = Scopes::default();
        for word in words {
            let Some(scope) = word.strip_prefix(prefix) else {
                continue;
            };
            if let Some(tag) = scope.strip_prefix("tag:") {
                scopes.tags.push(tag.to_owned());
            } else if let Some(grant) = Scope::parse(scope) {
                scopes.grants.push(grant);
            } else {
                tracing::debug!(scope = word, "scope not understood; ignored");
            }
        }
        scopes
    }

    /// The scopes, valid until `exp` (seconds since the epoch).
    pub fn until(mut self, exp: Option<u64>) -> Self {
        self.expires_at = exp;
        self
    }

    /// Whether the token has expired: then it grants nothing more.
    pub fn expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.expires_at.is_some_and(|exp| now >= exp)
    }

    /// The tags the token gives.
    pub fn tags(&self) -> Vec<String> {
        self.tags.clone()
    }

    /// Whether any scope names `vhost`.
    pub fn allows_vhost(&self, vhost: &str) -> bool {
        self.grants.iter().any(|grant| grant.vhost.matches(vhost))
    }

    /// Whether a scope lets `permission` be done on resource `name` in `vhost`.
    pub fn allows_resource(&self, permission: Permission, vhost: &str, name: &str) -> bool {
        self.grants.iter().any(|grant| {
            grant.permission == permission && grant.vhost.matches(vhost) && grant.name.matches(name)
        })
    }

    /// Whether a scope lets `routing_key` be used for `permission` on `exchange` in `vhost`
    /// (a scope without a routing-key part allows every key).
    pub fn allows_topic(
        &self,
        permission: Permission,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
    ) -> bool {
        self.grants.iter().any(|grant| {
            grant.permission == permission
                && grant.vhost.matches(vhost)
                && grant.name.matches(exchange)
                && grant
                    .routing_key
                    .as_ref()
                    .is_none_or(|pattern| pattern.matches(routing_key))
        })
    }
}
