//! `windi admin`: operator tasks on the database, run from a shell next to it.
//!
//! Ending a user's sessions and disabling a user need sessions and an account state in the
//! schema; they are added here when those exist (see the README's "Operate" section).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A user as the operator sees one.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// Users, newest first, optionally only those whose name or email contains `search`.
pub async fn list_users(
    pool: &PgPool,
    limit: i64,
    search: Option<String>,
) -> sqlx::Result<Vec<UserRow>> {
    let pattern = search.map(|s| format!("%{}%", s.replace('%', "\\%").replace('_', "\\_")));
    sqlx::query_as(
        "SELECT id, name, email, created_at FROM users
         WHERE $1::text IS NULL OR name ILIKE $1 OR email ILIKE $1
         ORDER BY id DESC LIMIT $2",
    )
    .bind(pattern)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await
}
