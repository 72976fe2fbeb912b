//! `chat_changes`: the log of every change of every chat, one row per rev.
//!
//! "Everything after rev R" is one range of the primary key `(chat_id, rev)`. A message change
//! row points at the message, whose row holds its current state; the page joins it in, so a
//! client applying the page ends with every message as it is now.
//!
//! The same log read in commit order is the relay's feed ([`horizon`], [`committed`], with
//! [`members_committed`] and `sessions::ended_committed`): each row carries the id of the
//! transaction that wrote it, and a reader that remembers how far it has read asks only for
//! what was committed since.

use std::collections::HashMap;

use sqlx::PgExecutor;

use crate::domain::model::{Change, ChangesPage, MessageOut};

/// One row of the log.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    rev: i64,
    kind: String,
    message_id: Option<i64>,
    user_id: Option<i64>,
    /// The member's name, for membership rows.
    name: Option<String>,
    /// The chat's rev when the page was read (the same in every row).
    chat_rev: i64,
}

/// The changes of `chat_id` after `after_rev`, at most `limit`, ascending by rev.
///
/// `rev` of the answer is what the reader is up to date with once it has applied the page: the
/// last rev read when there is more, else the chat's rev (read in the same statement as the
/// log, so nothing can fall between them). An edit, deletion or reaction change whose message
/// changed again later in the page's range is left out: the later change carries the newer
/// state. New messages are always listed at their own rev, so messages arrive in seq order.
pub async fn after(
    db: impl PgExecutor<'_> + Copy,
    chat_id: i64,
    after_rev: i64,
    limit: i64,
) -> sqlx::Result<ChangesPage> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT ch.rev, ch.kind, ch.message_id, ch.user_id, u.name,
                (SELECT rev FROM chats WHERE id = $1) AS chat_rev
         FROM chat_changes ch
         LEFT JOIN users u ON u.id = ch.user_id AND ch.kind = 'member_joined'
         WHERE ch.chat_id = $1 AND ch.rev > $2
         ORDER BY ch.rev LIMIT $3",
    )
    .bind(chat_id)
    .bind(after_rev)
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let ids: Vec<i64> = rows.iter().filter_map(|r| r.message_id).collect();
    let messages: HashMap<i64, MessageOut> = if ids.is_empty() {
        HashMap::new()
    } else {
        super::messages::by_ids(db, &ids)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect()
    };
    let rev = match (more, rows.last()) {
        (true, Some(last)) => last.rev,
        // Nothing after `after_rev`, or all of it is here: up to date with the chat.
        (_, last) => last.map_or(after_rev, |r| r.chat_rev).max(after_rev),
    };
    let changes = rows
        .iter()
        .filter_map(|row| change(chat_id, row, &messages))
        .collect();
    Ok(ChangesPage { changes, rev, more })
}

/// A point of the feed, as a number: every transaction whose id is below it has ended, so no
/// row stamped below it can appear any more. (Postgres's `xid8`, which never wraps, carried as
/// text to and from SQL, since the driver has no type for it.)
pub type Horizon = i64;

/// The feed's horizon now: the id of the oldest transaction of this database still running,
/// or the next id to be handed out if none is. Rows stamped in `[h, horizon())` are complete
/// once this returns: each of their transactions has committed (and is visible to any later
/// read) or rolled back.
///
/// Transactions of other databases of the server are left out, by their `backend_xid` in
/// `pg_stat_activity`, as they cannot write here: a long transaction elsewhere on a shared
/// server does not hold this database's feed back. One that cannot be told apart (no
/// privilege to see it, a prepared transaction) counts as this database's: the horizon then
/// waits, it never skips. A long transaction of this database holds the horizon where it
/// started until it ends; that, not the poll interval, is then the feed's delay.
pub async fn horizon(db: impl PgExecutor<'_>) -> sqlx::Result<Horizon> {
    sqlx::query_scalar(
        "WITH snap AS (SELECT pg_current_snapshot() AS s),
         elsewhere AS (
             SELECT backend_xid FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL
               AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))
         SELECT coalesce(
             (SELECT min(x) FROM snap, pg_snapshot_xip(snap.s) AS x
              WHERE NOT EXISTS (SELECT 1 FROM elsewhere e WHERE e.backend_xid = x::xid)),
             (SELECT pg_snapshot_xmax(s) FROM snap))::text::bigint",
    )
    .fetch_one(db)
    .await
}

/// One change as the feed lists it: where it is in the feed, and which rev of which chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Committed {
    pub xid: Horizon,
    pub chat_id: i64,
    pub rev: i64,
}

