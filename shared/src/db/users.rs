//! `users`: accounts and their password hashes.

use sqlx::PgExecutor;

use crate::model::{Me, UserOut};

/// Inserts a user. A taken email fails on `users_email_key`, which the error type turns into 409.
pub async fn insert(
    db: impl PgExecutor<'_>,
    name: &str,
    email: &str,
    password_hash: &str,
) -> sqlx::Result<UserOut> {
    sqlx::query_as(
        "INSERT INTO users (name, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, name, email",
    )
    .bind(name)
    .bind(email)
    .bind(password_hash)
    .fetch_one(db)
    .await
}

/// The id and password hash for a login, matched case-insensitively.
pub async fn credentials(
    db: impl PgExecutor<'_>,
    email: &str,
) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(db)
        .await
}

pub async fn me(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<Me>> {
    sqlx::query_as("SELECT id, name, email, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn exists(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
}

/// Which of `ids` name no user, ascending.
pub async fn missing(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT i FROM unnest($1::bigint[]) AS i
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i) ORDER BY i",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}
