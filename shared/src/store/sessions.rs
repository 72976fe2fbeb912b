//! `sessions` and `used_refresh_tokens`: who is logged in where, and which refresh tokens are
//! used up. A session ends by getting an `ended_at` (and `ended_xid`, the ending transaction,
//! which puts the ending in the relay's feed: [`ended_committed`]); it is deleted only by
//! [`prune`], [`ENDED_SESSION_RETENTION_DAYS`] later, so until then a used refresh token
//! presented again still finds the session it belonged to.
//!
//! Every session of a user is started and ended under a lock on the user's row ([`insert`]),
//! so disabling or deleting an account, or changing its password, cannot miss a login that is
//! in flight.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// How long a refresh token stays usable without being used. Each refresh issues a new one with
/// a fresh lifetime, so a session used at least monthly lives on; one left alone dies. Here,
/// with the queries, because the store writes every token's expiry.
const REFRESH_TOKEN_TTL_DAYS: i64 = 30;

/// A live session as `GET /auth/sessions` lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub user_agent: Option<String>,
}

/// Starts a session for a login, in the caller's transaction; answers its id, or `None` if the
/// account is no longer live (disabled, deleted) or its password hash is no longer
/// `verified_hash`, the one the login checked the password against.
///
/// The row is read `FOR SHARE`, which waits for any transaction that updates it: disabling,
/// deletion and a password change each update the row and end the sessions in one transaction.
/// A login behind one of them re-reads the row once it commits and starts no session; one
/// of them behind a login waits for the login's commit and then ends the session it started.
/// (The foreign key's own `FOR KEY SHARE` does not wait for such updates: hence this lock.)
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: i64,
    verified_hash: &str,
    user_agent: Option<&str>,
    refresh_hash: &[u8],
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO sessions (user_id, user_agent, refresh_hash, refresh_expires_at)
         SELECT id, $2, $3, now() + make_interval(days => $4) FROM users
         WHERE id = $1 AND password_hash = $5 AND disabled_at IS NULL AND deleted_at IS NULL
         FOR SHARE
         RETURNING id",
    )
    .bind(user_id)
    .bind(user_agent)
    .bind(refresh_hash)
    .bind(REFRESH_TOKEN_TTL_DAYS as i32)
    .bind(verified_hash)
    .fetch_optional(db)
    .await
}

/// The hot-path check behind every authenticated request: is this session live, the token's
/// user its user, and that user's account live (not disabled, not deleted)? Two primary-key
/// lookups. `last_used_at` is moved at most once a minute per session, so the check is a write
/// only once a minute, not on every request.
pub async fn check(db: impl PgExecutor<'_>, session_id: i64, user_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH s AS (
             SELECT s.id, s.last_used_at FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2 AND s.ended_at IS NULL
               AND u.disabled_at IS NULL AND u.deleted_at IS NULL
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
    /// The token was used up by the session's last refresh, within the grace, and that
    /// refresh's successor (`new_hash`) is still current: a retry of a refresh whose answer was
    /// lost. Nothing changed; the caller answers that successor again.
    Retried { session_id: i64, user_id: i64 },
    /// The token was used before (and is no retry): the session it belonged to (now ended by
    /// the caller).
    Reused { session_id: i64, user_id: i64 },
    /// Unknown, expired, of an ended session, or of an account no longer live.
    Invalid,
}

