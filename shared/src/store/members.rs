//! `chat_members`: who is in which chat, with which role, and how far they have read.
//!
//! A membership change of an existing chat is a change of that chat: it takes a rev (the
//! caller holds the chat's lock from [`super::chats::lock`]) and a row in `chat_changes`. The
//! members a chat is created with are its initial state and take none.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::model::{ChatSettings, MutedUntil, Notify};

/// A member's settings of a chat as stored: `muted_until` is NULL, a time, or `infinity`
/// (forever), which chrono cannot hold, hence the flag; a time past reads as not muted.
#[derive(Debug, sqlx::FromRow)]
pub struct SettingsRow {
    pub muted_forever: bool,
    pub muted_until: Option<DateTime<Utc>>,
    pub notify: String,
}

/// The columns of [`SettingsRow`] from the member row `me`.
macro_rules! settings_columns {
    () => {
        "coalesce(me.muted_until = 'infinity', false) AS muted_forever,
         CASE WHEN me.muted_until <> 'infinity' AND me.muted_until > now()
              THEN me.muted_until END AS muted_until,
         me.notify"
    };
}
pub(crate) use settings_columns;

impl From<SettingsRow> for ChatSettings {
    fn from(r: SettingsRow) -> Self {
        let muted_until = if r.muted_forever {
            Some(MutedUntil::Forever)
        } else {
            r.muted_until.map(MutedUntil::Until)
        };
        Self {
            muted_until,
            notify: Notify::from_column(&r.notify),
        }
    }
}

/// A member just added.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Added {
    pub user_id: i64,
    /// The chat's seq when they joined: their read marker starts there, so history stays
    /// readable but neither counts as their unread nor makes older messages "unread" again.
    pub joined_seq: i64,
    /// The rev of their join (the chat's rev at creation for its initial members).
    pub joined_rev: i64,
    /// Their name, which `member` frames carry so every member can show who joined.
    pub name: String,
}

/// Adds the users who are not members yet, ascending by id. With `as_changes`, each addition is
/// a change of the chat: the caller holds the chat's lock at rev `rev`, the added members take
/// revs `rev + 1`, `rev + 2` … in id order, and the chat's rev moves past them; without it, they
/// join at the chat's current rev (a chat being created).
pub async fn add(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_ids: &[i64],
    role: &str,
    as_changes: bool,
) -> sqlx::Result<Vec<Added>> {
    sqlx::query_as(
        "WITH c AS (SELECT last_seq, rev FROM chats WHERE id = $1),
         fresh AS (
             SELECT u, row_number() OVER (ORDER BY u) AS n
             FROM unnest($2::bigint[]) AS u
             WHERE NOT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = u)),
         ins AS (
             INSERT INTO chat_members (chat_id, user_id, role, last_read_seq, joined_rev, receipts)
             SELECT $1, fresh.u, $3, c.last_seq, c.rev + CASE WHEN $4 THEN fresh.n ELSE 0 END,
                    u.read_receipts
             FROM fresh JOIN users u ON u.id = fresh.u, c
             RETURNING user_id, last_read_seq, joined_rev),
         log AS (
             INSERT INTO chat_changes (chat_id, rev, kind, user_id)
             SELECT $1, joined_rev, 'member_joined', user_id FROM ins WHERE $4),
         bump AS (
             UPDATE chats SET rev = rev + (SELECT count(*) FROM ins)
             WHERE id = $1 AND $4)
         SELECT ins.user_id, ins.last_read_seq AS joined_seq, ins.joined_rev, u.name
         FROM ins JOIN users u ON u.id = ins.user_id ORDER BY ins.user_id",
    )
    .bind(chat_id)
    .bind(user_ids)
    .bind(role)
    .bind(as_changes)
    .fetch_all(db)
    .await
}

/// Every member of the chat, ascending.
pub async fn ids(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT user_id FROM chat_members WHERE chat_id = $1 ORDER BY user_id")
        .bind(chat_id)
        .fetch_all(db)
        .await
}

/// Those of `user_ids` who are not members of `chat_id`, in the order given.
pub async fn not_among(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_ids: &[i64],
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT u FROM unnest($2::bigint[]) WITH ORDINALITY AS w(u, n)
         WHERE NOT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = u)
         ORDER BY n",
    )
    .bind(chat_id)
    .bind(user_ids)
    .fetch_all(db)
    .await
}

