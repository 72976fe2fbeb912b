//! `blocks`: who does not want contact from whom.

use sqlx::PgExecutor;

use crate::domain::model::PersonOut;

/// Idempotent: blocking twice is one block. A missing user fails on `blocks_blocked_id_fkey`.
pub async fn add(db: impl PgExecutor<'_>, blocker: i64, blocked: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(blocker)
    .bind(blocked)
    .execute(db)
    .await
    .map(drop)
}

pub async fn remove(db: impl PgExecutor<'_>, blocker: i64, blocked: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
        .bind(blocker)
        .bind(blocked)
        .execute(db)
        .await
        .map(drop)
}

/// The users `blocker` blocked, most recent first.
pub async fn list(db: impl PgExecutor<'_>, blocker: i64) -> sqlx::Result<Vec<PersonOut>> {
    sqlx::query_as(
        "SELECT u.id, u.name FROM blocks b JOIN users u ON u.id = b.blocked_id
         WHERE b.blocker_id = $1 ORDER BY b.created_at DESC, u.id",
    )
    .bind(blocker)
    .fetch_all(db)
    .await
}

/// Whether either of the two blocked the other: a private chat between them is closed both
/// ways (the blocker cannot keep writing to someone who cannot answer).
pub async fn between(db: impl PgExecutor<'_>, a: i64, b: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blocks
         WHERE (blocker_id = $1 AND blocked_id = $2) OR (blocker_id = $2 AND blocked_id = $1))",
    )
    .bind(a)
    .bind(b)
    .fetch_one(db)
    .await
}

/// Whether this private chat's two members are blocked either way.
pub async fn in_private_chat(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chats c JOIN blocks b
             ON (b.blocker_id = c.private_low AND b.blocked_id = c.private_high)
             OR (b.blocker_id = c.private_high AND b.blocked_id = c.private_low)
         WHERE c.id = $1)",
    )
    .bind(chat_id)
    .fetch_one(db)
    .await
}

/// Which of `ids` blocked `adder`, ascending.
pub async fn who_blocked(
    db: impl PgExecutor<'_>,
    adder: i64,
    ids: &[i64],
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT blocker_id FROM blocks WHERE blocked_id = $1 AND blocker_id = ANY($2)
         ORDER BY blocker_id",
    )
    .bind(adder)
    .bind(ids)
    .fetch_all(db)
    .await
}
