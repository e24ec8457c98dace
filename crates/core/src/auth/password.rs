//! Password hashes of the internal user database. New passwords (configuration, management
//! API) are hashed with Argon2id, the password-hashing competition's winner, with the argon2
//! crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's first recommendation). RabbitMQ's
//! `rabbit_password_hashing_sha256` hashes (base64 of a 4-byte salt and SHA-256(salt ++
//! password)), as exported definitions carry them, are still accepted.
//!
//! The stored form names its scheme: a PHC string (`$argon2id$v=19$...`) or RabbitMQ's base64
//! (which never starts with `$`).
//!
//! Each Argon2 hash or check fills 19 MiB and frees it. The server's allocator (mimalloc)
//! hands memory freed in bulk back to the system only once a delay has passed (1 s), the next
//! time an allocation or a thread's exit looks; an idle broker does neither, so one login kept
//! 19 MiB resident for good. After Argon2 work a sweeper thread waits out that delay and
//! exits, which makes the allocator look (see [`sweep_later`]).

use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use sha2::{Digest, Sha256};

/// RabbitMQ's name for its salted SHA-256 scheme, as definitions carry it.
pub const SHA256_ALGORITHM: &str = "rabbit_password_hashing_sha256";
/// The name Junction's definitions give its Argon2id hashes.
pub const ARGON2_ALGORITHM: &str = "junction_password_hashing_argon2";

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// No password: no password matches it (RabbitMQ's empty `password_hash`, for users that
    /// log in otherwise, with a certificate or a token).
    None,
    /// RabbitMQ's salted SHA-256: 4 bytes of salt, then the digest.
    Sha256(Vec<u8>),
    /// An Argon2id PHC string.
    Argon2(String),
}

impl PasswordHash {
    /// Hashes `password` with Argon2id and a fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hashed = argon2::Argon2::default().hash_password(password.as_bytes(), &salt);
        sweep_later();
        match hashed {
            Ok(hash) => Self::Argon2(hash.to_string()),
            // Only a password longer than 4 GiB gets here; nothing then matches it.
            Err(error) => {
                tracing::error!(%error, "cannot hash a password");
                Self::None
            }
        }
    }

    /// Hashes `password` as RabbitMQ does by default (salted SHA-256), for definitions that
    /// must import into RabbitMQ.
    pub fn sha256(password: &str) -> Self {
        let salt: [u8; 4] = rand::random();
        Self::sha256_with_salt(salt, password)
    }

    fn sha256_with_salt(salt: [u8; 4], password: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(&hasher.finalize());
        Self::Sha256(bytes)
    }

    /// No password (see [`PasswordHash::None`]).
    pub fn none() -> Self {
        Self::None
    }

    /// Reads a stored hash: a PHC Argon2 string, RabbitMQ's base64 SHA-256 form, or empty
    /// (no password); None when it is none of these.
    pub fn from_encoded(encoded: &str) -> Option<Self> {
        if encoded.is_empty() {
            return Some(Self::None);
        }
        if encoded.starts_with('$') {
            let parsed = argon2::PasswordHash::new(encoded).ok()?;
            let complete = parsed.algorithm.as_str().starts_with("argon2")
                && parsed.salt.is_some()
                && parsed.hash.is_some();
            return complete.then(|| Self::Argon2(encoded.to_owned()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        (bytes.len() == 36).then_some(Self::Sha256(bytes))
    }

    /// Reads a hash that definitions give with its `hashing_algorithm` (RabbitMQ's SHA-256
    /// name when absent); None when the two do not agree or the hash is not valid.
    pub fn from_definitions(algorithm: Option<&str>, encoded: &str) -> Option<Self> {
        let hash = Self::from_encoded(encoded)?;
        let agrees = matches!(
            (&hash, algorithm.unwrap_or(SHA256_ALGORITHM)),
            (Self::None, _)
                | (Self::Sha256(_), SHA256_ALGORITHM)
                | (Self::Argon2(_), ARGON2_ALGORITHM)
        );
        agrees.then_some(hash)
    }

    /// The stored form (see [`PasswordHash::from_encoded`]).
    pub fn encoded(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Sha256(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
            Self::Argon2(phc) => phc.clone(),
        }
    }

    /// The `hashing_algorithm` definitions name this hash with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Argon2(_) => ARGON2_ALGORITHM,
            Self::None | Self::Sha256(_) => SHA256_ALGORITHM,
        }
    }

    /// Whether checking a password costs real time (Argon2: tens of milliseconds, so it
    /// runs off the async workers).
    pub fn is_slow(&self) -> bool {
        matches!(self, Self::Argon2(_))
    }

    /// Whether `password` matches (SHA-256 compared without early exit; Argon2 by its
    /// crate's constant-time check).
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Self::None => false,
            Self::Sha256(stored) => {
                let Some(salt) = stored.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
                    return false;
                };
                let Self::Sha256(candidate) = Self::sha256_with_salt(salt, password) else {
                    return false;
                };
                same_bytes(&candidate, stored)
            }
            Self::Argon2(phc) => argon2::PasswordHash::new(phc).is_ok_and(|parsed| {
                let matched = argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                sweep_later();
                matched
            }),
        }
    }
}

