//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable is named in the error when it is missing or malformed, so a bad deployment
//! stops at once with a message an operator can act on, instead of failing on the first request.
//!
//! The settings types the other layers need are defined here ([`JwtConfig`], [`LimitSettings`],
//! [`EventAcks`], the password minimum as the domain's `PasswordRules`, [`in_lambda`]), and
//! those layers import them from here; this module imports only the domain. So reading the
//! environment never needs the code that acts on it, and a setting has one home.

use std::{env, fmt, path::PathBuf, time::Duration};

use jsonwebtoken::Algorithm;

use crate::domain::{
    model::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS_FLOOR},
    validate::PasswordRules,
};

/// The shortest HS256 secret we accept: 32 bytes is the key size the algorithm's security
/// assumes (RFC 7518 §3.2); anything shorter is guessable offline from one token.
const MIN_JWT_SECRET_BYTES: usize = 32;

/// Why the configuration could not be loaded. Displays as one line naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set{1}")]
    Missing(&'static str, &'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// The settings of the API side (the functions and the local `windi` binary).
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub jwt: JwtConfig,
    /// `None` means no external broker: the local binary carries events in-process.
    pub nats_url: Option<String>,
    /// Prefix of every NATS subject (`<prefix>.chat.<id>`). Lets several deployments, or
    /// parallel test runs, share one NATS without hearing each other.
    pub nats_prefix: String,
    pub port: u16,
    /// Pool size per process. Small on Lambda (one request at a time per instance), larger for
    /// the long-running local server.
    pub db_max_connections: u32,
    /// Rate limits per user and per client address (`LIMIT_*`), and which address is the
    /// client (`TRUSTED_PROXY_HOPS`).
    pub limits: LimitSettings,
    /// `SESSION_CACHE` (`on` by default; `off` reads the session on every request even in a
    /// long-running server, for those who would rather pay that than wait up to a second for
    /// an ending in another process; see [`crate::service::session_cache`]).
    pub session_cache: bool,
    /// `EVENT_ACKS`: when a request's events must be acknowledged by JetStream. `wait` (the
    /// only choice under Lambda, and its default) answers after the acks; `background` (the
    /// default elsewhere) answers after handing the events to the connection and awaits the
    /// acks in a bounded background task. See [`crate::events::NatsBus::acknowledge_in_background`].
    pub event_acks: EventAcks,
    /// `PASSWORD_MIN_LENGTH` (8 unless set; 6 at least): the shortest password register and
    /// password change accept. Policy, so the operator chooses; see [`PasswordRules`].
    pub password_rules: PasswordRules,
    /// Where attachments' bytes live (`FILES_BUCKET`, `FILES_S3_ENDPOINT`, `FILES_DIR`).
    pub files: FilesConfig,
}

/// Where attachments' bytes live. The service opens it as `crate::blobs::Settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesConfig {
    /// `FILES_DIR`, by default `files` in `WINDI_DATA_DIR` (`./.windi/files`): the local
    /// binary's default, served by windi itself with signed links.
    Folder(PathBuf),
    /// `FILES_BUCKET`: an S3 bucket, credentials and region from the usual `AWS_*` variables;
    /// `FILES_S3_ENDPOINT` names an S3-compatible server other than AWS (MinIO in compose).
    S3 {
        bucket: String,
        endpoint: Option<String>,
    },
    /// On Lambda without `FILES_BUCKET` (a function's folder would not outlive it, nor be seen
    /// by the others): the attachment routes answer 503 naming the variable.
    Unset,
}

/// See [`Config::event_acks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAcks {
    Wait,
    Background,
}

/// Token settings: the JWTs', and the refresh grace. The secret is never printed (see the
/// `Debug` impl).
#[derive(Clone)]
pub struct JwtConfig {
    pub secret: Vec<u8>,
    pub algorithm: Algorithm,
    pub ttl: Duration,
    /// `REFRESH_GRACE_SECONDS` (30 unless set; 0 turns it off, 300 at most): how long a used
    /// refresh token's retry still answers the same pair (see
    /// [`crate::service::auth::Tokens::successor`]).
    pub refresh_grace: Duration,
}