/// Exchanges the refresh token hashed as `old_hash` for `new_hash` (the hash of its successor,
/// [`crate::service::auth::Tokens::successor`]), in the caller's transaction. The `UPDATE … WHERE
/// refresh_hash = old` takes the session's row lock, so of two concurrent refreshes with one
/// token, one rotates and the other, once it commits, finds the token used: within `grace`,
/// with the successor still current, a retry ([`Rotation::Retried`]); otherwise reuse.
pub async fn rotate(
    tx: &mut sqlx::PgConnection,
    old_hash: &[u8],
    new_hash: &[u8],
    grace: Duration,
) -> sqlx::Result<Rotation> {
    let rotated: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE sessions s
         SET refresh_hash = $2, refresh_expires_at = now() + make_interval(days => $3),
             last_used_at = now()
         FROM users u
         WHERE s.refresh_hash = $1 AND s.ended_at IS NULL AND s.refresh_expires_at > now()
           AND u.id = s.user_id AND u.disabled_at IS NULL AND u.deleted_at IS NULL
         RETURNING s.id, s.user_id",
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
    // The successor's being current is what makes the token the immediate predecessor: any
    // older token's successor has been used up in turn.
    let used: Option<(i64, i64, bool)> = sqlx::query_as(
        "SELECT s.id, s.user_id,
                u.used_at > now() - make_interval(secs => $3)
                AND s.refresh_hash = $2 AND s.ended_at IS NULL AND s.refresh_expires_at > now()
                AND EXISTS (SELECT 1 FROM users a WHERE a.id = s.user_id
                            AND a.disabled_at IS NULL AND a.deleted_at IS NULL)
         FROM used_refresh_tokens u JOIN sessions s ON s.id = u.session_id
         WHERE u.token_hash = $1",
    )
    .bind(old_hash)
    .bind(new_hash)
    .bind(grace.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match used {
        Some((session_id, user_id, true)) => Rotation::Retried {
            session_id,
            user_id,
        },
        Some((session_id, user_id, false)) => Rotation::Reused {
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
/// ([`crate::service::session_cache`]). A range of the partial index on `ended_at`.
pub(crate) async fn ended_since(
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

/// A session that ended, where the feed has it (see [`super::changes::horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct EndedCommitted {
    pub xid: super::changes::Horizon,
    pub session_id: i64,
    pub user_id: i64,
}

impl EndedCommitted {
    /// Where a feed read from `from` starts.
    pub fn start(from: super::changes::Horizon) -> Self {
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
    upto: super::changes::Horizon,
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

/// Used refresh tokens are kept this many days after their use. By then the token had expired
/// anyway (it lived [`REFRESH_TOKEN_TTL_DAYS`] from its issue, which was before its use), so
/// one presented later is refused as unknown instead of ending its session as reuse.
const USED_TOKEN_RETENTION_DAYS: i64 = REFRESH_TOKEN_TTL_DAYS;

/// Ended sessions (and their used tokens) are kept this many days after they ended. What reads
/// them needs far less: the relay's feed reads what ended since its last poll (and a socket it
/// missed closes when its token expires, 30 minutes by default), the session cache's poller the
/// last minute or so ([`crate::service::session_cache::SYNC_OVERLAP`]).
const ENDED_SESSION_RETENTION_DAYS: i64 = 7;

/// What one [`prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub used_tokens: u64,
    pub sessions: u64,
}

/// Deletes used refresh tokens older than [`USED_TOKEN_RETENTION_DAYS`] and sessions ended
/// more than [`ENDED_SESSION_RETENTION_DAYS`] ago with their used tokens, at most `batch` rows
/// a statement (each its own transaction, so no lock is held for long), until none is left.
pub async fn prune(db: &PgPool, batch: i64) -> sqlx::Result<Pruned> {
    // Tokens first: a session is deleted only once no used token points at it.
    let old_tokens = in_batches(
        db,
        batch,
        "DELETE FROM used_refresh_tokens WHERE token_hash IN (
             SELECT token_hash FROM used_refresh_tokens
             WHERE used_at < now() - make_interval(days => $1) LIMIT $3)",
    )
    .await?;
    let tokens_of_ended = in_batches(
        db,
        batch,
        "DELETE FROM used_refresh_tokens WHERE token_hash IN (
             SELECT u.token_hash FROM sessions s JOIN used_refresh_tokens u ON u.session_id = s.id
             WHERE s.ended_at < now() - make_interval(days => $2) LIMIT $3)",
    )
    .await?;
    let sessions = in_batches(
        db,
        batch,
        "DELETE FROM sessions WHERE id IN (
             SELECT s.id FROM sessions s
             WHERE s.ended_at < now() - make_interval(days => $2)
               AND NOT EXISTS (SELECT 1 FROM used_refresh_tokens u WHERE u.session_id = s.id)
             LIMIT $3)",
    )
    .await?;
    Ok(Pruned {
        used_tokens: old_tokens + tokens_of_ended,
        sessions,
    })
}

/// Runs a `DELETE … LIMIT $3` (given the retentions as `$1` and `$2`) until it deletes fewer
/// than `batch` rows; answers how many it deleted.
async fn in_batches(db: &PgPool, batch: i64, statement: &'static str) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(statement)
            .bind(USED_TOKEN_RETENTION_DAYS as i32)
            .bind(ENDED_SESSION_RETENTION_DAYS as i32)
            .bind(batch)
            .execute(db)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < batch.max(1) as u64 {
            return Ok(total);
        }
    }
}