pub async fn role(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM chat_members WHERE chat_id = $1 AND user_id = $2")
        .bind(chat_id)
        .bind(user_id)
        .fetch_optional(db)
        .await
}

/// Removes a member as change `rev` of the chat (the caller holds the chat's lock); `false` if
/// they were not in it.
pub async fn remove(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
    rev: i64,
) -> sqlx::Result<bool> {
    let removed: Option<i64> = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM chat_members WHERE chat_id = $1 AND user_id = $2 RETURNING user_id),
         log AS (
             INSERT INTO chat_changes (chat_id, rev, kind, user_id)
             SELECT $1, $3, 'member_left', user_id FROM gone)
         SELECT user_id FROM gone",
    )
    .bind(chat_id)
    .bind(user_id)
    .bind(rev)
    .fetch_optional(db)
    .await?;
    Ok(removed.is_some())
}

/// The rev of `user_id`'s latest leaving of each of these chats (chats they never left are
/// missing): where a device that still lists a chat it was removed from is told it ended.
pub async fn left_revs(
    db: impl PgExecutor<'_>,
    user_id: i64,
    chat_ids: &[i64],
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "SELECT chat_id, max(rev) FROM chat_changes
         WHERE chat_id = ANY($1) AND kind = 'member_left' AND user_id = $2
         GROUP BY chat_id",
    )
    .bind(chat_ids)
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// A member's markers, as the relay sends them: read (`None` unless it moved since the rev
/// asked about) and delivered (likewise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Marker {
    pub chat_id: i64,
    pub user_id: i64,
    pub last_read_seq: Option<i64>,
    pub delivered_seq: Option<i64>,
    /// The member hides their reads: only their own devices are sent the read marker.
    pub hidden: bool,
}

/// The markers of these chats that moved at or after the given rev of each (`chats`: pairs of
/// chat and rev): what a device that resumes from those revs may have missed.
pub async fn markers_since(
    db: impl PgExecutor<'_>,
    chats: &[(i64, i64)],
) -> sqlx::Result<Vec<Marker>> {
    let (ids, revs): (Vec<i64>, Vec<i64>) = chats.iter().copied().unzip();
    sqlx::query_as(
        "SELECT m.chat_id, m.user_id,
                CASE WHEN m.read_rev >= r.rev AND m.read_rev > 0 THEN m.last_read_seq END
                    AS last_read_seq,
                CASE WHEN m.delivered_rev >= r.rev AND m.delivered_rev > 0 THEN m.delivered_seq END
                    AS delivered_seq,
                NOT m.receipts AS hidden
         FROM unnest($1::bigint[], $2::bigint[]) AS r (chat_id, rev)
         JOIN chat_members m ON m.chat_id = r.chat_id
              AND ((m.read_rev >= r.rev AND m.read_rev > 0)
                   OR (m.delivered_rev >= r.rev AND m.delivered_rev > 0))
         ORDER BY m.chat_id, m.user_id",
    )
    .bind(ids)
    .bind(revs)
    .fetch_all(db)
    .await
}

/// One marker move as the relay's feed lists it (see [`super::changes::horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct MarkerCommitted {
    pub xid: super::changes::Horizon,
    pub chat_id: i64,
    pub user_id: i64,
    pub last_read_seq: i64,
    pub hidden: bool,
}

impl MarkerCommitted {
    /// Where a feed read from `from` starts: before every row stamped `from`.
    pub fn start(from: super::changes::Horizon) -> Self {
        Self {
            xid: from,
            chat_id: i64::MIN,
            user_id: i64::MIN,
            last_read_seq: 0,
            hidden: false,
        }
    }
}

