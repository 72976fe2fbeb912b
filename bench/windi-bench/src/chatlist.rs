//! `chatlist`: `GET /chat/list` costs the same whether the chats are full of unread messages
//! or not (issue 11, item 6; the port of `bench/chatlist.sh`). Unread counts come from
//! counters (last_seq − marker − deleted after it), not from counting rows, so the two should
//! be within 2×.
//!
//! Three users per size: chats are groups of the three, each holding the same number of
//! messages from the first ("Alice"), written with SQL with the invariants the send path keeps
//! (last_seq = rev = the message count, rev = created_rev = seq per message, one `chat_changes`
//! row per message, Alice's marker at last_seq), then `windi check` and `VACUUM ANALYZE`. The
//! second ("Bob") has his markers at 0: every message is unread; the third ("Carol") at
//! last_seq: nothing is. Both list the very same chats. `wrk` asks for the first page
//! (limit 200) as Carol, then Bob, per repetition.
//!
//! Sizes: 200 chats × 5,000 messages, and 2,000 chats × 500 (the list's first page of 200 out
//! of 2,000 chats, which must be sorted by activity); `--quick`: 20 × 200 and 200 × 20.

use std::time::Instant;

use anyhow::ensure;
use sqlx::PgPool;

use crate::{
    harness::{Ctx, User, Windi, WindiOptions, bulk_users},
    probe,
    report::{Figure, Target},
};

/// Users `wrk` connects as and threads it runs, as `bench/chatlist.sh` does.
const CONNECTIONS: usize = 4;
const THREADS: usize = 2;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let sizes = ctx.pick([(20i64, 200i64), (200, 20)], [(200, 5_000), (2_000, 500)]);
    let seconds = ctx.pick(1, 10);
    let windi = Windi::start(ctx, "chatlist", WindiOptions::api_only()).await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, 6, "list").await?;
    let pool = windi.db().pool(2).await?;
    let loaded = Instant::now();
    for (trio, (chats, messages)) in users.chunks(3).zip(sizes) {
        load_chats(&pool, trio, chats, messages).await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    pool.close().await;
    probe::check(ctx, windi.db()).await?;
    let load_secs = loaded.elapsed().as_secs_f64();

    let url = format!("{}/chat/list?limit=200", windi.api_url);
    for (trio, (chats, messages)) in users.chunks(3).zip(sizes) {
        let page = chats.min(200);
        for (user, expected) in [(&trio[1], page * messages), (&trio[2], 0)] {
            let list = api.get(&user.token, "/chat/list?limit=200").await?;
            let unread: i64 = list
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["unread_count"].as_i64()).sum())
                .unwrap_or(-1);
            ensure!(
                unread == expected,
                "{}: /chat/list shows {unread} unread, expected {expected}",
                user.email
            );
        }
    }

    // Per size, per repetition: nothing unread (Carol), then all unread (Bob).
    let mut rates: Vec<[Vec<f64>; 2]> = vec![Default::default(); sizes.len()];
    for _ in 0..ctx.reps {
        for (i, trio) in users.chunks(3).enumerate() {
            for (side, user) in [&trio[2], &trio[1]].into_iter().enumerate() {
                let header = format!("Authorization: Bearer {}", user.token);
                let run =
                    probe::wrk(THREADS, CONNECTIONS, seconds, None, Some(&header), &url).await?;
                rates[i][side].push(run.requests_per_sec);
            }
        }
    }

    let mut figures = Vec::new();
    for ((chats, messages), [read, unread]) in sizes.iter().zip(&rates) {
        figures.push(
            Figure::new(
                "chatlist",
                format!("GET /chat/list?limit=200, {chats} chats × {messages} unread each"),
                "lists/s",
                unread,
            )
            .against("the same chats, nothing unread", read)
            .target(Target::RatioAtLeast(0.5))
            .note(format!(
                "wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, interleaved; data by SQL with \
                 the send path's invariants, `windi check` clean (loaded in {load_secs:.0} s)"
            )),
        );
    }
    if let [small, large] = &rates[..] {
        figures.push(
            Figure::new(
                "chatlist",
                format!(
                    "GET /chat/list?limit=200, nothing unread, {} chats",
                    sizes[1].0
                ),
                "lists/s",
                &large[0],
            )
            .against(format!("{} chats", sizes[0].0), &small[0])
            .note("the first page of a long list: every chat of the user is sorted by activity"),
        );
    }
    Ok(figures)
}

/// `chats` groups of `trio` (owner first), each with `messages` messages from the owner, the
/// newest activity of the database; the second member has read nothing, the third everything.
pub async fn load_chats(
    pool: &PgPool,
    trio: &[User],
    chats: i64,
    messages: i64,
) -> anyhow::Result<()> {
    let (alice, bob, carol) = (trio[0].id, trio[1].id, trio[2].id);
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO chats (kind, name, creator_id, last_seq, rev, created_at)
         SELECT 'group', 'bench ' || i, $1, $2, $2, now() - interval '30 days'
         FROM generate_series(1, $3::bigint) i
         RETURNING id",
    )
    .bind(alice)
    .bind(messages)
    .bind(chats)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
         SELECT id, $2, 'owner', $5 FROM unnest($1::bigint[]) id
         UNION ALL SELECT id, $3, 'member', 0 FROM unnest($1::bigint[]) id
         UNION ALL SELECT id, $4, 'member', $5 FROM unnest($1::bigint[]) id",
    )
    .bind(&ids)
    .bind(alice)
    .bind(bob)
    .bind(carol)
    .bind(messages)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET member_rev = member_rev + $2 WHERE id = ANY($1)")
        .bind([alice, bob, carol])
        .bind(chats)
        .execute(&mut *tx)
        .await?;
    // In send order: chat by chat in turn, a millisecond apart, ending a second after the
    // newest message so far, so these chats are the most recently active.
    sqlx::query(
        "WITH c AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM unnest($1::bigint[]) id),
              t AS (SELECT coalesce(max(created_at), now()) + interval '1 second' AS last_at
                    FROM messages)
         INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, created_at,
                               content_hash)
         SELECT c.id, s, s, s, $2, x.text,
                t.last_at - (($3 - s) * $4 + $4 - c.n) * interval '1 millisecond',
                sha256(int8send(c.id) || convert_to(x.text, 'UTF8'))
         FROM c, t, generate_series(1, $3::bigint) s,
              LATERAL (SELECT 'bench message ' || s
                       || ', about as long as a real one: sixty chars' AS text) x
         ORDER BY s, c.n",
    )
    .bind(&ids)
    .bind(alice)
    .bind(messages)
    .bind(chats)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id, created_at)
         SELECT chat_id, rev, 'message', id, sender_id, created_at FROM messages
         WHERE chat_id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
