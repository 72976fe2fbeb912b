//! `messages`: the record. Every read returns [`MessageOut`], `read` flag included. Every write
//! that changes a message also records its change in `chat_changes`, in the same statement.

use sqlx::PgExecutor;

use crate::domain::model::{AttachmentOut, MessageOut};

/// The columns of [`MessageOut`] for a message aliased `m`. `read` is computed: true when no
/// member other than the sender has a shown marker below this message's seq (a member who
/// hides their reads shows 0: see migration 20270107000001).
macro_rules! message_columns {
    () => {
        "m.id, m.chat_id, m.seq, m.sender_id, m.text, m.created_at AS timestamp, m.dedup_key,
         m.rev, m.edited_at, m.deleted_at IS NOT NULL AS deleted, m.reply_to, m.reactions, m.attachments,
         m.mentions, m.pinned_at,
         NOT EXISTS (SELECT 1 FROM chat_members r
                     WHERE r.chat_id = m.chat_id AND r.user_id <> m.sender_id
                       AND r.shown_read_seq < m.seq) AS read"
    };
}
pub(crate) use message_columns;

/// A new message to store.
#[derive(Debug)]
pub(crate) struct NewMessage<'a> {
    pub chat_id: i64,
    pub sender_id: i64,
    pub text: &'a str,
    pub dedup_key: Option<&'a str>,
    pub content_hash: &'a [u8],
    pub reply_to: Option<i64>,
    /// The files it carries (locked for this send by the caller).
    pub attachments: &'a [AttachmentOut],
    /// The members it mentions (checked by the caller, under the chat's lock).
    pub mentions: &'a [i64],
}

/// A stored message and whether the sender's read marker moved to it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Inserted {
    #[sqlx(flatten)]
    pub message: MessageOut,
    /// The sender's new marker, if it moved (it does unless they had read further already).
    pub marker: Option<i64>,
    /// The sender hides their reads: the marker's event tells their own devices only.
    pub marker_hidden: bool,
}

/// The chat's next seq and rev for a new message. The row lock this UPDATE takes is held to
/// commit, so every change of the chat queues here and seq and rev both follow commit order; a
/// rollback hands the numbers back.
/// `None` if there is no such chat or `sender` is not in it: then no lock was taken (a stranger
/// never queues on a chat's row). [`insert`] checks membership again, after the lock.
pub async fn take_seq(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    sender: i64,
) -> sqlx::Result<Option<(i64, i64)>> {
    sqlx::query_as(
        "UPDATE chats SET last_seq = last_seq + 1, rev = rev + 1
         WHERE id = $1 AND EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)
         RETURNING last_seq, rev",
    )
    .bind(chat_id)
    .bind(sender)
    .fetch_optional(db)
    .await
}

