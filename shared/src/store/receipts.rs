//! Receipts: how far each member's devices were handed a chat's messages (`delivered_seq`, the
//! relays' record), with one `receipt_marks` row per move of that or of the read marker, to
//! answer when. Nothing here is per message and member: a receipt costs one row update and one
//! mark, whatever the group's size (migration 20270107000001).

use sqlx::PgExecutor;

use crate::domain::model::{Receipt, Receipts};

type At = chrono::DateTime<chrono::Utc>;

/// `GET /chat/message/{id}/receipts`: the message's receipts by every other member who was in
/// the chat when it was sent (joined before its rev), as `viewer` may see them. The caller has
/// checked that `viewer` is a member and the message theirs to see.
pub async fn of_message(
    db: impl PgExecutor<'_>,
    message_id: i64,
    viewer: i64,
) -> sqlx::Result<Receipts> {
    let rows: Vec<(i64, Option<At>, Option<At>)> = sqlx::query_as(
            "WITH msg AS (
                 SELECT chat_id, seq, created_rev, sender_id, created_at FROM messages WHERE id = $1),
             v AS (SELECT read_receipts AS sees FROM users WHERE id = $2)
             SELECT r.user_id,
                    CASE WHEN greatest(r.delivered_seq, r.last_read_seq) >= msg.seq
                         THEN coalesce(least(d.at, rd.at), msg.created_at) END AS delivered_at,
                    CASE WHEN r.last_read_seq >= msg.seq AND r.receipts AND v.sees
                         THEN coalesce(rd.at, msg.created_at) END AS read_at
             FROM msg CROSS JOIN v
             JOIN chat_members r ON r.chat_id = msg.chat_id AND r.user_id <> msg.sender_id
                                AND r.joined_rev < msg.created_rev
             LEFT JOIN LATERAL (
                 SELECT at FROM receipt_marks k
                 WHERE k.chat_id = r.chat_id AND k.user_id = r.user_id AND k.kind = 'delivered'
                   AND k.seq >= msg.seq AND r.delivered_seq >= msg.seq
                 ORDER BY k.seq LIMIT 1) d ON true
             LEFT JOIN LATERAL (
                 SELECT at FROM receipt_marks k
                 WHERE k.chat_id = r.chat_id AND k.user_id = r.user_id AND k.kind = 'read'
                   AND k.seq >= msg.seq AND r.last_read_seq >= msg.seq
                 ORDER BY k.seq LIMIT 1) rd ON true
             ORDER BY r.user_id",
        )
        .bind(message_id)
        .bind(viewer)
        .fetch_all(db)
        .await?;
    let mut receipts = Receipts::default();
    for (user_id, delivered, read) in rows {
        if let Some(at) = delivered {
            receipts.delivered.push(Receipt { user_id, at });
        }
        if let Some(at) = read {
            receipts.read.push(Receipt { user_id, at });
        }
    }
    // Oldest first: the order a client shows "seen by".
    receipts.delivered.sort_by_key(|r| (r.at, r.user_id));
    receipts.read.sort_by_key(|r| (r.at, r.user_id));
    Ok(receipts)
}

/// A delivered marker that moved: the event a relay publishes for it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveredMoved {
    pub chat_id: i64,
    pub user_id: i64,
    pub delivered_seq: i64,
    /// The chat's rev when it moved (frames carry the chat's position, as for read markers).
    pub rev: i64,
    /// Who sent the messages it newly covers (at most [`MAX_SENDERS`]; more and it is empty,
    /// and relays tell every member).
    pub senders: Vec<i64>,
}

/// Senders named per move; a move covering more is told to every member instead.
pub const MAX_SENDERS: i64 = 16;

/// Moves the delivered markers of `moves` (chat, user, seq) forward, with a mark each, in one
/// statement; answers those that moved. The rows are locked in (chat, user) order, so relays
/// writing overlapping batches wait for each other instead of deadlocking. A pair that is no
/// longer a membership is skipped.
pub async fn record_delivered(
    db: impl PgExecutor<'_>,
    moves: &[(i64, i64, i64)],
) -> sqlx::Result<Vec<DeliveredMoved>> {
    let mut chat_ids = Vec::with_capacity(moves.len());
    let mut user_ids = Vec::with_capacity(moves.len());
    let mut seqs = Vec::with_capacity(moves.len());
    for &(c, u, s) in moves {
        chat_ids.push(c);
        user_ids.push(u);
        seqs.push(s);
    }
    sqlx::query_as(
        "WITH v AS (
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v (chat_id, user_id, seq)),
         old AS (
             SELECT me.chat_id, me.user_id, me.delivered_seq AS before, v.seq
             FROM chat_members me JOIN v ON v.chat_id = me.chat_id AND v.user_id = me.user_id
             WHERE me.delivered_seq < v.seq
             ORDER BY me.chat_id, me.user_id
             FOR UPDATE OF me),
         up AS (
             UPDATE chat_members me
             SET delivered_seq = old.seq, delivered_rev = c.rev, delivered_xid = pg_current_xact_id()
             FROM old, chats c
             WHERE me.chat_id = old.chat_id AND me.user_id = old.user_id AND c.id = old.chat_id
               AND me.delivered_seq < old.seq
             RETURNING me.chat_id, me.user_id, me.delivered_seq, me.delivered_rev, old.before),
         mk AS (
             INSERT INTO receipt_marks (chat_id, user_id, kind, seq)
             SELECT chat_id, user_id, 'delivered', delivered_seq FROM up
             ON CONFLICT DO NOTHING)
         SELECT up.chat_id, up.user_id, up.delivered_seq, up.delivered_rev AS rev,
                coalesce((SELECT CASE WHEN count(*) <= $4 THEN array_agg(s) END
                          FROM (SELECT DISTINCT sender_id AS s FROM messages
                                WHERE chat_id = up.chat_id AND seq > up.before
                                  AND seq <= up.delivered_seq AND sender_id <> up.user_id
                                LIMIT $4 + 1) x), '{}') AS senders
         FROM up ORDER BY up.chat_id, up.user_id",
    )
    .bind(chat_ids)
    .bind(user_ids)
    .bind(seqs)
    .bind(MAX_SENDERS)
    .fetch_all(db)
    .await
}

/// One delivered marker move as the relay's feed lists it (see [`super::changes::horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveredCommitted {
    pub xid: super::changes::Horizon,
    pub chat_id: i64,
    pub user_id: i64,
    pub delivered_seq: i64,
}

impl DeliveredCommitted {
    /// Where a feed read from `from` starts: before every row stamped `from`.
    pub fn start(from: super::changes::Horizon) -> Self {
        Self {
            xid: from,
            chat_id: i64::MIN,
            user_id: i64::MIN,
            delivered_seq: 0,
        }
    }
}

/// Delivered markers moved by transactions from `after` (exclusive, in feed order) to the
/// horizon `upto` (exclusive), at most `limit`.
pub async fn delivered_committed(
    db: impl PgExecutor<'_>,
    after: DeliveredCommitted,
    upto: super::changes::Horizon,
    limit: i64,
) -> sqlx::Result<Vec<DeliveredCommitted>> {
    sqlx::query_as(
        "SELECT delivered_xid::text::bigint AS xid, chat_id, user_id, delivered_seq
         FROM chat_members
         WHERE delivered_xid >= $1::text::xid8 AND delivered_xid < $4::text::xid8
           AND (delivered_xid, chat_id, user_id) > ($1::text::xid8, $2, $3)
         ORDER BY delivered_xid, chat_id, user_id LIMIT $5",
    )
    .bind(after.xid)
    .bind(after.chat_id)
    .bind(after.user_id)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}
