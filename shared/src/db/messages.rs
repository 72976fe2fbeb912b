//! `messages`: the record. Every read returns [`MessageOut`], `read` flag included.

use sqlx::PgExecutor;

use crate::model::MessageOut;

/// The columns of [`MessageOut`] for a message aliased `m`. `read` is computed: true when no
/// member other than the sender has a marker below this message's seq.
macro_rules! message_columns {
    () => {
        "m.id, m.chat_id, m.seq, m.sender_id, m.text, m.created_at AS timestamp, m.dedup_key,
         NOT EXISTS (SELECT 1 FROM chat_members r
                     WHERE r.chat_id = m.chat_id AND r.user_id <> m.sender_id
                       AND r.last_read_seq < m.seq) AS read"
    };
}

/// A new message to store.
#[derive(Debug)]
pub struct NewMessage<'a> {
    pub chat_id: i64,
    pub seq: i64,
    pub sender_id: i64,
    pub text: &'a str,
    pub dedup_key: Option<&'a str>,
    pub content_hash: &'a [u8],
}

/// Inserts the message, or answers `None` when the sender already used this dedup key — also
/// when that happened in a concurrent transaction, which this INSERT waits for.
pub async fn insert(
    db: impl PgExecutor<'_>,
    new: &NewMessage<'_>,
) -> sqlx::Result<Option<MessageOut>> {
    sqlx::query_as(concat!(
        "WITH m AS (
             INSERT INTO messages (chat_id, seq, sender_id, text, dedup_key, content_hash)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (sender_id, dedup_key) DO NOTHING
             RETURNING *)
         SELECT ",
        message_columns!(),
        " FROM m"
    ))
    .bind(new.chat_id)
    .bind(new.seq)
    .bind(new.sender_id)
    .bind(new.text)
    .bind(new.dedup_key)
    .bind(new.content_hash)
    .fetch_optional(db)
    .await
}

/// The message this sender stored under `dedup_key`, with its content hash.
pub async fn by_dedup_key(
    db: impl PgExecutor<'_>,
    sender_id: i64,
    dedup_key: &str,
) -> sqlx::Result<Option<(MessageOut, Vec<u8>)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        message: MessageOut,
        content_hash: Vec<u8>,
    }
    let row: Option<Row> = sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        ", m.content_hash FROM messages m WHERE m.sender_id = $1 AND m.dedup_key = $2"
    ))
    .bind(sender_id)
    .bind(dedup_key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.message, r.content_hash)))
}

/// The message, if `user_id` is a member of its chat (else `None`, as if it did not exist).
pub async fn for_member(
    db: impl PgExecutor<'_>,
    message_id: i64,
    user_id: i64,
) -> sqlx::Result<Option<MessageOut>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m
          WHERE m.id = $1 AND EXISTS (
              SELECT 1 FROM chat_members cm WHERE cm.chat_id = m.chat_id AND cm.user_id = $2)"
    ))
    .bind(message_id)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// A page of history, ascending by seq, bounded by `after` and `before` (exclusive). With
/// `from_newest`, the page is the newest `limit` messages below `before` (scrolling back);
/// otherwise the oldest `limit` above `after`, skipping `offset`.
pub async fn page(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    range: SeqRange,
) -> sqlx::Result<Vec<MessageOut>> {
    let query = if range.from_newest {
        concat!(
            "SELECT * FROM (SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq < $3
              ORDER BY m.seq DESC LIMIT $4 OFFSET $5) AS p ORDER BY seq"
        )
    } else {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq < $3
              ORDER BY m.seq LIMIT $4 OFFSET $5"
        )
    };
    sqlx::query_as(query)
        .bind(chat_id)
        .bind(range.after)
        .bind(range.before)
        .bind(range.limit)
        .bind(range.offset)
        .fetch_all(db)
        .await
}

/// Which slice of a chat's history to read; see [`page`].
#[derive(Debug, Clone, Copy)]
pub struct SeqRange {
    pub after: i64,
    pub before: i64,
    pub limit: i64,
    pub offset: i64,
    pub from_newest: bool,
}
