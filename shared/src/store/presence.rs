//! `relays`, `presence_connections` and the presence columns of `users` (migration
//! `20270106000001_presence`): which relays are alive, which users each holds connections of,
//! and what a viewer is shown of them ([`crate::domain::presence`]).

use sqlx::PgExecutor;

use crate::domain::presence::{EXPIRY, Presence, Privacy, PrivacyPatch, Stored, Visibility, shown};

/// A user's stored presence columns with whether a live relay holds them, and who may see it.
/// `$expiry` is the placeholder of the liveness bound in seconds.
macro_rules! stored_columns {
    ($expiry:literal) => {
        concat!(
            "u.id AS user_id,
         EXISTS (SELECT 1 FROM presence_connections pc JOIN relays r ON r.id = pc.relay_id
                 WHERE pc.user_id = u.id
                   AND r.heartbeat_at > now() - make_interval(secs => ",
            $expiry,
            ")) AS connected,
         u.presence_away AS away,
         greatest(u.last_seen_at,
                  (SELECT max(r.heartbeat_at) FROM presence_connections pc
                   JOIN relays r ON r.id = pc.relay_id
                   WHERE pc.user_id = u.id
                     AND r.heartbeat_at <= now() - make_interval(secs => ",
            $expiry,
            "))) AS last_seen,
         u.presence_visibility AS visibility"
        )
    };
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    user_id: i64,
    connected: bool,
    away: bool,
    last_seen: Option<chrono::DateTime<chrono::Utc>>,
    visibility: String,
}

impl Row {
    /// What a viewer whose own setting is `viewer` is shown of this row.
    fn shown(&self, viewer: Visibility, now: chrono::DateTime<chrono::Utc>) -> Option<Presence> {
        let stored = Stored {
            user_id: self.user_id,
            connected: self.connected,
            away: self.away,
            last_seen: self.last_seen,
        };
        shown(
            stored,
            Visibility::from_column(&self.visibility),
            viewer,
            now,
        )
    }
}

fn expiry_secs() -> f64 {
    EXPIRY.as_secs_f64()
}

/// What `viewer` is shown of `user_ids`, in the order asked: only those who share a chat with
/// them (themselves included), and nobody's when the viewer hides their own or the user
/// theirs. One statement, whatever the number of ids.
pub async fn shown_to(
    db: impl PgExecutor<'_>,
    viewer: i64,
    user_ids: &[i64],
) -> sqlx::Result<Vec<Presence>> {
    let sql = concat!(
        "SELECT ",
        stored_columns!("$3"),
        ", (SELECT presence_visibility FROM users WHERE id = $1) AS viewer_visibility
         FROM unnest($2::bigint[]) WITH ORDINALITY AS w(id, n)
         JOIN users u ON u.id = w.id
         WHERE u.id = $1
            OR EXISTS (SELECT 1 FROM chat_members a JOIN chat_members b ON b.chat_id = a.chat_id
                       WHERE a.user_id = $1 AND b.user_id = u.id)
         ORDER BY w.n"
    );
    #[derive(sqlx::FromRow)]
    struct Viewed {
        #[sqlx(flatten)]
        row: Row,
        viewer_visibility: Option<String>,
    }
    let rows: Vec<Viewed> = sqlx::query_as(sql)
        .bind(viewer)
        .bind(user_ids)
        .bind(expiry_secs())
        .fetch_all(db)
        .await?;
    let now = chrono::Utc::now();
    Ok(rows
        .iter()
        .filter_map(|v| {
            let viewer = Visibility::from_column(v.viewer_visibility.as_deref().unwrap_or(""));
            v.row.shown(viewer, now)
        })
        .collect())
}

/// What everyone who may see them is shown of `user_ids` (their contacts' view: none of a user
/// who hides theirs), for the relay's frames.
pub async fn of_users(db: impl PgExecutor<'_>, user_ids: &[i64]) -> sqlx::Result<Vec<Presence>> {
    let sql = concat!(
        "SELECT ",
        stored_columns!("$2"),
        " FROM users u WHERE u.id = ANY($1) ORDER BY u.id"
    );
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(user_ids)
        .bind(expiry_secs())
        .fetch_all(db)
        .await?;
    let now = chrono::Utc::now();
    Ok(rows
        .iter()
        .filter_map(|r| r.shown(Visibility::Contacts, now))
        .collect())
}

/// The relay `relay_id` is alive: its heartbeat now. `true` when its row was new: the
/// relay's first beat, or one after others took it for dead (reaped its rows while it was
/// stalled); then it must write all its users again ([`connected`]).
pub async fn beat(db: impl PgExecutor<'_>, relay_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "INSERT INTO relays (id, heartbeat_at) VALUES ($1, now())
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
         RETURNING xmax = 0",
    )
    .bind(relay_id)
    .fetch_one(db)
    .await
}

/// Users whose first connection on `relay_id` opened: their rows. The relay beat first.
pub async fn connected(
    db: impl PgExecutor<'_>,
    relay_id: &str,
    user_ids: &[i64],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO presence_connections (user_id, relay_id)
         SELECT u, $1 FROM unnest($2::bigint[]) u
         ON CONFLICT DO NOTHING",
    )
    .bind(relay_id)
    .bind(user_ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Users whose last connection on `relay_id` closed: their rows go, and they were last seen
/// now.
pub async fn disconnected(
    db: impl PgExecutor<'_>,
    relay_id: &str,
    user_ids: &[i64],
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH gone AS (
             DELETE FROM presence_connections
             WHERE relay_id = $1 AND user_id = ANY($2)
             RETURNING user_id)
         UPDATE users SET last_seen_at = now() WHERE id IN (SELECT user_id FROM gone)",
    )
    .bind(relay_id)
    .bind(user_ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes out the relays whose heartbeat is older than [`EXPIRY`]: they and their rows go,
/// their users last seen at the relay's last beat. Answers those users, ascending (some may
/// be online on another relay). Any relay may run it: two at once take out each dead relay
/// once (the second waits on the first's row locks, then finds them gone).
pub async fn reap(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "WITH stale AS (
             DELETE FROM relays WHERE heartbeat_at <= now() - make_interval(secs => $1)
             RETURNING id, heartbeat_at),
         gone AS (
             DELETE FROM presence_connections pc USING stale
             WHERE pc.relay_id = stale.id
             RETURNING pc.user_id, stale.heartbeat_at),
         seen AS (
             UPDATE users u SET last_seen_at = greatest(u.last_seen_at, g.heartbeat_at)
             FROM gone g WHERE u.id = g.user_id
             RETURNING u.id)
         SELECT DISTINCT id FROM seen ORDER BY id",
    )
    .bind(expiry_secs())
    .fetch_all(db)
    .await
}

/// Whether `user_id`'s client says they are away.
pub async fn set_away(db: impl PgExecutor<'_>, user_id: i64, away: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET presence_away = $2 WHERE id = $1")
        .bind(user_id)
        .bind(away)
        .execute(db)
        .await?;
    Ok(())
}

/// `user_id`'s privacy settings, changed as `patch` says (a field left out stays); `None` when
/// there is no such user.
pub async fn privacy(
    db: impl PgExecutor<'_>,
    user_id: i64,
    patch: &PrivacyPatch,
) -> sqlx::Result<Option<Privacy>> {
    sqlx::query_as(
        "WITH u AS (
             UPDATE users
             SET presence_visibility = coalesce($2, presence_visibility),
                 read_receipts = coalesce($3, read_receipts)
             WHERE id = $1
             RETURNING id, presence_visibility, read_receipts),
         m AS (
             UPDATE chat_members me SET receipts = u.read_receipts FROM u
             WHERE me.user_id = u.id AND me.receipts <> u.read_receipts)
         SELECT presence_visibility AS presence, read_receipts FROM u",
    )
    .bind(user_id)
    .bind(patch.presence.map(Visibility::as_str))
    .bind(patch.read_receipts)
    .fetch_optional(db)
    .await
}

/// `user_id`'s privacy settings as they are; `None` when there is no such user.
pub async fn privacy_of(db: impl PgExecutor<'_>, user_id: i64) -> sqlx::Result<Option<Privacy>> {
    sqlx::query_as("SELECT presence_visibility AS presence, read_receipts FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await
}

/// The relay `relay_id` stops: its users' rows go (last seen now) and so does the relay. Its
/// users who are connected elsewhere stay online there.
pub async fn leave(db: impl PgExecutor<'_>, relay_id: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM presence_connections WHERE relay_id = $1 RETURNING user_id),
         seen AS (
             UPDATE users SET last_seen_at = now() WHERE id IN (SELECT user_id FROM gone)
             RETURNING id),
         relay AS (DELETE FROM relays WHERE id = $1)
         SELECT id FROM seen ORDER BY id",
    )
    .bind(relay_id)
    .fetch_all(db)
    .await
}

/// The chats of each of `user_ids` (those in none are left out).
pub async fn chats_of(
    db: impl PgExecutor<'_>,
    user_ids: &[i64],
) -> sqlx::Result<std::collections::HashMap<i64, Vec<i64>>> {
    let rows: Vec<(i64, Vec<i64>)> = sqlx::query_as(
        "SELECT user_id, array_agg(chat_id ORDER BY chat_id) FROM chat_members
         WHERE user_id = ANY($1) GROUP BY user_id",
    )
    .bind(user_ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}
