//! `chats`: private pairs and groups, and each chat's counters: `last_seq` (messages) and `rev`
//! (every change). The send path bumps both in [`super::messages::insert`]; every other change
//! takes its rev here, and the row lock that comes with it orders the chat's changes.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::members::{SettingsRow, settings_columns};
use crate::domain::model::{ChatSummary, Member, MessageOut};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Chat {
    pub id: i64,
    pub kind: String,
    pub name: Option<String>,
    pub creator_id: i64,
    pub last_seq: i64,
    pub rev: i64,
    pub created_at: DateTime<Utc>,
}

impl Chat {
    pub fn is_group(&self) -> bool {
        self.kind == "group"
    }
}

const COLUMNS: &str = "id, kind, name, creator_id, last_seq, rev, created_at";

/// The private chat of two users, created if it does not exist. Two racing calls for the same
/// pair both end with the one row: the loser's INSERT waits on `chats_private_pair_key`, does
/// nothing, and the SELECT after it sees the winner's committed row.
pub(crate) async fn private_between(
    tx: &mut sqlx::PgConnection,
    creator: i64,
    other: i64,
) -> sqlx::Result<(i64, bool)> {
    let (low, high) = (creator.min(other), creator.max(other));
    // Look first: the common case (the chat exists) then takes no lock and burns no id.
    if let Some(id) = private_id(&mut *tx, low, high).await? {
        return Ok((id, false));
    }
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO chats (kind, creator_id, private_low, private_high)
         VALUES ('private', $1, $2, $3)
         ON CONFLICT (private_low, private_high) DO NOTHING
         RETURNING id",
    )
    .bind(creator)
    .bind(low)
    .bind(high)
    .fetch_optional(&mut *tx)
    .await?;
    match created {
        Some(id) => Ok((id, true)),
        None => {
            let id = private_id(&mut *tx, low, high).await?;
            Ok((id.ok_or(sqlx::Error::RowNotFound)?, false))
        }
    }
}

async fn private_id(db: impl PgExecutor<'_>, low: i64, high: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT id FROM chats WHERE private_low = $1 AND private_high = $2")
        .bind(low)
        .bind(high)
        .fetch_optional(db)
        .await
}

pub async fn insert_group(db: impl PgExecutor<'_>, name: &str, creator: i64) -> sqlx::Result<Chat> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO chats (kind, name, creator_id) VALUES ('group', $1, $2) RETURNING {COLUMNS}"
    )))
    .bind(name)
    .bind(creator)
    .fetch_one(db)
    .await
}

/// The chat, if `user_id` is a member of it. Non-members get `None` whether or not it exists,
/// which is what keeps chat ids from being probed.
pub async fn for_member(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
) -> sqlx::Result<Option<Chat>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM chats c
         WHERE c.id = $1 AND EXISTS (
             SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = $2)"
    )))
    .bind(chat_id)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// Takes the chat's next `count` revs and answers the last one. The row lock this UPDATE takes
/// is held to commit, so changes of one chat queue here and their revs follow commit order; a
/// rollback hands the numbers back.
pub async fn take_revs(db: impl PgExecutor<'_>, chat_id: i64, count: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE chats SET rev = rev + $2 WHERE id = $1 RETURNING rev")
        .bind(chat_id)
        .bind(count)
        .fetch_one(db)
        .await
}

/// Locks the chat's row for a change whose size is not known yet (membership), answering its
/// rev; statements after it see every change committed before.
pub async fn lock(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT rev FROM chats WHERE id = $1 FOR NO KEY UPDATE")
        .bind(chat_id)
        .fetch_one(db)
        .await
}

/// One row of the chat list query, flattened; `last_message` columns are null for an empty chat.
#[derive(Debug, sqlx::FromRow)]
struct ListRow {
    pub viewer_id: i64,
    pub id: i64,
    pub kind: String,
    pub name: Option<String>,
    pub creator_id: i64,
    pub role: String,
    pub member_ids: Vec<i64>,
    pub member_names: Vec<String>,
    pub last_seq: i64,
    pub rev: i64,
    pub last_read_seq: i64,
    pub unread_count: i64,
    pub unread_mentions: i64,
    pub created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub settings: SettingsRow,
    /// The last message, as JSON (null for an empty chat): one column instead of a dozen.
    pub last_message: Option<sqlx::types::Json<MessageOut>>,
}

/// The caller's chats, most recently active first, each with its last message and unread count.
pub async fn list_for_user(
    db: impl PgExecutor<'_>,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<ChatSummary>> {
    let rows = summaries(db, &[user_id], None, limit, offset).await?;
    Ok(rows.into_iter().map(|(_, chat)| chat).collect())
}

/// These chats as `user_id` sees them in their list (for the relay's `chat` frames), in one
/// query; chats they are not in are left out.
pub async fn summaries_of(
    db: impl PgExecutor<'_>,
    user_id: i64,
    chat_ids: &[i64],
) -> sqlx::Result<Vec<ChatSummary>> {
    let limit = i64::try_from(chat_ids.len()).unwrap_or(i64::MAX);
    let rows = summaries(db, &[user_id], Some(chat_ids), limit, 0).await?;
    Ok(rows.into_iter().map(|(_, chat)| chat).collect())
}

