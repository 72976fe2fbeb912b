//! The one cloneable state every handler shares, built once per process (per Lambda container).

use std::sync::Arc;

use sqlx::PgPool;

use crate::{
    blobs::{self, Blobs},
    config::{Config, EventAcks, FilesConfig, JwtConfig, LimitSettings, redact_url},
    domain::validate::PasswordRules,
    events::{self, Bus, LocalBus},
    service::{
        auth::{Passwords, Tokens},
        files::Files,
        gates::ChatGates,
        limits::{Limits, LoginGuard},
        session_cache::{self, SessionCache},
    },
    store,
};

#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub tokens: Arc<Tokens>,
    pub passwords: Passwords,
    /// Where events go after commit (NATS, or the in-process bus of the local binary).
    pub events: Bus,
    /// Rate limits per user and per client address, and which address is the client
    /// (production values unless changed with [`AppState::with_limits`]).
    pub limits: Limits,
    /// Failed-login lockouts per account and client address (bounded in memory).
    pub logins: Arc<LoginGuard>,
    /// Sessions recently found live; answers only while [`AppState::sync_sessions`] runs.
    pub sessions: Arc<SessionCache>,
    /// How many of this process's requests may wait on one chat's lock at once
    /// ([`crate::service::gates::ChatGates`]).
    pub gates: Arc<ChatGates>,
    /// Message search and the word statistics that steer it.
    pub search: Arc<crate::service::search::Search>,
    /// What a new password must satisfy (the default unless set with
    /// [`AppState::with_password_rules`]; `PASSWORD_MIN_LENGTH` in production).
    pub password_rules: PasswordRules,
    /// Where attachments' bytes live; `None` where none is configured (the attachment
    /// routes then answer 503). Set with [`AppState::with_files`].
    pub files: Option<Files>,
}

/// What a process does for events when `NATS_URL` is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Lambda functions and the standalone relay: NATS is the only way events leave the process.
    Required,
    /// The local `windi` binary: its API and relay share a process, so an in-process bus works.
    LocalFallback,
}

impl AppState {
    pub fn new(db: PgPool, jwt: &JwtConfig, events: Bus) -> Self {
        // Each hash holds 19 MiB for ~16 ms of CPU: two per core keeps the cores busy without
        // letting a login burst take the machine's memory.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let gates = Arc::new(ChatGates::for_pool(
            db.options().get_max_connections(),
            store::Timeouts::default().lock,
        ));
        Self {
            db,
            tokens: Arc::new(Tokens::new(jwt)),
            passwords: Passwords::new(cores * 2),
            events,
            limits: Limits::default(),
            logins: Arc::default(),
            sessions: Arc::default(),
            gates,
            search: Arc::default(),
            password_rules: PasswordRules::default(),
            files: None,
        }
    }

    /// The same state keeping attachments in `blobs`.
    pub fn with_files(mut self, blobs: Blobs) -> Self {
        self.files = Some(Files::new(blobs));
        self
    }

    /// Lets authenticated requests skip the per-request session read for sessions checked in
    /// the last minute, by starting the poller that forgets sessions ended by other processes
    /// (see [`crate::service::session_cache`]). For long-running servers; a Lambda instance, frozen
    /// between invocations, does not call it and checks Postgres on every request.
    pub fn sync_sessions(&self) {
        session_cache::spawn_sync(&self.sessions, self.db.clone());
    }

    /// After commit: these sessions ended here; no cached check may let them through.
    pub fn sessions_ended(&self, session_ids: &[i64]) {
        self.sessions.forget(session_ids);
    }

    /// The same state with other limits (benchmarks and load tests raise them, and say so).
    pub fn with_limits(mut self, limits: LimitSettings) -> Self {
        self.limits = Limits::new(limits);
        self
    }

    /// The same state with another password minimum (the operator's `PASSWORD_MIN_LENGTH`).
    pub fn with_password_rules(mut self, rules: PasswordRules) -> Self {
        self.password_rules = rules;
        self
    }

    /// Connects the pool and the broker. The error names what could not be reached.
    pub async fn connect(
        config: &Config,
        broker: Broker,
        client_name: &str,
    ) -> Result<Self, String> {
        let pool = store::connect(&config.database_url, config.db_max_connections)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to DATABASE_URL ({}): {e}",
                    redact_url(&config.database_url)
                )
            })?;
        let events = match (&config.nats_url, broker) {
            (Some(url), _) => {
                let bus = events::connect_nats(url, &config.nats_prefix, client_name).await?;
                Arc::new(match config.event_acks {
                    EventAcks::Wait => bus,
                    EventAcks::Background => bus.acknowledge_in_background(),
                }) as Bus
            }
            (None, Broker::LocalFallback) => Arc::new(LocalBus::default()) as Bus,
            (None, Broker::Required) => {
                return Err(
                    "NATS_URL is not set; this service needs NATS to publish events \
                            (e.g. NATS_URL=nats://127.0.0.1:4222)"
                        .into(),
                );
            }
        };
        let state = Self::new(pool, &config.jwt, events)
            .with_limits(config.limits)
            .with_password_rules(config.password_rules);
        Ok(match open_files(config)? {
            Some(blobs) => state.with_files(blobs),
            None => state,
        })
    }
}

/// The file store the configuration names (`None`: not configured). The error names what
/// is wrong.
pub fn open_files(config: &Config) -> Result<Option<Blobs>, String> {
    let settings = match &config.files {
        FilesConfig::Folder(root) => blobs::Settings::Folder {
            root: root.clone(),
            secret: config.jwt.secret.clone(),
        },
        FilesConfig::S3 { bucket, endpoint } => blobs::Settings::S3 {
            bucket: bucket.clone(),
            endpoint: endpoint.clone(),
        },
        FilesConfig::Unset => return Ok(None),
    };
    Blobs::open(&settings).map(Some)
}
