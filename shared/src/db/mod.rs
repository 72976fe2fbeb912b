//! Small query functions, one module per table. Each takes an executor (a pool or a
//! transaction), so the handler decides where the transaction begins and ends.

pub mod blocks;
pub mod changes;
pub mod chats;
pub mod members;
pub mod messages;
pub mod sessions;
pub mod users;

use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};
use std::time::Duration;

/// The migrations of `migrations/`, compiled into every binary that may apply them.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a pooled connection before it is answered 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pool for the life of the process (never one per request).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waiting longer than this for a connection (a dry pool, an unreachable
        // Postgres) is answered 503 `unavailable` instead (see `error::is_unavailable`).
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await
}