/// Chat rows as `user_ids` see them (or just `only_chats`), paired with whose view each is.
///
/// The unread count comes from counters, so it costs the same for 0 and 5,000 unread messages:
/// the messages after the marker are `last_seq - last_read_seq` (seqs are gap-free), less the
/// deleted ones among them (a partial index holds only deleted messages). None of them is the
/// viewer's own: sending moves the sender's marker to their message.
async fn summaries(
    db: impl PgExecutor<'_>,
    user_ids: &[i64],
    only_chats: Option<&[i64]>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<(i64, ChatSummary)>> {
    // The page is chosen first, from the memberships and each chat's last message alone; the
    // member list and the other columns are then built for its rows only, not for all of a
    // user's chats (2,000 chats: 28 → 11 ms for a page of 200).
    let rows: Vec<ListRow> = sqlx::query_as(concat!(
        "WITH page AS (
             SELECT me.user_id, me.chat_id, me.role, me.last_read_seq, me.muted_until, me.notify,
                    coalesce((SELECT max(m.created_at) FROM messages m
                              WHERE m.chat_id = c.id AND m.seq = c.last_seq),
                             c.created_at) AS active_at
             FROM chat_members me
             JOIN chats c ON c.id = me.chat_id
             WHERE me.user_id = ANY($1) AND ($4::bigint[] IS NULL OR c.id = ANY($4))
             ORDER BY active_at DESC, c.id DESC, me.user_id
             LIMIT $2 OFFSET $3)
         SELECT me.user_id AS viewer_id, c.id, c.kind,
                CASE WHEN c.kind = 'private' THEN (
                    SELECT u.name FROM chat_members o JOIN users u ON u.id = o.user_id
                    WHERE o.chat_id = c.id AND o.user_id <> me.user_id LIMIT 1)
                ELSE c.name END AS name,
                c.creator_id, me.role, mem.ids AS member_ids, mem.names AS member_names,
                c.last_seq, c.rev, me.last_read_seq,
                greatest(0, c.last_seq - me.last_read_seq - (
                    SELECT count(*) FROM messages d
                    WHERE d.chat_id = c.id AND d.deleted_at IS NOT NULL
                      AND d.seq > me.last_read_seq)) AS unread_count,
                (SELECT count(*) FROM message_mentions mm
                 WHERE mm.user_id = me.user_id AND mm.chat_id = c.id
                   AND mm.seq > me.last_read_seq) AS unread_mentions,
                c.created_at, ",
        settings_columns!(),
        ",
                (SELECT to_jsonb(lm) FROM (SELECT ",
        super::messages::message_columns!(),
        " FROM messages m WHERE m.chat_id = c.id AND m.seq = c.last_seq) lm) AS last_message,
                me.active_at
         FROM page me
         JOIN chats c ON c.id = me.chat_id
         CROSS JOIN LATERAL (
             SELECT array_agg(a.user_id ORDER BY a.user_id) AS ids,
                    array_agg(u.name ORDER BY a.user_id) AS names
             FROM chat_members a JOIN users u ON u.id = a.user_id
             WHERE a.chat_id = c.id) mem
         ORDER BY me.active_at DESC, c.id DESC, me.user_id"
    ))
    .bind(user_ids)
    .bind(limit)
    .bind(offset)
    .bind(only_chats)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.viewer_id, r.into())).collect())
}

impl From<ListRow> for ChatSummary {
    fn from(r: ListRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            name: r.name,
            creator_id: r.creator_id,
            role: r.role,
            members: r
                .member_ids
                .iter()
                .zip(r.member_names)
                .map(|(&id, name)| Member { id, name })
                .collect(),
            member_ids: r.member_ids,
            last_seq: r.last_seq,
            rev: r.rev,
            last_read_seq: r.last_read_seq,
            unread_count: r.unread_count,
            unread_mentions: r.unread_mentions,
            last_message: r.last_message.map(|m| m.0),
            created_at: r.created_at,
            settings: r.settings.into(),
            presence: None,
        }
    }
}

/// The current rev of each of these chats.
pub async fn revs(db: impl PgExecutor<'_>, chat_ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as("SELECT id, rev FROM chats WHERE id = ANY($1)")
        .bind(chat_ids)
        .fetch_all(db)
        .await
}

/// Where a member stands in one of their chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Position {
    pub chat_id: i64,
    /// The chat's current rev.
    pub rev: i64,
    /// The chat's rev when the member joined.
    pub joined_rev: i64,
}

/// The chats `user_id` is a member of, with their current rev and the member's join rev.
pub async fn positions_of_member(
    db: impl PgExecutor<'_>,
    user_id: i64,
) -> sqlx::Result<Vec<Position>> {
    sqlx::query_as(
        "SELECT c.id AS chat_id, c.rev, m.joined_rev
         FROM chat_members m JOIN chats c ON c.id = m.chat_id
         WHERE m.user_id = $1",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}
