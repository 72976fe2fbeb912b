//! `users`: accounts and their password hashes.

use sqlx::PgExecutor;

use crate::domain::model::{Me, PersonOut, UserOut};

/// Inserts a user. A taken email fails on `users_email_key`, which the error type turns into 409.
pub async fn insert(
    db: impl PgExecutor<'_>,
    name: &str,
    email: &str,
    password_hash: &str,
) -> sqlx::Result<UserOut> {
    sqlx::query_as(
        "INSERT INTO users (name, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, name, email",
    )
    .bind(name)
    .bind(email)
    .bind(password_hash)
    .fetch_one(db)
    .await
}

/// The id and password hash for a login, matched case-insensitively. A deleted account has no
/// email, so it is never found.
pub async fn credentials(
    db: impl PgExecutor<'_>,
    email: &str,
) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as(
        "SELECT id, password_hash FROM users
         WHERE lower(email) = lower($1) AND deleted_at IS NULL AND disabled_at IS NULL",
    )
    .bind(email)
    .fetch_optional(db)
    .await
}

/// The password hash of a live account (for re-authentication: password change, deletion).
pub async fn password_hash(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn me(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<Me>> {
    sqlx::query_as(
        "SELECT id, name, email, created_at FROM users WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Renames a live user; answers the profile.
pub async fn rename(db: impl PgExecutor<'_>, id: i64, name: &str) -> sqlx::Result<Option<Me>> {
    sqlx::query_as(
        "UPDATE users SET name = $2, renamed_at = now() WHERE id = $1 AND deleted_at IS NULL
         RETURNING id, name, email, created_at",
    )
    .bind(id)
    .bind(name)
    .fetch_optional(db)
    .await
}

pub async fn set_password_hash(db: impl PgExecutor<'_>, id: i64, hash: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(db)
        .await
        .map(drop)
}

/// What a deleted user shows as wherever they appear (chat lists, members).
const DELETED_NAME: &str = "Deleted user";

/// Turns the account into a tombstone: no email (free to register again), no usable password
/// hash (an empty string is no PHC string, so nothing verifies against it), the deleted name.
/// The row stays: messages, chats and changes point at it.
pub async fn tombstone(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET email = NULL, password_hash = '', name = $2, deleted_at = now(),
             renamed_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(DELETED_NAME)
    .execute(db)
    .await
    .map(drop)
}

/// A member's name, as the relay sends it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Named {
    pub chat_id: i64,
    pub user_id: i64,
    pub name: String,
}

/// The members of these chats who changed their name since the given rev of each was
/// committed (`chats`: pairs of chat and rev): what a device that resumes from those revs may
/// have missed. With a margin of the longest a transaction may run (a rename that started
/// before the rev's transaction may have committed after it): a name sent twice changes
/// nothing.
pub async fn renamed_since(
    db: impl PgExecutor<'_>,
    chats: &[(i64, i64)],
) -> sqlx::Result<Vec<Named>> {
    let (ids, revs): (Vec<i64>, Vec<i64>) = chats.iter().copied().unzip();
    sqlx::query_as(
        "SELECT r.chat_id, m.user_id, u.name
         FROM unnest($1::bigint[], $2::bigint[]) AS r (chat_id, rev)
         JOIN chat_members m ON m.chat_id = r.chat_id
         JOIN users u ON u.id = m.user_id
         WHERE u.renamed_at > coalesce(
             (SELECT c.created_at FROM chat_changes c WHERE c.chat_id = r.chat_id AND c.rev = r.rev),
             '-infinity') - interval '10 seconds'
         ORDER BY r.chat_id, m.user_id",
    )
    .bind(ids)
    .bind(revs)
    .fetch_all(db)
    .await
}

/// Every chat the user is a member of, ascending (the order membership locks are taken in).
/// Locks a user's row for a change of the account that touches their memberships (deletion).
/// Taken first, before any chat's lock: every writer that locks a user's row and a chat's
/// takes the user's first (`users → chats`), so they cannot deadlock, and a membership added
/// concurrently either commits before (and is then found) or waits (and then finds the user
/// gone).
pub async fn lock(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT true FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(db)
        .await
        .map(|row: Option<bool>| row.is_some())
}

pub async fn chat_ids(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT chat_id FROM chat_members WHERE user_id = $1 ORDER BY chat_id")
        .bind(id)
        .fetch_all(db)
        .await
}

/// Live users with a word of their name starting with `query` (case-insensitive; a query of
/// several words matches names containing it from such a word on), or whose email is exactly
/// `query`; the email match first, then by the matching word. Each user once.
///
/// The name part is a range scan of `user_name_words`' primary key in byte order, from the
/// first word of the query up to that word followed by U+10FFFF, which stops after `limit`
/// rows; the `NOT EXISTS` skips a user's second matching word with one more index probe.
pub async fn search(
    db: impl PgExecutor<'_>,
    query: &str,
    limit: i64,
) -> sqlx::Result<Vec<PersonOut>> {
    let first_word = query.split_whitespace().next().unwrap_or(query);
    sqlx::query_as(
        "WITH bounds AS (
             SELECT lower($2) COLLATE \"C\" AS lo, (lower($2) || chr(1114111)) COLLATE \"C\" AS hi
         ), by_email AS (
             SELECT id, name FROM users
             WHERE strpos($1, '@') > 0 AND lower(email) = lower($1) AND deleted_at IS NULL
         ), by_name AS (
             SELECT u.id, u.name FROM bounds, user_name_words w JOIN users u ON u.id = w.user_id
             WHERE w.word >= bounds.lo AND w.word < bounds.hi
               AND strpos(lower(u.name), lower($1)) > 0
               AND NOT EXISTS (
                   SELECT 1 FROM user_name_words e
                   WHERE e.user_id = w.user_id AND e.word >= bounds.lo AND e.word < w.word)
               AND u.id NOT IN (SELECT id FROM by_email)
             ORDER BY w.word, w.user_id
             LIMIT $3
         )
         (SELECT id, name FROM by_email) UNION ALL (SELECT id, name FROM by_name) LIMIT $3",
    )
    .bind(query)
    .bind(first_word)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Whether a live (not deleted) user has this id.
pub async fn exists(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL)")
        .bind(id)
        .fetch_one(db)
        .await
}

/// Which of `ids` name no live user, ascending.
pub async fn missing(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT i FROM unnest($1::bigint[]) AS i
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i AND u.deleted_at IS NULL)
         ORDER BY i",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Counts a join or leave for each of these users and answers their new `member_rev`s. Rows are
/// locked in id order, so concurrent membership changes of overlapping users cannot deadlock;
/// the lock is `NO KEY UPDATE`, which foreign-key checks (sends, new members) do not wait for.
pub async fn bump_member_revs(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "UPDATE users SET member_rev = member_rev + 1
         FROM (SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) l
         WHERE users.id = l.id
         RETURNING users.id, users.member_rev",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// The `member_rev` of each of these users (for the relay's poller).
pub async fn member_revs(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as("SELECT id, member_rev FROM users WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
}
