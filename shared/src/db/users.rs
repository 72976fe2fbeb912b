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

/// Counts a join or leave for each of these users and answers their new `member_rev`s. Rows are
/// locked in id order, so concurrent membership changes of overlapping users cannot deadlock;
/// the lock is `NO KEY UPDATE`, which foreign-key checks (sends, new members) do not wait for.
pub async fn bump_member_revs(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "UPDATE users SET member_rev = member_rev + 1
         FROM (SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) l
         WHERE users.id = l.id
         RETURNING users.id, users.member_rev",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// The `member_rev` of each of these users (for the relay's poller).
pub async fn member_revs(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as("SELECT id, member_rev FROM users WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
}
