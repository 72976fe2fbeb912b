//! The store: small query functions, one module per table, and the pool they run on.
//!
//! Each function takes an executor (a pool or a transaction), so the caller (the service
//! layer, a handler) decides where the transaction begins and ends. The store knows the
//! tables, their constraints and Postgres; it imports only the domain (the shapes rows are read
//! into, the error a failure becomes: [`error`]), never the layers that call it.

pub mod attachments;
pub mod blocks;
pub mod changes;
pub mod chats;
mod error;
pub mod members;
pub mod messages;
pub mod presence;
pub mod receipts;
pub mod search;
pub mod sessions;
pub mod users;

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use std::time::Duration;

/// The migrations of `migrations/`, compiled into every binary that may apply them.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a pooled connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// What bounds one transaction of a request pool. Both are below the request's deadline, so a
/// request stuck behind a lock or a runaway query gives its connection back (and answers 503
/// `unavailable`, see [`error`]) while its client still waits, instead of
/// holding it for as long as the lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `lock_timeout`: the longest wait for a row lock (a chat's, a user's).
    pub lock: Duration,
    /// `statement_timeout`: the longest any one statement runs.
    pub statement: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            lock: Duration::from_secs(2),
            statement: Duration::from_secs(4),
        }
    }
}

/// A pool for the life of the process (never one per request), with the default [`Timeouts`]
/// on every connection. For work with no client waiting (migrations, the generator) use
/// [`connect_unbounded`].
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(url, max_connections, Some(Timeouts::default())).await
}

/// [`connect`] without the timeouts: `windi migrate` building an index on a large table, the
/// generator's bulk inserts.
pub async fn connect_unbounded(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(url, max_connections, None).await
}

/// A pool whose connections start with these timeouts (set once per connection, in the
/// startup packet: no round trip per transaction).
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    timeouts: Option<Timeouts>,
) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = url.parse()?;
    if let Some(t) = timeouts {
        options = options.options([
            ("lock_timeout", format!("{}ms", t.lock.as_millis())),
            (
                "statement_timeout",
                format!("{}ms", t.statement.as_millis()),
            ),
        ]);
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waiting longer than this for a connection (a dry pool, an unreachable
        // Postgres) is answered 503 `unavailable` instead (see `error::is_unavailable`).
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}