/// How long a lost refresh answer may be asked for again, unless `REFRESH_GRACE_SECONDS` says.
const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(30);
/// The longest refresh grace accepted: a retry, not a second way to use a token.
const MAX_REFRESH_GRACE_SECS: u64 = 300;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("jwt", &self.jwt)
            .field("nats_url", &self.nats_url)
            .field("nats_prefix", &self.nats_prefix)
            .field("port", &self.port)
            .field("db_max_connections", &self.db_max_connections)
            .field("limits", &self.limits)
            .field("session_cache", &self.session_cache)
            .field("event_acks", &self.event_acks)
            .field("password_rules", &self.password_rules)
            .field("files", &self.files)
            .finish()
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("ttl", &self.ttl)
            .field("refresh_grace", &self.refresh_grace)
            .finish()
    }
}

/// Hides the password of a `postgres://user:password@host/db` URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// Reads the environment (after a `.env` file, where one exists; real environment
    /// variables win over it).
    pub fn from_env() -> Result<Self, ConfigError> {
        load_dotenv();
        Self::from_env_with_database(required("DATABASE_URL", "")?)
    }

    /// [`Config::from_env`] for a database URL that does not come from `DATABASE_URL` (the
    /// local `windi`'s own Postgres).
    pub fn from_env_with_database(database_url: String) -> Result<Self, ConfigError> {
        load_dotenv();
        Ok(Self {
            database_url,
            jwt: JwtConfig::from_env()?,
            nats_url: optional("NATS_URL"),
            nats_prefix: nats_prefix_from_env()?,
            port: parsed_or("PORT", 8000)?,
            // A Lambda instance serves one request at a time; many instances times a big pool
            // would exhaust Postgres's connection limit.
            db_max_connections: parsed_or("DB_MAX_CONNECTIONS", if in_lambda() { 2 } else { 10 })?,
            limits: limits_from_env()?,
            session_cache: match optional("SESSION_CACHE").as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "SESSION_CACHE",
                        reason: format!("{other:?} is neither on nor off"),
                    });
                }
            },
            event_acks: event_acks(optional("EVENT_ACKS").as_deref(), in_lambda())?,
            password_rules: password_rules(optional("PASSWORD_MIN_LENGTH").as_deref())?,
            files: files_from_env()?,
        })
    }
}

/// See [`FilesConfig`].
fn files_from_env() -> Result<FilesConfig, ConfigError> {
    let endpoint = optional("FILES_S3_ENDPOINT");
    if let Some(endpoint) = &endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(ConfigError::Invalid {
            var: "FILES_S3_ENDPOINT",
            reason: format!("{endpoint:?} is not a URL; write e.g. http://minio:9000"),
        });
    }
    match optional("FILES_BUCKET") {
        Some(bucket) => Ok(FilesConfig::S3 { bucket, endpoint }),
        None if endpoint.is_some() => Err(ConfigError::Missing(
            "FILES_BUCKET",
            " (FILES_S3_ENDPOINT names a server; FILES_BUCKET names the bucket on it)",
        )),
        None if in_lambda() => Ok(FilesConfig::Unset),
        None => Ok(FilesConfig::Folder(optional("FILES_DIR").map_or_else(
            || {
                PathBuf::from(optional("WINDI_DATA_DIR").unwrap_or_else(|| ".windi".into()))
                    .join("files")
            },
            PathBuf::from,
        ))),
    }
}