/// Runs `work` (an Argon2 check) on a thread of its own, which ends with it: a blocking-pool
/// thread would stay 10 s after its last task with the pages the check touched. None if no
/// thread could be started.
pub(crate) async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("junction-argon2".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .ok()?;
    result.await.ok()
}

/// How long after freeing memory in bulk the allocator may keep it: mimalloc's purge delay
/// (1 s by default), and a margin.
const ALLOCATOR_PURGE_DELAY: Duration = Duration::from_millis(1_200);

/// When the sweeper may exit: set while one runs, pushed back by each Argon2 hash or check.
static SWEEP_AT: parking_lot::Mutex<Option<Instant>> = parking_lot::Mutex::new(None);

/// Makes sure a thread exits [`ALLOCATOR_PURGE_DELAY`] after now: the exit of a thread that
/// allocated has mimalloc return the memory whose delay has passed, wherever it was freed. One
/// sweeper at a time; a burst of logins keeps pushing its exit back.
fn sweep_later() {
    let mut sweep_at = SWEEP_AT.lock();
    let running = sweep_at.is_some();
    *sweep_at = Some(Instant::now() + ALLOCATOR_PURGE_DELAY);
    if running {
        return;
    }
    drop(sweep_at);
    let spawned = std::thread::Builder::new()
        .name("junction-sweep".into())
        .spawn(|| {
            // An allocation makes this thread one the allocator cleans up after at exit.
            drop(std::hint::black_box(Vec::<u64>::with_capacity(8)));
            loop {
                let now = Instant::now();
                let mut sweep_at = SWEEP_AT.lock();
                match *sweep_at {
                    Some(at) if at > now => {
                        drop(sweep_at);
                        std::thread::sleep(at - now);
                    }
                    _ => {
                        *sweep_at = None;
                        return;
                    }
                }
            }
        });
    if spawned.is_err() {
        *SWEEP_AT.lock() = None;
    }
}

/// Whether `a` and `b` hold the same bytes, compared without early exit.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_work_starts_one_sweeper_that_exits_after_the_purge_delay() {
        let hash = PasswordHash::new("s3cret");
        assert!(SWEEP_AT.lock().is_some(), "hashing set a sweep");
        assert!(hash.verify("s3cret"));
        // Other tests' hashes push the exit back; they end well within the deadline.
        let deadline = Instant::now() + Duration::from_secs(30);
        while SWEEP_AT.lock().is_some() {
            assert!(Instant::now() < deadline, "the sweeper never exited");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn new_passwords_are_argon2id_and_round_trip_through_their_stored_form() {
        let hash = PasswordHash::new("s3cret");
        assert!(
            hash.encoded()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert_eq!(hash.algorithm(), ARGON2_ALGORITHM);
        let again = PasswordHash::from_encoded(&hash.encoded()).expect("valid");
        assert!(again.verify("s3cret"));
        assert!(!again.verify("wrong"));
        assert_ne!(
            PasswordHash::new("s3cret"),
            hash,
            "each hash has its own salt"
        );
    }

    #[test]
    fn rabbitmq_sha256_hashes_are_still_accepted() {
        // rabbitmqctl hash_password-style: base64(salt ++ sha256(salt ++ "guest")).
        let hash = PasswordHash::sha256("guest");
        let encoded = hash.encoded();
        let imported =
            PasswordHash::from_definitions(Some(SHA256_ALGORITHM), &encoded).expect("valid");
        assert!(imported.verify("guest"));
        assert!(!imported.verify("Guest"));
        // The name must match the form.
        assert!(PasswordHash::from_definitions(Some(ARGON2_ALGORITHM), &encoded).is_none());
        let argon = PasswordHash::new("x").encoded();
        assert!(PasswordHash::from_definitions(None, &argon).is_none());
        assert!(PasswordHash::from_definitions(Some(ARGON2_ALGORITHM), &argon).is_some());
        assert!(PasswordHash::from_encoded("$argon2id$garbage").is_none());
        assert!(PasswordHash::from_encoded("c2hvcnQ=").is_none());
        assert_eq!(PasswordHash::from_encoded(""), Some(PasswordHash::None));
        assert!(!PasswordHash::None.verify(""));
    }
}