/// The rest of a send's write, in one statement, after [`take_seq`]: the message, its change,
/// and the sender's marker (sending is reading).
///
/// Answers `None` when the sender is not a member (checked here, after the chat's lock was
/// granted, so a removal that committed meanwhile is seen), when `reply_to` is not a message of
/// this chat, when the chat is private and one of its two blocked the other, or when the
/// sender already used this dedup key — also in a concurrent
/// transaction, which the INSERT waits for. The caller must then roll back, which hands the
/// seq and rev back.
pub(crate) async fn insert(
    db: impl PgExecutor<'_>,
    new: &NewMessage<'_>,
    (seq, rev): (i64, i64),
) -> sqlx::Result<Option<Inserted>> {
    sqlx::query_as(concat!(
        "WITH m AS (
             INSERT INTO messages
                 (chat_id, seq, rev, created_rev, sender_id, text, dedup_key, content_hash, reply_to,
                  attachments, mentions)
             SELECT $1, $7, $8, $8, $2, $3, $4, $5, $6, $9, $10
             WHERE EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)
               AND NOT EXISTS (
                   SELECT 1 FROM chats c JOIN blocks b
                       ON (b.blocker_id = c.private_low AND b.blocked_id = c.private_high)
                       OR (b.blocker_id = c.private_high AND b.blocked_id = c.private_low)
                   WHERE c.id = $1)
               AND ($6::bigint IS NULL
                    OR EXISTS (SELECT 1 FROM messages r WHERE r.id = $6 AND r.chat_id = $1))
             ON CONFLICT (sender_id, dedup_key) DO NOTHING
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, 'message', id, sender_id FROM m),
         mn AS (
             INSERT INTO message_mentions (user_id, chat_id, seq, message_id)
             SELECT u, m.chat_id, m.seq, m.id FROM m, unnest(m.mentions) u
             WHERE u <> m.sender_id),
         mk AS (
             UPDATE chat_members me
             SET last_read_seq = m.seq, read_rev = m.rev, read_xid = pg_current_xact_id()
             FROM m
             WHERE me.chat_id = m.chat_id AND me.user_id = m.sender_id AND me.last_read_seq < m.seq
             RETURNING me.chat_id, me.user_id, me.last_read_seq, me.receipts),
         rm AS (
             INSERT INTO receipt_marks (chat_id, user_id, kind, seq)
             SELECT chat_id, user_id, 'read', last_read_seq FROM mk)
         SELECT ",
        message_columns!(),
        ", (SELECT last_read_seq FROM mk) AS marker,
           coalesce((SELECT NOT receipts FROM mk), false) AS marker_hidden FROM m"
    ))
    .bind(new.chat_id)
    .bind(new.sender_id)
    .bind(new.text)
    .bind(new.dedup_key)
    .bind(new.content_hash)
    .bind(new.reply_to)
    .bind(seq)
    .bind(rev)
    .bind(sqlx::types::Json(new.attachments))
    .bind(new.mentions)
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

/// A message as a change to it sees it: who may change it, and how it stands.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Subject {
    pub chat_id: i64,
    pub sender_id: i64,
    pub deleted: bool,
    pub pinned: bool,
    pub text: String,
    pub is_group: bool,
    /// The caller's role in the chat.
    pub role: String,
    /// A private chat one of whose two blocked the other: closed to new words both ways.
    pub blocked: bool,
}

/// The message and the caller's standing, if the caller is a member of its chat. With `lock`,
/// the message row is locked too: called after the chat's rev was taken, it reads the state
/// the change applies to (a concurrent change of the chat committed before the rev lock was
/// granted is visible to this new statement).
pub(crate) async fn subject(
    db: impl PgExecutor<'_>,
    message_id: i64,
    user_id: i64,
    lock: bool,
) -> sqlx::Result<Option<Subject>> {
    const SUBJECT: &str = "SELECT m.chat_id, m.sender_id, m.deleted_at IS NOT NULL AS deleted,
                m.pinned_at IS NOT NULL AS pinned, m.text,
                c.kind = 'group' AS is_group, me.role,
                c.kind = 'private' AND EXISTS (SELECT 1 FROM blocks b
                    WHERE (b.blocker_id = c.private_low AND b.blocked_id = c.private_high)
                       OR (b.blocker_id = c.private_high AND b.blocked_id = c.private_low))
                    AS blocked
         FROM messages m JOIN chats c ON c.id = m.chat_id
         JOIN chat_members me ON me.chat_id = m.chat_id AND me.user_id = $2
         WHERE m.id = $1";
    let query = if lock {
        sqlx::AssertSqlSafe(format!("{SUBJECT} FOR UPDATE OF m"))
    } else {
        sqlx::AssertSqlSafe(SUBJECT.to_owned())
    };
    sqlx::query_as(query)
        .bind(message_id)
        .bind(user_id)
        .fetch_optional(db)
        .await
}

