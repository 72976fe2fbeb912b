//! `attachments`: one row per upload, from the link handed out to the object's pruning.
//!
//! A row's life is `pending` (a link was handed out) → `ready` (the bytes were checked) →
//! `sent` (a message carries it) → `deleted` (its message was deleted, or it was never sent in
//! time: out of reach at once, pruned with its objects later). Who may read it follows the
//! state: its uploader until it is sent, then the members of the chat it was sent to.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::domain::model::AttachmentOut;

/// A stored upload.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attachment {
    pub id: i64,
    pub uploader_id: i64,
    pub object_key: String,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    /// `pending`, `ready`, `sent` or `deleted`.
    pub state: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub thumbnail_key: Option<String>,
    pub upload_expires_at: DateTime<Utc>,
}

impl Attachment {
    pub fn is_pending(&self) -> bool {
        self.state == "pending"
    }

    /// As a message shows it.
    pub fn out(&self) -> AttachmentOut {
        AttachmentOut {
            id: self.id,
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            width: self.width,
            height: self.height,
            thumbnail: self
                .thumbnail_key
                .as_ref()
                .map(|_| format!("/chat/attachments/{}/thumbnail", self.id)),
        }
    }
}

const COLUMNS: &str = "id, uploader_id, object_key, filename, content_type, size, state, width, \
                       height, thumbnail_key, upload_expires_at";

/// An upload about to be announced.
#[derive(Debug)]
pub struct New<'a> {
    pub uploader_id: i64,
    pub object_key: &'a str,
    pub filename: &'a str,
    pub content_type: &'a str,
    pub size: i64,
    pub upload_expires_at: DateTime<Utc>,
}

/// What one user holds: bytes of every upload not deleted, and how many are not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Holdings {
    pub bytes: i64,
    pub unsent: i64,
}

/// Serialises one user's uploads until the transaction ends, so two at once cannot both fit
/// under a quota that only one fits under. An advisory lock, not the user's row: sends take a
/// key-share lock on that row, which a row lock would block.
pub async fn lock_uploader(tx: &mut PgConnection, uploader_id: i64) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('windi attachments', $1))")
        .bind(uploader_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// What `uploader_id` holds now (call under [`lock_uploader`] to act on it).
pub async fn holdings(db: impl PgExecutor<'_>, uploader_id: i64) -> sqlx::Result<Holdings> {
    sqlx::query_as(
        "SELECT coalesce(sum(size), 0)::bigint AS bytes,
                count(*) FILTER (WHERE state IN ('pending', 'ready')) AS unsent
         FROM attachments WHERE uploader_id = $1 AND state <> 'deleted'",
    )
    .bind(uploader_id)
    .fetch_one(db)
    .await
}

/// Records an upload about to begin.
pub async fn create(db: impl PgExecutor<'_>, new: &New<'_>) -> sqlx::Result<Attachment> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO attachments
             (uploader_id, object_key, filename, content_type, size, upload_expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING {COLUMNS}"
    )))
    .bind(new.uploader_id)
    .bind(new.object_key)
    .bind(new.filename)
    .bind(new.content_type)
    .bind(new.size)
    .bind(new.upload_expires_at)
    .fetch_one(db)
    .await
}

/// The attachment, if `reader` may read it: its uploader before it is sent, a member of the
/// chat it was sent to after. `None` otherwise, as if it did not exist.
pub async fn for_reader(
    db: impl PgExecutor<'_>,
    id: i64,
    reader: i64,
) -> sqlx::Result<Option<Attachment>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM attachments a
         WHERE a.id = $1
           AND ((a.state IN ('pending', 'ready') AND a.uploader_id = $2)
                OR (a.state = 'sent' AND EXISTS (
                        SELECT 1 FROM chat_members cm
                        WHERE cm.chat_id = a.chat_id AND cm.user_id = $2)))"
    )))
    .bind(id)
    .bind(reader)
    .fetch_optional(db)
    .await
}

