//! `windi check`: the data invariants of DESIGN §2, verified on a whole database — live data
//! and generated data alike.

use sqlx::PgPool;

/// One broken invariant, with a few offending ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    /// Up to ten ids of chats where it is broken (every invariant lives within one chat).
    pub examples: Vec<i64>,
}

/// Each invariant as a query answering up to ten offending chat ids. Each is one set-based
/// query (a scan or two and a hash join or aggregate), so a check of millions of rows takes
/// seconds, not a round trip per chat.
const CHECKS: &[(&str, &str)] = &[
    (
        "per-chat seq is 1..last_seq with no gap",
        // With unique (chat_id, seq), count = max = last_seq and min = 1 mean exactly 1..n.
        "WITH s AS (SELECT chat_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi
                    FROM messages GROUP BY chat_id)
         SELECT c.id FROM chats c LEFT JOIN s ON s.chat_id = c.id
         WHERE coalesce(s.n, 0) <> c.last_seq OR coalesce(s.hi, 0) <> c.last_seq
            OR coalesce(s.lo, 1) <> 1
         ORDER BY c.id LIMIT 10",
    ),
    (
        "read markers lie within 0..last_seq",
        "SELECT m.chat_id FROM chat_members m JOIN chats c ON c.id = m.chat_id
         WHERE m.last_read_seq < 0 OR m.last_read_seq > c.last_seq
         ORDER BY m.chat_id LIMIT 10",
    ),
    (
        "a private chat has exactly its two users as members",
        "SELECT c.id FROM chats c
         WHERE c.kind = 'private' AND (
             SELECT count(*) FROM chat_members m WHERE m.chat_id = c.id) <> 2
            OR c.kind = 'private' AND (
             SELECT count(*) FROM chat_members m
             WHERE m.chat_id = c.id AND m.user_id IN (c.private_low, c.private_high)) <> 2
         ORDER BY c.id LIMIT 10",
    ),
    (
        "a group with members has exactly one owner",
        "SELECT m.chat_id FROM chat_members m JOIN chats c ON c.id = m.chat_id
         WHERE c.kind = 'group'
         GROUP BY m.chat_id HAVING count(*) FILTER (WHERE m.role = 'owner') <> 1
         ORDER BY m.chat_id LIMIT 10",
    ),
    (
        "per-chat rev is 1..rev in the change log with no gap",
        // Every change takes the chat's next rev and writes one change row, so "everything after
        // rev R" is complete. With the key (chat_id, rev), count = max = rev and min = 1 mean
        // exactly 1..rev. The log has no foreign key: a change of no existing chat counts too.
        "WITH r AS (SELECT chat_id, count(*) AS n, min(rev) AS lo, max(rev) AS hi
                    FROM chat_changes GROUP BY chat_id)
         SELECT coalesce(c.id, r.chat_id) AS id FROM chats c FULL JOIN r ON r.chat_id = c.id
         WHERE c.id IS NULL OR coalesce(r.n, 0) <> c.rev OR coalesce(r.hi, 0) <> c.rev
            OR coalesce(r.lo, 1) <> 1
         ORDER BY id LIMIT 10",
    ),
    (
        "a message's rev lies within created_rev..the chat's rev",
        // A message's rev is that of its latest change, which took a rev of its chat, and no
        // change comes before the one that created it.
        "SELECT DISTINCT m.chat_id FROM messages m JOIN chats c ON c.id = m.chat_id
         WHERE m.rev > c.rev OR m.rev < m.created_rev
         ORDER BY m.chat_id LIMIT 10",
    ),
    (
        "each message has its 'message' change at created_rev, and each such change its message",
        // A new message is recorded as a change of kind 'message' at its created_rev, naming it
        // and its sender; clients that resume by seq map it to a rev through created_rev. The
        // full join finds both a message without its change and a change without its message.
        "SELECT DISTINCT coalesce(m.chat_id, ch.chat_id) AS id
         FROM messages m
         FULL JOIN (SELECT * FROM chat_changes WHERE kind = 'message') ch
           ON ch.chat_id = m.chat_id AND ch.rev = m.created_rev
         WHERE m.id IS NULL OR ch.chat_id IS NULL
            OR ch.message_id IS DISTINCT FROM m.id OR ch.user_id IS DISTINCT FROM m.sender_id
         ORDER BY id LIMIT 10",
    ),
    (
        "no member has a message of their own above their read marker",
        // Unread counts come from counters (last_seq - last_read_seq - deleted messages after
        // the marker), which count every message above the marker: right only if none of them is
        // the member's own. Sending moves the sender's marker to their message, markers never
        // move back, and a member who joins (again) starts at the chat's last_seq.
        "SELECT DISTINCT m.chat_id FROM chat_members m
         JOIN (SELECT chat_id, sender_id, max(seq) AS hi FROM messages
               GROUP BY chat_id, sender_id) s ON s.chat_id = m.chat_id AND s.sender_id = m.user_id
         WHERE s.hi > m.last_read_seq
         ORDER BY m.chat_id LIMIT 10",
    ),
    (
        "a deleted message's text is empty",
        // A deletion leaves a tombstone that keeps id and seq; the text itself is erased. The
        // partial index on deleted messages makes this a look at those alone.
        "SELECT DISTINCT chat_id FROM messages WHERE deleted_at IS NOT NULL AND text <> ''
         ORDER BY chat_id LIMIT 10",
    ),
    (
        "a member joined with the chat (rev 0) or by their own 'member_joined' change",
        // joined_rev is the chat's rev at the join: a device that learns of the chat late
        // delivers the changes after it. The members a chat is created with join at its rev 0
        // and take none; a member added later takes a rev, recorded as their 'member_joined'.
        "SELECT DISTINCT m.chat_id FROM chat_members m JOIN chats c ON c.id = m.chat_id
         LEFT JOIN chat_changes ch ON ch.chat_id = m.chat_id AND ch.rev = m.joined_rev
         WHERE m.joined_rev < 0 OR m.joined_rev > c.rev
            OR m.joined_rev > 0 AND (ch.kind IS DISTINCT FROM 'member_joined'
                                     OR ch.user_id IS DISTINCT FROM m.user_id)
         ORDER BY m.chat_id LIMIT 10",
    ),
];

/// Runs every check; an empty answer means the data is sound.
pub async fn run(pool: &PgPool) -> Result<Vec<Violation>, sqlx::Error> {
    let mut violations = Vec::new();
    for (invariant, sql) in CHECKS {
        let examples: Vec<i64> = sqlx::query_scalar(*sql).fetch_all(pool).await?;
        if !examples.is_empty() {
            violations.push(Violation {
                invariant,
                examples,
            });
        }
    }
    Ok(violations)
}

/// The names of the invariants checked, for reports.
pub fn invariants() -> impl Iterator<Item = &'static str> {
    CHECKS.iter().map(|(name, _)| *name)
}