impl Committed {
    /// Where a feed read from `from` starts: before every row stamped `from`.
    pub fn start(from: Horizon) -> Self {
        Self {
            xid: from,
            chat_id: i64::MIN,
            rev: i64::MIN,
        }
    }
}

/// Changes stamped by transactions in `[after.xid, upto)`, after the row `after` (see
/// [`Committed::start`]), at most `limit`, in feed order: one range of `chat_changes_xid_idx`.
/// `upto` must be a past [`horizon`], so the range is final and can be paged through.
pub async fn committed(
    db: impl PgExecutor<'_>,
    after: Committed,
    upto: Horizon,
    limit: i64,
) -> sqlx::Result<Vec<Committed>> {
    sqlx::query_as(
        "SELECT ch.xid::text::bigint AS xid, ch.chat_id, ch.rev FROM chat_changes ch
         WHERE ch.xid >= $1::text::xid8 AND ch.xid < $4::text::xid8
           AND (ch.xid, ch.chat_id, ch.rev) > ($1::text::xid8, $2, $3)
         ORDER BY ch.xid, ch.chat_id, ch.rev LIMIT $5",
    )
    .bind(after.xid)
    .bind(after.chat_id)
    .bind(after.rev)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A user's chats changed: their `member_rev` moved, in the transaction `xid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberCommitted {
    pub xid: Horizon,
    pub user_id: i64,
    pub member_rev: i64,
}

impl MemberCommitted {
    /// Where a feed read from `from` starts.
    pub fn start(from: Horizon) -> Self {
        Self {
            xid: from,
            user_id: i64::MIN,
            member_rev: 0,
        }
    }
}

/// Users whose `member_rev` was last moved by a transaction in `[after.xid, upto)`, after
/// `after`, at most `limit`, in feed order (a trigger stamps `users.member_xid`; see the
/// migration `relay_feed`). A user moved again later has left this range for a later one, with
/// the newer `member_rev`: nothing is lost, and rows only ever leave a past range.
pub async fn members_committed(
    db: impl PgExecutor<'_>,
    after: MemberCommitted,
    upto: Horizon,
    limit: i64,
) -> sqlx::Result<Vec<MemberCommitted>> {
    sqlx::query_as(
        "SELECT u.member_xid::text::bigint AS xid, u.id AS user_id, u.member_rev FROM users u
         WHERE u.member_xid >= $1::text::xid8 AND u.member_xid < $3::text::xid8
           AND (u.member_xid, u.id) > ($1::text::xid8, $2)
         ORDER BY u.member_xid, u.id LIMIT $4",
    )
    .bind(after.xid)
    .bind(after.user_id)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The client-facing change of a log row; `None` for one superseded by a later change.
fn change(chat_id: i64, row: &Row, messages: &HashMap<i64, MessageOut>) -> Option<Change> {
    let (kind, change) = kind_of(&row.kind);
    let message = row.message_id.and_then(|id| messages.get(&id)).cloned();
    if kind == "message_updated" && message.as_ref().is_some_and(|m| m.rev > row.rev) {
        return None;
    }
    Some(Change {
        rev: row.rev,
        kind: kind.to_owned(),
        chat_id,
        change: change.map(str::to_owned),
        user_id: if kind == "member" { row.user_id } else { None },
        name: if kind == "member" {
            row.name.clone()
        } else {
            None
        },
        message,
    })
}

/// The stored kind as the API names it: the change's `type` and, if any, its `change`.
fn kind_of(stored: &str) -> (&'static str, Option<&'static str>) {
    match stored {
        "edited" => ("message_updated", Some("edited")),
        "deleted" => ("message_updated", Some("deleted")),
        "reaction_added" => ("message_updated", Some("reaction_added")),
        "reaction_removed" => ("message_updated", Some("reaction_removed")),
        "pinned" => ("message_updated", Some("pinned")),
        "unpinned" => ("message_updated", Some("unpinned")),
        "member_joined" => ("member", Some("joined")),
        "member_left" => ("member", Some("left")),
        "member_promoted" => ("member", Some("promoted")),
        _ => ("message", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_kind_has_an_api_name() {
        for (stored, kind) in [
            ("message", "message"),
            ("edited", "message_updated"),
            ("deleted", "message_updated"),
            ("reaction_added", "message_updated"),
            ("reaction_removed", "message_updated"),
            ("pinned", "message_updated"),
            ("unpinned", "message_updated"),
            ("member_joined", "member"),
            ("member_left", "member"),
            ("member_promoted", "member"),
        ] {
            assert_eq!(kind_of(stored).0, kind, "{stored}");
        }
    }
}
