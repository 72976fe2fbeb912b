//! `chats`: private pairs and groups, and each chat's seq counter.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::model::{ChatSummary, Member, MessageOut};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Chat {
    pub id: i64,
    pub kind: String,
    pub name: Option<String>,
    pub creator_id: i64,
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
}

impl Chat {
    pub fn is_group(&self) -> bool {
        self.kind == "group"
    }
}

const COLUMNS: &str = "id, kind, name, creator_id, last_seq, created_at";

/// The private chat of two users, created if it does not exist. Two racing calls for the same
/// pair both end with the one row: the loser's INSERT waits on `chats_private_pair_key`, does
/// nothing, and the SELECT after it sees the winner's committed row.
pub async fn private_between(
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

/// Allocates the chat's next seq. The row lock this UPDATE takes is held to commit, so senders
/// in one chat queue here and seqs are handed out in commit order; a rollback returns the number.
pub async fn next_seq(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE chats SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
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
    pub last_read_seq: i64,
    pub unread_count: i64,
    pub created_at: DateTime<Utc>,
    pub lm_id: Option<i64>,
    pub lm_sender_id: Option<i64>,
    pub lm_text: Option<String>,
    pub lm_timestamp: Option<DateTime<Utc>>,
    pub lm_read: Option<bool>,
    pub lm_dedup_key: Option<String>,
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

/// One chat as each of `user_ids` sees it in their list (for `chat.added` events), in one query.
pub async fn summaries_for(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_ids: &[i64],
) -> sqlx::Result<Vec<(i64, ChatSummary)>> {
    let limit = i64::try_from(user_ids.len()).unwrap_or(i64::MAX);
    summaries(db, user_ids, Some(chat_id), limit, 0).await
}

/// Chat rows as `user_ids` see them (or just `only_chat`), paired with whose view each is.
async fn summaries(
    db: impl PgExecutor<'_>,
    user_ids: &[i64],
    only_chat: Option<i64>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<(i64, ChatSummary)>> {
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT me.user_id AS viewer_id, c.id, c.kind,
                CASE WHEN c.kind = 'private' THEN (
                    SELECT u.name FROM chat_members o JOIN users u ON u.id = o.user_id
                    WHERE o.chat_id = c.id AND o.user_id <> me.user_id LIMIT 1)
                ELSE c.name END AS name,
                c.creator_id, me.role, mem.ids AS member_ids, mem.names AS member_names,
                c.last_seq, me.last_read_seq,
                (SELECT count(*) FROM messages u
                  WHERE u.chat_id = c.id AND u.seq > me.last_read_seq AND u.sender_id <> me.user_id)
                    AS unread_count,
                c.created_at,
                lm.id AS lm_id, lm.sender_id AS lm_sender_id, lm.text AS lm_text,
                lm.created_at AS lm_timestamp, lm.dedup_key AS lm_dedup_key,
                CASE WHEN lm.id IS NULL THEN NULL ELSE NOT EXISTS (
                    SELECT 1 FROM chat_members r
                    WHERE r.chat_id = c.id AND r.user_id <> lm.sender_id AND r.last_read_seq < lm.seq)
                END AS lm_read
         FROM chat_members me
         JOIN chats c ON c.id = me.chat_id
         CROSS JOIN LATERAL (
             SELECT array_agg(a.user_id ORDER BY a.user_id) AS ids,
                    array_agg(u.name ORDER BY a.user_id) AS names
             FROM chat_members a JOIN users u ON u.id = a.user_id
             WHERE a.chat_id = c.id) mem
         LEFT JOIN messages lm ON lm.chat_id = c.id AND lm.seq = c.last_seq
         WHERE me.user_id = ANY($1) AND ($4::bigint IS NULL OR c.id = $4)
         ORDER BY coalesce(lm.created_at, c.created_at) DESC, c.id DESC, me.user_id
         LIMIT $2 OFFSET $3",
    )
    .bind(user_ids)
    .bind(limit)
    .bind(offset)
    .bind(only_chat)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.viewer_id, r.into())).collect())
}

impl From<ListRow> for ChatSummary {
    fn from(r: ListRow) -> Self {
        let last_message = match (r.lm_id, r.lm_sender_id, r.lm_text, r.lm_timestamp) {
            (Some(id), Some(sender_id), Some(text), Some(timestamp)) => Some(MessageOut {
                id,
                chat_id: r.id,
                seq: r.last_seq,
                sender_id,
                text,
                timestamp,
                read: r.lm_read.unwrap_or(false),
                dedup_key: r.lm_dedup_key,
            }),
            _ => None,
        };
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
            last_read_seq: r.last_read_seq,
            unread_count: r.unread_count,
            last_message,
            created_at: r.created_at,
        }
    }
}

/// The current `last_seq` of each of these chats.
pub async fn last_seqs(db: impl PgExecutor<'_>, chat_ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as("SELECT id, last_seq FROM chats WHERE id = ANY($1)")
        .bind(chat_ids)
        .fetch_all(db)
        .await
}

/// The chats `user_id` is a member of, with their current `last_seq` (optionally only among
/// `only`).
pub async fn positions_of_member(
    db: impl PgExecutor<'_>,
    user_id: i64,
    only: Option<&[i64]>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "SELECT c.id, c.last_seq FROM chat_members m JOIN chats c ON c.id = m.chat_id
         WHERE m.user_id = $1 AND ($2::bigint[] IS NULL OR c.id = ANY($2))",
    )
    .bind(user_id)
    .bind(only)
    .fetch_all(db)
    .await
}