/// How much each user and each client address may do; from `LIMIT_*` variables, and
/// `TRUSTED_PROXY_HOPS` (see `.env.example`). The numbers only: the limiters that count
/// against them are [`crate::service::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub sends_per_second: u32,
    pub sends_burst: u32,
    pub groups_per_minute: u32,
    pub groups_burst: u32,
    pub typing_per_second: u32,
    pub typing_burst: u32,
    /// Message searches per user (`GET /chat/search`): each walks an index.
    pub searches_per_second: u32,
    pub searches_burst: u32,
    /// Registrations and exact-email searches per client address (`Limits::email_lookups`).
    pub email_lookups_per_minute: u32,
    pub email_lookups_burst: u32,
    /// How many proxies in front of windi append the address they saw to `X-Forwarded-For`:
    /// which address of a request the per-address limits count it against
    /// ([`crate::http::extract::ClientAddress`]). 0, the default: the TCP peer, and the header is
    /// ignored.
    pub trusted_proxy_hops: u8,
}

impl Default for LimitSettings {
    /// Far above what a person types, far below what a script floods: 20 messages a second
    /// with bursts of 60 (a client flushing its outbox after a reconnect), 10 group changes a
    /// minute with bursts of 20, typing 5 a second with bursts of 10, searches 5 a second with
    /// bursts of 20 (a search box asking as its user types); 20 registrations and
    /// email searches a minute per address with bursts of 10 (a classroom behind one NAT
    /// signing up together gets through in a minute or so; a script testing a list of emails
    /// gets 28,800 a day from an address instead of as many as it can send).
    fn default() -> Self {
        Self {
            sends_per_second: 20,
            sends_burst: 60,
            groups_per_minute: 10,
            groups_burst: 20,
            typing_per_second: 5,
            typing_burst: 10,
            searches_per_second: 5,
            searches_burst: 20,
            email_lookups_per_minute: 20,
            email_lookups_burst: 10,
            trusted_proxy_hops: 0,
        }
    }
}

impl LimitSettings {
    /// Limits high enough never to apply (for benchmarks and load tests, which say so).
    pub fn unlimited() -> Self {
        let many = 1_000_000_000;
        Self {
            sends_per_second: many,
            sends_burst: many,
            groups_per_minute: many,
            groups_burst: many,
            typing_per_second: many,
            typing_burst: many,
            searches_per_second: many,
            searches_burst: many,
            email_lookups_per_minute: many,
            email_lookups_burst: many,
            trusted_proxy_hops: 0,
        }
    }
}

/// True inside AWS Lambda (the runtime API address is set by the platform). Several defaults
/// depend on it (the pool size, when events are acknowledged, the log format).
pub(crate) fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// `PASSWORD_MIN_LENGTH`: a number of characters from 6 (below it the check would hardly be
/// one) to 1024 (above it no password could pass, the longest being 1024 bytes).
fn password_rules(value: Option<&str>) -> Result<PasswordRules, ConfigError> {
    let Some(raw) = value else {
        return Ok(PasswordRules::default());
    };
    let invalid = |reason| ConfigError::Invalid {
        var: "PASSWORD_MIN_LENGTH",
        reason,
    };
    let min_chars: usize = raw
        .trim()
        .parse()
        .map_err(|e| invalid(format!("{raw:?}: {e}")))?;
    PasswordRules::with_min_chars(min_chars).ok_or_else(|| {
        invalid(format!(
            "must be from {MIN_PASSWORD_CHARS_FLOOR} to {MAX_PASSWORD_BYTES} characters, not {min_chars}"
        ))
    })
}

/// `EVENT_ACKS`; `background` is refused under Lambda, where the process may freeze as soon as
/// it has answered and an ack awaited after that might never come.
fn event_acks(value: Option<&str>, in_lambda: bool) -> Result<EventAcks, ConfigError> {
    match (value, in_lambda) {
        (None, true) | (Some("wait"), _) => Ok(EventAcks::Wait),
        (None, false) | (Some("background"), false) => Ok(EventAcks::Background),
        (Some("background"), true) => Err(ConfigError::Invalid {
            var: "EVENT_ACKS",
            reason: "background cannot be used under Lambda (the process may freeze once it \
                     has answered); use wait"
                .into(),
        }),
        (Some(other), _) => Err(ConfigError::Invalid {
            var: "EVENT_ACKS",
            reason: format!("{other:?} is neither wait nor background"),
        }),
    }
}