/// Pins (`pin`) or unpins a message, as change `rev`.
pub(crate) async fn set_pinned(
    db: impl PgExecutor<'_>,
    message_id: i64,
    rev: i64,
    actor: i64,
    pin: bool,
) -> sqlx::Result<MessageOut> {
    sqlx::query_as(concat!(
        "WITH m AS (
             UPDATE messages SET pinned_at = CASE WHEN $4 THEN now() END, rev = $2 WHERE id = $1
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, CASE WHEN $4 THEN 'pinned' ELSE 'unpinned' END, id, $3 FROM m)
         SELECT ",
        message_columns!(),
        " FROM m"
    ))
    .bind(message_id)
    .bind(rev)
    .bind(actor)
    .bind(pin)
    .fetch_one(db)
    .await
}

/// How many messages of the chat are pinned (read under the chat's lock by a pin, so two
/// cannot pass the cap together).
pub(crate) async fn pinned_count(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1 AND pinned_at IS NOT NULL")
        .bind(chat_id)
        .fetch_one(db)
        .await
}

/// The pinned messages of a chat, newest pin first, at most
/// [`crate::domain::model::MAX_PINS`] (the caller checked the reader is a member).
pub async fn pinned(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<Vec<MessageOut>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m
         WHERE m.chat_id = $1 AND m.pinned_at IS NOT NULL
         ORDER BY m.pinned_at DESC, m.id DESC LIMIT $2"
    ))
    .bind(chat_id)
    .bind(crate::domain::model::MAX_PINS as i64)
    .fetch_all(db)
    .await
}

/// New text for a message, as change `rev`.
pub async fn edit(
    db: impl PgExecutor<'_>,
    message_id: i64,
    rev: i64,
    actor: i64,
    text: &str,
) -> sqlx::Result<MessageOut> {
    sqlx::query_as(concat!(
        "WITH m AS (
             UPDATE messages SET text = $4, edited_at = now(), rev = $2 WHERE id = $1
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, 'edited', id, $3 FROM m)
         SELECT ",
        message_columns!(),
        " FROM m"
    ))
    .bind(message_id)
    .bind(rev)
    .bind(actor)
    .bind(text)
    .fetch_one(db)
    .await
}

/// Turns a message into its tombstone, as change `rev`: the text is erased (not hidden) and
/// its reactions, attachments and mentions go with it (the caller takes the files out of reach). The id, seq and reply link stay, so threads and order hold.
pub async fn tombstone(
    db: impl PgExecutor<'_>,
    message_id: i64,
    rev: i64,
    actor: i64,
) -> sqlx::Result<MessageOut> {
    sqlx::query_as(concat!(
        "WITH gone AS (DELETE FROM message_reactions WHERE message_id = $1),
         unmentioned AS (DELETE FROM message_mentions WHERE message_id = $1),
         m AS (
             UPDATE messages SET text = '', deleted_at = now(), reactions = '[]', attachments = '[]',
                 mentions = '{}', pinned_at = NULL, rev = $2
             WHERE id = $1
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, 'deleted', id, $3 FROM m)
         SELECT ",
        message_columns!(),
        " FROM m"
    ))
    .bind(message_id)
    .bind(rev)
    .bind(actor)
    .fetch_one(db)
    .await
}

