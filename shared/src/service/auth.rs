//! Authentication primitives: argon2id password hashes, HS-family JWT access tokens that name
//! their session, and opaque refresh tokens.
//!
//! An access token alone proves nothing any more: it names a session (`sid`), and the
//! `AuthUser` extractor and the relay check that session is live (one primary-key lookup), so
//! ending a session refuses its access tokens at once. A login's refresh token is 32 random
//! bytes; each refresh's is derived from the one it replaces ([`Tokens::successor`]), so a
//! retried refresh can be answered the same again. Only sha256 hashes are stored (a database
//! leak gives no usable token, and sha256 is enough for a 256-bit secret: there is nothing to
//! brute-force, unlike a password).
//!
//! Hashing is CPU- and memory-heavy by design (~16 ms and 19 MiB per hash), so it runs on
//! threads of its own, at most a few at a time, at the lowest CPU priority: a burst of logins
//! must not starve the async executor, the machine's memory, or the requests being served
//! meanwhile (a history read preempts a hash instead of waiting out its time slice).

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{
    config::JwtConfig,
    domain::error::{Error, Result},
    service::jwt_crypto,
};

/// argon2id at the OWASP minimum: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).unwrap_or(Params::DEFAULT),
    )
}

/// Hashes and verifies passwords off the async executor, a bounded number at a time, with a
/// bounded queue in front: a login flood gets 503s with `Retry-After`, not ever-longer waits.
#[derive(Debug, Clone)]
pub struct Passwords {
    hashers: Arc<Hashers>,
    permits: Arc<Semaphore>,
    /// Hashes running or waiting now.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

/// How long a hash may wait for its turn before the request is answered 503.
const HASH_WAIT: Duration = Duration::from_secs(2);

impl Passwords {
    /// `max_parallel` bounds memory (19 MiB each) and keeps cores free for other requests; at
    /// most 16 times as many may wait (about a second of work at ~16 ms a hash).
    pub fn new(max_parallel: usize) -> Self {
        let max_parallel = max_parallel.max(1);
        Self {
            hashers: Arc::new(Hashers::start(max_parallel)),
            permits: Arc::new(Semaphore::new(max_parallel)),
            queued: Arc::default(),
            max_queued: max_parallel * 16,
        }
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        self.blocking(move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("argon2 hash: {e}")))
        })
        .await
    }

    /// Checks `password` against `stored`. With no stored hash (unknown email) it still does the
    /// full work against a dummy hash, so the answer's timing does not reveal which emails exist.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool> {
        self.blocking(move || {
            let known = stored.is_some();
            let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let ok = argon2()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            Ok(known && ok)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _place = QueuePlace::take(&self.queued, self.max_queued).ok_or_else(busy)?;
        let _permit = tokio::time::timeout(HASH_WAIT, self.permits.acquire())
            .await
            .map_err(|_| busy())?
            .map_err(|_| Error::Internal("password hasher closed".into()))?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.hashers.submit(Box::new(move || {
            let _ = done.send(work());
        }))?;
        result
            .await
            .map_err(|_| Error::Internal("password task ended without an answer".into()))?
    }
}

/// The answer when the hashing queue is full: 503 with `Retry-After`.
fn busy() -> Error {
    Error::Unavailable("too many logins at once; retry in a few seconds".into())
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that hash: as many as may hash at once (the semaphore in front of them hands
/// out that many permits, so a job never waits here), each at nice 19. With the default
/// scheduler a nice-19 thread gets ~1.5% of a core against a busy nice-0 one, and yields to it
/// on wakeup: the hashes use the idle time, the request path keeps its latency. Under a
/// sustained flood on a busy machine logins slow down (and then answer 503), reads do not.
/// The threads end when the last `Passwords` clone is dropped.
struct Hashers {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for Hashers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashers").finish_non_exhaustive()
    }
}

impl Hashers {
    fn start(threads: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("windi-argon2-{n}"))
                .spawn(move || {
                    if let Err(e) = thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Min,
                    ) {
                        tracing::debug!(error = ?e, "cannot lower the hasher's priority");
                    }
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // every sender is gone
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { jobs }
    }

    fn submit(&self, job: Job) -> Result<()> {
        self.jobs.try_send(job).map_err(|_| busy())
    }
}

/// A place in the hashing queue, given back when dropped.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(queued))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A real argon2id hash of a random password, made once, for [`Passwords::verify`].
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        argon2()
            .hash_password(b"windi-dummy-password-never-matches")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The claims of an access token. `sub` is the user id as a string (RFC 7519 says StringOrURI);
/// `sid` the session the token belongs to (required: a token without one is refused).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: i64,
    pub exp: u64,
    pub iat: u64,
}

/// The one answer to every refused access token — missing, malformed, forged, expired, or of
/// an ended session: a caller learns nothing about which check failed.
pub const TOKEN_REFUSED: &str = "missing, invalid or expired token; log in again";

/// Who a valid access token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub user_id: i64,
    pub session_id: i64,
    /// When the token stops being valid (seconds since the Unix epoch): a WebSocket opened
    /// with it is closed then.
    pub expires_at: u64,
}

/// Bytes of randomness in a refresh token (256 bits: unguessable, not worth brute-forcing).
const REFRESH_TOKEN_BYTES: usize = 32;

/// A new refresh token: what the client gets, and the hash that is stored.
#[derive(Debug)]
pub struct RefreshToken {
    pub token: String,
    pub hash: Vec<u8>,
}