/// The attachment by its object's key (the local upload route finds its row this way).
pub async fn by_object_key(
    db: impl PgExecutor<'_>,
    object_key: &str,
) -> sqlx::Result<Option<Attachment>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM attachments WHERE object_key = $1"
    )))
    .bind(object_key)
    .fetch_optional(db)
    .await
}

/// `uploader_id`'s unsent uploads among `ids` (those a send may finish and carry).
pub async fn unsent_of(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    uploader_id: i64,
) -> sqlx::Result<Vec<Attachment>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM attachments
         WHERE id = ANY($1) AND uploader_id = $2 AND state IN ('pending', 'ready')"
    )))
    .bind(ids)
    .bind(uploader_id)
    .fetch_all(db)
    .await
}

/// A pending upload whose bytes were checked becomes ready, with what was measured. `false`
/// when it was not pending any more (a concurrent check got there first, or it was pruned).
pub async fn mark_ready(
    db: impl PgExecutor<'_>,
    id: i64,
    dimensions: Option<(i32, i32)>,
    thumbnail_key: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE attachments SET state = 'ready', width = $2, height = $3, thumbnail_key = $4
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(dimensions.map(|d| d.0))
    .bind(dimensions.map(|d| d.1))
    .bind(thumbnail_key)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks `uploader_id`'s ready uploads among `ids` for a send, in the order of `ids`. The send
/// carries them only if every id is here.
pub async fn lock_ready(
    tx: &mut PgConnection,
    ids: &[i64],
    uploader_id: i64,
) -> sqlx::Result<Vec<Attachment>> {
    let mut rows: Vec<Attachment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM attachments
         WHERE id = ANY($1) AND uploader_id = $2 AND state = 'ready'
         ORDER BY id FOR UPDATE"
    )))
    .bind(ids)
    .bind(uploader_id)
    .fetch_all(tx)
    .await?;
    rows.sort_by_key(|a| ids.iter().position(|id| *id == a.id));
    Ok(rows)
}

/// The locked uploads now belong to `message_id` of `chat_id`.
pub async fn mark_sent(
    tx: &mut PgConnection,
    ids: &[i64],
    chat_id: i64,
    message_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE attachments SET state = 'sent', chat_id = $2, message_id = $3
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(chat_id)
    .bind(message_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// A deleted message's files: out of reach from now on (their objects are pruned later).
pub async fn mark_deleted_with_message(
    db: impl PgExecutor<'_>,
    message_id: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE attachments SET state = 'deleted' WHERE message_id = $1 AND state = 'sent'",
    )
    .bind(message_id)
    .execute(db)
    .await?
    .rows_affected())
}

/// Uploads not sent within `unsent_hours` of being announced are deleted (at most `batch`):
/// a send can no longer carry them, and the pruning takes their objects next.
pub async fn expire_unsent(
    db: impl PgExecutor<'_>,
    unsent_hours: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE attachments SET state = 'deleted'
         WHERE id IN (SELECT id FROM attachments
                      WHERE state IN ('pending', 'ready')
                        AND created_at < now() - make_interval(hours => $1::int)
                      ORDER BY created_at LIMIT $2
                      FOR UPDATE SKIP LOCKED)",
    )
    .bind(unsent_hours)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// A deleted upload whose objects are still to be removed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Gone {
    pub id: i64,
    pub object_key: String,
    pub thumbnail_key: Option<String>,
}

/// Up to `batch` deleted uploads, for the pruning to remove their objects.
pub async fn deleted(db: impl PgExecutor<'_>, batch: i64) -> sqlx::Result<Vec<Gone>> {
    sqlx::query_as(
        "SELECT id, object_key, thumbnail_key FROM attachments
         WHERE state = 'deleted' ORDER BY id LIMIT $1",
    )
    .bind(batch)
    .fetch_all(db)
    .await
}

/// Forgets deleted uploads whose objects are gone.
pub async fn forget(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM attachments WHERE id = ANY($1) AND state = 'deleted'")
            .bind(ids)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