/// Adds `user_id`'s reaction; `false` if it was there already.
pub(crate) async fn add_reaction(
    db: impl PgExecutor<'_>,
    message_id: i64,
    user_id: i64,
    emoji: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO message_reactions (message_id, emoji, user_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(message_id)
    .bind(emoji)
    .bind(user_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes `user_id`'s reaction; `false` if there was none.
pub(crate) async fn remove_reaction(
    db: impl PgExecutor<'_>,
    message_id: i64,
    user_id: i64,
    emoji: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "DELETE FROM message_reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
    )
    .bind(message_id)
    .bind(emoji)
    .bind(user_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many distinct reactions the message has.
pub(crate) async fn reaction_kinds(db: impl PgExecutor<'_>, message_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(DISTINCT emoji) FROM message_reactions WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(db)
        .await
}

/// Recomputes the message's reaction summary after a reaction change, as change `rev` of kind
/// `kind` (`reaction_added` or `reaction_removed`). Reactions are listed in the order they were
/// first used; each lists its first 100 reactors.
pub(crate) async fn refresh_reactions(
    db: impl PgExecutor<'_>,
    message_id: i64,
    rev: i64,
    actor: i64,
    kind: &str,
) -> sqlx::Result<MessageOut> {
    sqlx::query_as(concat!(
        "WITH m AS (
             UPDATE messages SET rev = $2, reactions = coalesce((
                 SELECT jsonb_agg(jsonb_build_object(
                            'emoji', r.emoji, 'count', r.n, 'user_ids', to_jsonb(r.ids))
                        ORDER BY r.first, r.emoji)
                 FROM (SELECT emoji, count(*) AS n, min(created_at) AS first,
                              (array_agg(user_id ORDER BY created_at, user_id))[1:100] AS ids
                       FROM message_reactions WHERE message_id = $1 GROUP BY emoji) r),
                 '[]')
             WHERE id = $1
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, $4, id, $3 FROM m)
         SELECT ",
        message_columns!(),
        " FROM m"
    ))
    .bind(message_id)
    .bind(rev)
    .bind(actor)
    .bind(kind)
    .fetch_one(db)
    .await
}

/// The rev that created the message with this seq (for clients that resume by seq); 0 for seq
/// 0, `None` if the chat has no such message.
pub async fn created_rev_of_seq(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    seq: i64,
) -> sqlx::Result<Option<i64>> {
    if seq <= 0 {
        return Ok(Some(0));
    }
    sqlx::query_scalar("SELECT created_rev FROM messages WHERE chat_id = $1 AND seq = $2")
        .bind(chat_id)
        .bind(seq)
        .fetch_optional(db)
        .await
}

/// Messages by id, in any order.
pub(crate) async fn by_ids(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<MessageOut>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m WHERE m.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
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
    // Seqs are gap-free (1..last_seq, each allocated in the transaction that inserts its row)
    // and every seq keeps its row (a deleted message stays, as a tombstone), so skipping
    // `offset` rows after `after` is `seq > after + offset` (from the newest: below
    // `before - offset`): an index seek, where OFFSET would walk and build every skipped row
    // (1.5 s for the newest page of a 1M chat; `windi check` verifies the invariant).
    let (after, before) = if range.from_newest {
        (range.after, range.before.saturating_sub(range.offset))
    } else {
        (range.after.saturating_add(range.offset), range.before)
    };
    let query = if range.from_newest {
        concat!(
            "SELECT * FROM (SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq < $3
              ORDER BY m.seq DESC LIMIT $4) AS p ORDER BY seq"
        )
    } else {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq < $3
              ORDER BY m.seq LIMIT $4"
        )
    };
    sqlx::query_as(query)
        .bind(chat_id)
        .bind(after)
        .bind(before)
        .bind(range.limit)
        .fetch_all(db)
        .await
}

/// The messages of `chat_id` that mention `user_id`, a page of them in `range` (its `offset`
/// unused) as [`page`] pages: through their rows in `message_mentions`, one index range.
pub async fn mentioning(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
    range: SeqRange,
) -> sqlx::Result<Vec<MessageOut>> {
    let query = if range.from_newest {
        concat!(
            "SELECT * FROM (SELECT ",
            message_columns!(),
            " FROM message_mentions mm JOIN messages m ON m.id = mm.message_id
              WHERE mm.user_id = $5 AND mm.chat_id = $1 AND mm.seq > $2 AND mm.seq < $3
              ORDER BY mm.seq DESC LIMIT $4) AS p ORDER BY seq"
        )
    } else {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM message_mentions mm JOIN messages m ON m.id = mm.message_id
              WHERE mm.user_id = $5 AND mm.chat_id = $1 AND mm.seq > $2 AND mm.seq < $3
              ORDER BY mm.seq LIMIT $4"
        )
    };
    sqlx::query_as(query)
        .bind(chat_id)
        .bind(range.after)
        .bind(range.before)
        .bind(range.limit)
        .bind(user_id)
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
