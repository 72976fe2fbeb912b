//! `chat_members`: who is in which chat, with which role, and how far they have read.

use sqlx::PgExecutor;

/// Adds members who are not in the chat yet and answers the ones actually added, each with the
/// chat's seq at the moment they joined. A new member's read marker starts there: history stays
/// readable, but it neither counts as their unread nor makes older messages "unread by
/// everyone" again.
pub async fn add(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_ids: &[i64],
    role: &str,
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
         SELECT $1, u, $3, (SELECT last_seq FROM chats WHERE id = $1)
         FROM unnest($2::bigint[]) AS u
         ON CONFLICT (chat_id, user_id) DO NOTHING
         RETURNING user_id, last_read_seq",
    )
    .bind(chat_id)
    .bind(user_ids)
    .bind(role)
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

/// Removes a member; `false` if they were not in the chat.
pub async fn remove(db: impl PgExecutor<'_>, chat_id: i64, user_id: i64) -> sqlx::Result<bool> {
    let result = sqlx::query("DELETE FROM chat_members WHERE chat_id = $1 AND user_id = $2")
        .bind(chat_id)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Makes the longest-standing remaining member the owner, when a group's owner leaves.
pub async fn promote_eldest(db: impl PgExecutor<'_>, chat_id: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "UPDATE chat_members SET role = 'owner'
         WHERE (chat_id, user_id) = (
             SELECT chat_id, user_id FROM chat_members WHERE chat_id = $1
             ORDER BY joined_at, user_id LIMIT 1)
         RETURNING user_id",
    )
    .bind(chat_id)
    .fetch_optional(db)
    .await
}

/// Moves the marker forward to `seq`; answers the new value only if it moved. Markers never
/// move back: the WHERE clause makes an older seq a no-op, atomically.
pub async fn advance_read(
    db: impl PgExecutor<'_>,
    chat_id: i64,
    user_id: i64,
    seq: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "UPDATE chat_members SET last_read_seq = $3
         WHERE chat_id = $1 AND user_id = $2 AND last_read_seq < $3
         RETURNING last_read_seq",
    )
    .bind(chat_id)
    .bind(user_id)
    .bind(seq)
    .fetch_optional(db)
    .await
}