impl RefreshToken {
    /// A random one, for a new session.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("getrandom: {e}")))?;
        Ok(Self::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_refresh_token(&token);
        Self { token, hash }
    }
}

/// What is stored for (and looked up by) a refresh token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// Signs and checks access tokens with one pinned algorithm, and derives refresh tokens'
/// successors.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    header: Header,
    ttl_secs: u64,
    /// HMAC-SHA256 keyed with a key of its own, derived from the secret (so a successor is
    /// never a JWT signature): see [`Tokens::successor`].
    successor_key: Hmac<sha2::Sha256>,
    refresh_grace: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("algorithm", &self.header.alg)
            .field("ttl_secs", &self.ttl_secs)
            .field("refresh_grace", &self.refresh_grace)
            .finish_non_exhaustive()
    }
}

/// What the successor key is derived under; a new label would give every session new
/// successors (a retry in flight across the change would count as reuse).
const SUCCESSOR_KEY_LABEL: &[u8] = b"windi refresh-token successor v1";

/// An issued token and its lifetime in seconds.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
}

impl Tokens {
    pub fn new(config: &JwtConfig) -> Self {
        // Only the configured algorithm verifies: a token saying `alg: none` or another
        // algorithm is refused before its signature is even looked at.
        let mut validation = Validation::new(config.algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        // A token that says it is not valid yet is not.
        validation.validate_nbf = true;
        // Clock skew between Lambda instances is small; a short leeway keeps expiry meaningful.
        validation.leeway = 5;
        jwt_crypto::install();
        // The secret was checked when the configuration was read (at least 32 bytes).
        let derived = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&config.secret)
            .expect("HMAC takes a key of any length")
            .chain_update(SUCCESSOR_KEY_LABEL)
            .finalize()
            .into_bytes();
        Self {
            encoding: EncodingKey::from_secret(&config.secret).expect("a non-empty secret"),
            decoding: DecodingKey::from_secret(&config.secret).expect("a non-empty secret"),
            validation,
            header: Header::new(config.algorithm),
            ttl_secs: config.ttl.as_secs(),
            successor_key: <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&derived)
                .expect("HMAC takes a key of any length"),
            refresh_grace: config.refresh_grace,
        }
    }

    /// The refresh token that replaces `token`: HMAC-SHA256 of it under a key derived from the
    /// secret. Deterministic, so a client that lost a refresh's answer and presents the same
    /// token again within [`Tokens::refresh_grace`] is answered the same new token although
    /// only hashes are stored; unpredictable without the secret, like a random one. (A
    /// `JWT_SECRET_KEY` changed in the middle of such a retry makes it count as reuse.)
    pub fn successor(&self, token: &str) -> RefreshToken {
        let bytes = self
            .successor_key
            .clone()
            .chain_update(token.as_bytes())
            .finalize()
            .into_bytes();
        RefreshToken::from_bytes(&bytes)
    }

    /// How long after a refresh the token it used up may be presented again for the same
    /// answer (`REFRESH_GRACE_SECONDS`).
    pub fn refresh_grace(&self) -> Duration {
        self.refresh_grace
    }

    pub fn issue(&self, user_id: i64, session_id: i64) -> Result<IssuedToken> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id,
            iat: now,
            exp: now + self.ttl_secs,
        };
        let token = encode(&self.header, &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("jwt encode: {e}")))?;
        Ok(IssuedToken {
            token,
            expires_in: self.ttl_secs,
        })
    }

    /// The user and session of a well-signed, unexpired token; 401 for anything else (bad
    /// signature, expired, malformed, no session). Whether the session is still live is for
    /// the caller to check ([`crate::store::sessions::check`]).
    pub fn verify(&self, token: &str) -> Result<TokenSubject> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| Error::Unauthorized(TOKEN_REFUSED))?;
        let user_id = data
            .claims
            .sub
            .parse()
            .map_err(|_| Error::Unauthorized(TOKEN_REFUSED))?;
        Ok(TokenSubject {
            user_id,
            session_id: data.claims.sid,
            expires_at: data.claims.exp,
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The nice values of this process's threads whose name starts with `prefix` (Linux).
    fn nice_of_threads(prefix: &str) -> Vec<i64> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Fields after the parenthesised name: state is field 3, nice field 19.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            nice.push(fields[16].parse().unwrap());
        }
        nice
    }

    #[test]
    fn a_successor_is_the_same_for_the_same_token_and_secret_only() {
        let config = |secret: &[u8]| {
            JwtConfig::new(
                secret.to_vec(),
                jsonwebtoken::Algorithm::HS256,
                Duration::from_secs(60),
            )
            .unwrap()
        };
        let tokens = Tokens::new(&config(&[7; 32]));
        let next = tokens.successor("a token");
        assert_eq!(next.token, tokens.successor("a token").token);
        assert_eq!(next.hash, hash_refresh_token(&next.token));
        assert_eq!(next.token.len(), 43, "256 bits, base64url");
        assert_ne!(next.token, tokens.successor("another token").token);
        let other_secret = Tokens::new(&config(&[8; 32]));
        assert_ne!(next.token, other_secret.successor("a token").token);
    }

    #[tokio::test]
    async fn passwords_hash_and_verify_on_threads_at_the_lowest_priority() {
        let passwords = Passwords::new(2);
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!passwords.verify("any".into(), None).await.unwrap());

        let nice = nice_of_threads("windi-argon2-");
        assert!(nice.len() >= 2, "hashing threads: {nice:?}");
        assert!(nice.iter().all(|&n| n == 19), "{nice:?}");
    }
}