/// Markers moved by transactions from `after` (exclusive, in feed order) to the horizon `upto`
/// (exclusive), at most `limit`.
pub async fn markers_committed(
    db: impl PgExecutor<'_>,
    after: MarkerCommitted,
    upto: super::changes::Horizon,
    limit: i64,
) -> sqlx::Result<Vec<MarkerCommitted>> {
    sqlx::query_as(
        "SELECT read_xid::text::bigint AS xid, chat_id, user_id, last_read_seq,
                NOT receipts AS hidden
         FROM chat_members
         WHERE read_xid >= $1::text::xid8 AND read_xid < $4::text::xid8
           AND (read_xid, chat_id, user_id) > ($1::text::xid8, $2, $3)
         ORDER BY read_xid, chat_id, user_id LIMIT $5",
    )
    .bind(after.xid)
    .bind(after.chat_id)
    .bind(after.user_id)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Makes the longest-standing remaining member the owner, when a group's owner leaves: a change
/// of the chat with the next rev, logged as `member_promoted`. The caller holds the chat's lock
/// (it took the leaving's rev). Answers the new owner and the rev; `None`, taking no rev, when
/// nobody is left.
pub(crate) async fn promote_eldest(
    db: impl PgExecutor<'_>,
    chat_id: i64,
) -> sqlx::Result<Option<(i64, i64)>> {
    sqlx::query_as(
        "WITH eldest AS (
             SELECT user_id FROM chat_members WHERE chat_id = $1
             ORDER BY joined_at, user_id LIMIT 1),
         r AS (
             UPDATE chats SET rev = rev + 1
             WHERE id = $1 AND EXISTS (SELECT 1 FROM eldest) RETURNING rev),
         p AS (
             UPDATE chat_members me SET role = 'owner' FROM eldest, r
             WHERE me.chat_id = $1 AND me.user_id = eldest.user_id
             RETURNING me.user_id, r.rev),
         log AS (
             INSERT INTO chat_changes (chat_id, rev, kind, user_id)
             SELECT $1, rev, 'member_promoted', user_id FROM p)
         SELECT user_id, rev FROM p",
    )
    .bind(chat_id)
    .fetch_optional(db)
    .await
}

/// A read marker that moved: where to, the chat's rev then (read frames carry it), and
/// whether the reader hides their reads (then only their own devices are told).
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct ReadMoved {
    pub last_read_seq: i64,
    pub rev: i64,
    pub hidden: bool,
}

/// Moves the marker forward to `seq`, with its receipt mark (its time, for
/// `GET /chat/message/{id}/receipts`); answers the move only if it moved. Markers never move
/// back: the WHERE clause makes an older seq a no-op, atomically. A marker is the member's own
/// state, not a change of the chat: no rev.
pub async fn advance_read(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
    seq: i64,
) -> sqlx::Result<Option<ReadMoved>> {
    sqlx::query_as(
        "WITH mv AS (
             UPDATE chat_members
             SET last_read_seq = $3, read_rev = (SELECT rev FROM chats WHERE id = $1),
                 read_xid = pg_current_xact_id()
             WHERE chat_id = $1 AND user_id = $2 AND last_read_seq < $3
             RETURNING last_read_seq, read_rev, receipts),
         mk AS (
             INSERT INTO receipt_marks (chat_id, user_id, kind, seq)
             SELECT $1, $2, 'read', last_read_seq FROM mv)
         SELECT last_read_seq, read_rev AS rev, NOT receipts AS hidden FROM mv",
    )
    .bind(chat_id)
    .bind(user_id)
    .bind(seq)
    .fetch_optional(db)
    .await
}

/// Changes `user_id`'s settings of `chat_id`: `muted_until` when given (`None` inside to
/// unmute), `notify` when given. Answers the settings after, or `None` when they are not a
/// member.
pub async fn update_settings(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
    muted_until: Option<Option<MutedUntil>>,
    notify: Option<Notify>,
) -> sqlx::Result<Option<ChatSettings>> {
    let until = muted_until.flatten().map(|m| match m {
        MutedUntil::Forever => "infinity".to_owned(),
        MutedUntil::Until(at) => at.to_rfc3339(),
    });
    let row: Option<SettingsRow> = sqlx::query_as(concat!(
        "UPDATE chat_members me
         SET muted_until = CASE WHEN $3 THEN $4::text::timestamptz ELSE me.muted_until END,
             notify = coalesce($5, me.notify)
         WHERE chat_id = $1 AND user_id = $2
         RETURNING ",
        settings_columns!()
    ))
    .bind(chat_id)
    .bind(user_id)
    .bind(muted_until.is_some())
    .bind(until)
    .bind(notify.map(Notify::as_str))
    .fetch_optional(db)
    .await?;
    Ok(row.map(ChatSettings::from))
}