/// `LIMIT_SENDS_PER_SEC`, `LIMIT_SENDS_BURST`, `LIMIT_GROUPS_PER_MIN`, `LIMIT_GROUPS_BURST`,
/// `LIMIT_TYPING_PER_SEC`, `LIMIT_TYPING_BURST`, `LIMIT_SEARCHES_PER_SEC`,
/// `LIMIT_SEARCHES_BURST`, `LIMIT_EMAIL_LOOKUPS_PER_MIN`,
/// `LIMIT_EMAIL_LOOKUPS_BURST`, each at least 1; and `TRUSTED_PROXY_HOPS` (0 to 255, default
/// 0), which decides the client address the per-address limits count.
fn limits_from_env() -> Result<LimitSettings, ConfigError> {
    let d = LimitSettings::default();
    let positive = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
        let value: u32 = parsed_or(var, default)?;
        if value == 0 {
            return Err(ConfigError::Invalid {
                var,
                reason: "must be at least 1 (raise it instead of turning it off)".into(),
            });
        }
        Ok(value)
    };
    Ok(LimitSettings {
        sends_per_second: positive("LIMIT_SENDS_PER_SEC", d.sends_per_second)?,
        sends_burst: positive("LIMIT_SENDS_BURST", d.sends_burst)?,
        groups_per_minute: positive("LIMIT_GROUPS_PER_MIN", d.groups_per_minute)?,
        groups_burst: positive("LIMIT_GROUPS_BURST", d.groups_burst)?,
        typing_per_second: positive("LIMIT_TYPING_PER_SEC", d.typing_per_second)?,
        typing_burst: positive("LIMIT_TYPING_BURST", d.typing_burst)?,
        searches_per_second: positive("LIMIT_SEARCHES_PER_SEC", d.searches_per_second)?,
        searches_burst: positive("LIMIT_SEARCHES_BURST", d.searches_burst)?,
        email_lookups_per_minute: positive(
            "LIMIT_EMAIL_LOOKUPS_PER_MIN",
            d.email_lookups_per_minute,
        )?,
        email_lookups_burst: positive("LIMIT_EMAIL_LOOKUPS_BURST", d.email_lookups_burst)?,
        trusted_proxy_hops: parsed_or("TRUSTED_PROXY_HOPS", d.trusted_proxy_hops)?,
    })
}

impl JwtConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        load_dotenv();
        let secret = required(
            "JWT_SECRET_KEY",
            "; generate one with: openssl rand -hex 32",
        )?;
        let algorithm = match optional("JWT_ALGORITHM").as_deref() {
            None | Some("HS256") => Algorithm::HS256,
            Some("HS384") => Algorithm::HS384,
            Some("HS512") => Algorithm::HS512,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "JWT_ALGORITHM",
                    reason: format!(
                        "{other:?} is not supported; use HS256, HS384 or HS512 (shared-secret algorithms)"
                    ),
                });
            }
        };
        let minutes: u64 = parsed_or("ACCESS_TOKEN_EXPIRE_MINUTES", 30)?;
        if minutes == 0 {
            return Err(ConfigError::Invalid {
                var: "ACCESS_TOKEN_EXPIRE_MINUTES",
                reason: "must be at least 1".into(),
            });
        }
        let grace: u64 = parsed_or("REFRESH_GRACE_SECONDS", DEFAULT_REFRESH_GRACE.as_secs())?;
        if grace > MAX_REFRESH_GRACE_SECS {
            return Err(ConfigError::Invalid {
                var: "REFRESH_GRACE_SECONDS",
                reason: format!("{grace} is above {MAX_REFRESH_GRACE_SECS}"),
            });
        }
        Ok(Self::new(
            secret.into_bytes(),
            algorithm,
            Duration::from_secs(minutes * 60),
        )?
        .with_refresh_grace(Duration::from_secs(grace)))
    }

    /// Builds the settings, refusing a secret too short to be safe.
    pub fn new(secret: Vec<u8>, algorithm: Algorithm, ttl: Duration) -> Result<Self, ConfigError> {
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET_KEY",
                reason: format!(
                    "it is {} bytes long and must be at least {MIN_JWT_SECRET_BYTES}; \
                     generate one with: openssl rand -hex 32",
                    secret.len()
                ),
            });
        }
        Ok(Self {
            secret,
            algorithm,
            ttl,
            refresh_grace: DEFAULT_REFRESH_GRACE,
        })
    }

    /// The same settings with another refresh grace.
    fn with_refresh_grace(mut self, grace: Duration) -> Self {
        self.refresh_grace = grace;
        self
    }
}

