//! `chat_changes`: the log of every change of every chat, one row per rev.
//!
//! "Everything after rev R" is one range of the primary key `(chat_id, rev)`. A message change
//! row points at the message, whose row holds its current state; the page joins it in, so a
//! client applying the page ends with every message as it is now.

use std::collections::HashMap;

use sqlx::PgExecutor;

use crate::model::{Change, ChangesPage, MessageOut};

/// One row of the log.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    rev: i64,
    kind: String,
    message_id: Option<i64>,
    user_id: Option<i64>,
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
        "SELECT ch.rev, ch.kind, ch.message_id, ch.user_id,
                (SELECT rev FROM chats WHERE id = $1) AS chat_rev
         FROM chat_changes ch
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
        message,
    })
}

/// The stored kind as the API names it: the change's `type` and, if any, its `change`.
pub fn kind_of(stored: &str) -> (&'static str, Option<&'static str>) {
    match stored {
        "edited" => ("message_updated", Some("edited")),
        "deleted" => ("message_updated", Some("deleted")),
        "reaction_added" => ("message_updated", Some("reaction_added")),
        "reaction_removed" => ("message_updated", Some("reaction_removed")),
        "member_joined" => ("member", Some("joined")),
        "member_left" => ("member", Some("left")),
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
            ("member_joined", "member"),
            ("member_left", "member"),
        ] {
            assert_eq!(kind_of(stored).0, kind, "{stored}");
        }
    }
}
