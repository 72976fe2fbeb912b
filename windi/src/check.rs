//! `windi check`: the data invariants of DESIGN §2, verified on a whole database — live data
//! and generated data alike.

use sqlx::PgPool;

/// One broken invariant, with a few offending ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub examples: Vec<i64>,
}

/// Each invariant as a query answering up to ten offending ids.
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