/// `NATS_SUBJECT_PREFIX`, default `windi`; one NATS subject token (no dots or wildcards).
fn nats_prefix_from_env() -> Result<String, ConfigError> {
    let prefix = optional("NATS_SUBJECT_PREFIX").unwrap_or_else(|| "windi".to_owned());
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::Invalid {
            var: "NATS_SUBJECT_PREFIX",
            reason: "use letters, digits, '-' and '_' only".into(),
        });
    }
    Ok(prefix)
}

/// Reads `.env` once if present. Never overrides a variable already set.
pub fn load_dotenv() {
    // A missing file is the normal case in production; a malformed one is worth a warning.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("warning: could not read .env: {e}");
    }
}

pub fn optional(var: &'static str) -> Option<String> {
    env::var(var).ok().filter(|v| !v.trim().is_empty())
}

pub fn required(var: &'static str, hint: &'static str) -> Result<String, ConfigError> {
    optional(var).ok_or(ConfigError::Missing(var, hint))
}

pub fn parsed_or<T>(var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    match optional(var) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| ConfigError::Invalid {
            var,
            reason: format!("{raw:?}: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_secret_is_refused_with_a_hint() {
        let err = JwtConfig::new(b"short".to_vec(), Algorithm::HS256, Duration::from_secs(60))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("JWT_SECRET_KEY"), "{err}");
        assert!(err.contains("openssl rand"), "{err}");
    }

    #[test]
    fn event_acks_wait_under_lambda_and_background_elsewhere() {
        assert_eq!(event_acks(None, true).ok(), Some(EventAcks::Wait));
        assert_eq!(event_acks(None, false).ok(), Some(EventAcks::Background));
        assert_eq!(event_acks(Some("wait"), false).ok(), Some(EventAcks::Wait));
        let error = |value, in_lambda| {
            event_acks(Some(value), in_lambda)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let refused = error("background", true);
        assert!(
            refused.contains("EVENT_ACKS") && refused.contains("Lambda"),
            "{refused}"
        );
        let typo = error("later", false);
        assert!(typo.contains("neither wait nor background"), "{typo}");
    }

    #[test]
    fn the_password_minimum_is_8_unless_set_and_never_below_6() {
        let min_chars = |value| password_rules(value).map(PasswordRules::min_chars).ok();
        assert_eq!(min_chars(None), Some(8));
        assert_eq!(min_chars(Some("6")), Some(6));
        assert_eq!(min_chars(Some(" 12 ")), Some(12));
        for refused in ["5", "0", "-1", "eight", "6.5", "1025"] {
            let err = password_rules(Some(refused))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.starts_with("PASSWORD_MIN_LENGTH is invalid"),
                "{refused:?}: {err:?}"
            );
        }
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/windi"),
            "postgres://app:***@db:5432/windi"
        );
        assert_eq!(
            redact_url("postgres://postgres@localhost/windi"),
            "postgres://postgres@localhost/windi"
        );
    }
}
