//! `windi admin`: operator tasks on the database, run from a shell next to it.
//!
//! Ending sessions here (`end-sessions`, `disable`) refuses their access tokens within about a
//! second on a long-running API (its session cache's poller forgets them; at once on Lambda,
//! which has no cache), and the relays close their sockets within one poll interval, as for any
//! session that ended without its event: this process publishes nothing.
//!
//! Pruning runs here too: hourly inside `windi serve` ([`spawn_pruning`]), and as
//! `windi admin prune` for a deployment with no long-running windi (Lambda), on a schedule
//! (with the functions' `FILES_BUCKET`, so the files it removes are the deployment's).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use windi_shared::{
    service::{attachments, files::Files},
    store::sessions,
};

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
    Ok(windi_shared::store::sessions::end_all(pool, user_id, None)
        .await?
        .len())
}

/// Disables the user: their logins answer like a wrong password, and their sessions end.
/// Answers whether such a user exists.
pub async fn disable(pool: &PgPool, user_id: i64) -> windi_shared::Result<bool> {
    let mut tx = pool.begin().await?;
    let found = disable_in(&mut tx, user_id).await?;
    windi_shared::service::write::commit_without_events(tx).await?;
    Ok(found)
}

/// [`disable`] in the caller's transaction. The `UPDATE` locks the user's row, which a login
/// about to start a session waits for (`sessions::insert`), and the sessions end in the same
/// transaction: a login in flight either finds the account disabled or started its session
/// before, and that session is ended here.
pub async fn disable_in(tx: &mut PgConnection, user_id: i64) -> sqlx::Result<bool> {
    let found = sqlx::query(
        "UPDATE users SET disabled_at = coalesce(disabled_at, now())
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sessions::end_all(&mut *tx, user_id, None).await?;
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

/// Rows a pruning statement deletes at most (each its own short transaction).
pub const PRUNE_BATCH: i64 = 1_000;

/// How often `windi serve` prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub sessions: sessions::Pruned,
    pub files: attachments::Pruned,
}

/// Deletes used refresh tokens and ended sessions past their retention
/// ([`sessions::prune`]), uploads never sent in time, and the files of deleted messages
/// ([`attachments::prune`]; their bytes from `files`, the store they are kept in).
pub async fn prune(pool: &PgPool, files: Option<&Files>) -> windi_shared::Result<Pruned> {
    Ok(Pruned {
        sessions: sessions::prune(pool, PRUNE_BATCH).await?,
        files: attachments::prune(pool, files, PRUNE_BATCH).await?,
    })
}

/// Prunes at once and then every [`PRUNE_EVERY`], until `pool` is closed: `windi serve`'s
/// background job. Several processes pruning at once only delete the same rows once.
pub fn spawn_pruning(pool: PgPool, files: Option<Files>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            match prune(&pool, files.as_ref()).await {
                Ok(pruned) if pruned != Pruned::default() => tracing::info!(
                    used_tokens = pruned.sessions.used_tokens,
                    sessions = pruned.sessions.sessions,
                    unsent_files = pruned.files.expired,
                    files_removed = pruned.files.removed,
                    "pruned used refresh tokens, ended sessions and unreachable files"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
            }
        }
    });
}
