//! `sessions` and `used_refresh_tokens`: who is logged in where, and which refresh tokens are
//! used up. A session ends by getting an `ended_at` (and `ended_xid`, the ending transaction,
//! which puts the ending in the relay's feed: [`ended_committed`]); it is never deleted, so a
//! used refresh token presented later still finds the session it belonged to.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::auth::REFRESH_TOKEN_TTL_DAYS;

/// A live session as `GET /auth/sessions` lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub user_agent: Option<String>,
}

/// Starts a session for a login; answers its id.
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: i64,
    user_agent: Option<&str>,
    refresh_hash: &[u8],
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO sessions (user_id, user_agent, refresh_hash, refresh_expires_at)
         VALUES ($1, $2, $3, now() + make_interval(days => $4))
         RETURNING id",
    )
    .bind(user_id)
    .bind(user_agent)
    .bind(refresh_hash)
    .bind(REFRESH_TOKEN_TTL_DAYS as i32)
    .fetch_one(db)
    .await
}

/// The hot-path check behind every authenticated request: is this session live, and the
/// token's user its user? One primary-key lookup. `last_used_at` is moved at most once a
/// minute per session, so the check is a write only once a minute, not on every request.
pub async fn check(db: impl PgExecutor<'_>, session_id: i64, user_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH s AS (
             SELECT id, last_used_at FROM sessions
             WHERE id = $1 AND user_id = $2 AND ended_at IS NULL
         ), touched AS (
             UPDATE sessions SET last_used_at = now()
             FROM s WHERE sessions.id = s.id AND s.last_used_at < now() - interval '1 minute'
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM s)",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_one(db)
    .await
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum Rotation {
    /// The token was the session's current one; it is used up now, `new_hash` is current.
    Rotated { session_id: i64, user_id: i64 },
    /// The token was used before: the session it belonged to (now ended by the caller).
    Reused { session_id: i64, user_id: i64 },
    /// Unknown, expired, or of an ended session.
    Invalid,
}

/// Exchanges the refresh token hashed as `old_hash` for `new_hash`, in the caller's
/// transaction. The `UPDATE … WHERE refresh_hash = old` takes the session's row lock, so of two
/// concurrent refreshes with one token, one rotates and the other finds it used (reuse).
pub async fn rotate(
    tx: &mut sqlx::PgConnection,
    old_hash: &[u8],
    new_hash: &[u8],
) -> sqlx::Result<Rotation> {
    let rotated: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE sessions
         SET refresh_hash = $2, refresh_expires_at = now() + make_interval(days => $3),
             last_used_at = now()
         WHERE refresh_hash = $1 AND ended_at IS NULL AND refresh_expires_at > now()
         RETURNING id, user_id",
    )
    .bind(old_hash)
    .bind(new_hash)
    .bind(REFRESH_TOKEN_TTL_DAYS as i32)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((session_id, user_id)) = rotated {
        sqlx::query("INSERT INTO used_refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind(old_hash)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        return Ok(Rotation::Rotated {
            session_id,
            user_id,
        });
    }
    let reused: Option<(i64, i64)> = sqlx::query_as(
        "SELECT s.id, s.user_id FROM used_refresh_tokens u JOIN sessions s ON s.id = u.session_id
         WHERE u.token_hash = $1",
    )
    .bind(old_hash)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match reused {
        Some((session_id, user_id)) => Rotation::Reused {
            session_id,
            user_id,
        },
        None => Rotation::Invalid,
    })
}

/// Ends these sessions of `user_id` (those still live); answers the ids that ended now.
pub async fn end(
    db: impl PgExecutor<'_>,
    user_id: i64,
    session_ids: &[i64],
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "UPDATE sessions SET ended_at = now(), ended_xid = pg_current_xact_id()
         WHERE user_id = $1 AND id = ANY($2) AND ended_at IS NULL RETURNING id",
    )
    .bind(user_id)
    .bind(session_ids)
    .fetch_all(db)
    .await
}

/// Ends every live session of `user_id` but `keep` (if any); answers the ids that ended.
pub async fn end_all(
    db: impl PgExecutor<'_>,
    user_id: i64,
    keep: Option<i64>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "UPDATE sessions SET ended_at = now(), ended_xid = pg_current_xact_id()
         WHERE user_id = $1 AND ended_at IS NULL AND id IS DISTINCT FROM $2 RETURNING id",
    )
    .bind(user_id)
    .bind(keep)
    .fetch_all(db)
    .await
}

/// The user's live sessions, most recently used first.
pub async fn live(db: impl PgExecutor<'_>, user_id: i64) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(
        "SELECT id, created_at, last_used_at, user_agent FROM sessions
         WHERE user_id = $1 AND ended_at IS NULL ORDER BY last_used_at DESC, id DESC",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// Postgres's clock now, and the sessions ended at or after `since` (all that ended in the
/// last minute when `None`): what the API's session cache forgets
/// ([`crate::session_cache`]). A range of the partial index on `ended_at`.
pub async fn ended_since(
    db: impl PgExecutor<'_>,
    since: Option<DateTime<Utc>>,
) -> sqlx::Result<(DateTime<Utc>, Vec<i64>)> {
    sqlx::query_as(
        "SELECT now(), ARRAY(SELECT id FROM sessions
                             WHERE ended_at >= coalesce($1, now() - interval '1 minute'))",
    )
    .bind(since)
    .fetch_one(db)
    .await
}

/// A session that ended, where the feed has it (see [`crate::db::changes::horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct EndedCommitted {
    pub xid: crate::db::changes::Horizon,
    pub session_id: i64,
    pub user_id: i64,
}

impl EndedCommitted {
    /// Where a feed read from `from` starts.
    pub fn start(from: crate::db::changes::Horizon) -> Self {
        Self {
            xid: from,
            session_id: i64::MIN,
            user_id: 0,
        }
    }
}

/// Sessions ended by transactions in `[after.xid, upto)`, after `after`, at most `limit`, in
/// feed order (for the relay's poller; `upto` a past horizon, so the range is final).
pub async fn ended_committed(
    db: impl PgExecutor<'_>,
    after: EndedCommitted,
    upto: crate::db::changes::Horizon,
    limit: i64,
) -> sqlx::Result<Vec<EndedCommitted>> {
    sqlx::query_as(
        "SELECT s.ended_xid::text::bigint AS xid, s.id AS session_id, s.user_id FROM sessions s
         WHERE s.ended_xid >= $1::text::xid8 AND s.ended_xid < $3::text::xid8
           AND (s.ended_xid, s.id) > ($1::text::xid8, $2)
         ORDER BY s.ended_xid, s.id LIMIT $4",
    )
    .bind(after.xid)
    .bind(after.session_id)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}
