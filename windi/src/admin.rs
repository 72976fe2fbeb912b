//! `windi admin`: operator tasks on the database, run from a shell next to it.
//!
//! Ending sessions here takes effect on the next request of each (every route checks its
//! session); the relays close their sockets within one poll interval, as for any session that
//! ended without its event.

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
        "SELECT id, name, coalesce(email, '') AS email, created_at FROM users
         WHERE $1::text IS NULL OR name ILIKE $1 OR email ILIKE $1
         ORDER BY id DESC LIMIT $2",
    )
    .bind(pattern)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await
}

/// Ends every live session of the user; answers how many ended.
pub async fn end_sessions(pool: &PgPool, user_id: i64) -> sqlx::Result<usize> {
    Ok(windi_shared::db::sessions::end_all(pool, user_id, None)
        .await?
        .len())
}

/// Disables the user: their logins answer like a wrong password, and their sessions end.
/// Answers whether such a user exists.
pub async fn disable(pool: &PgPool, user_id: i64) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE users SET disabled_at = coalesce(disabled_at, now())
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    windi_shared::db::sessions::end_all(&mut *tx, user_id, None).await?;
    tx.commit().await?;
    Ok(found)
}

/// Lets a disabled user log in again.
pub async fn enable(pool: &PgPool, user_id: i64) -> sqlx::Result<bool> {
    let done =
        sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1 AND deleted_at IS NULL")
            .bind(user_id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}
