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

/// A pool for the life of the process (never one per request).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waiting longer than this for a connection is better answered with an error.
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}
