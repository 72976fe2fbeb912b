//! `read-flag`: a message's `read` flag costs the same in a group of 1,000 as in a private
//! chat (issue 19).
//!
//! The flag (`message_columns!` in shared/src/store/messages.rs) asks, for every message of a
//! page, whether any other member's marker is below its seq. With only the primary key
//! `(chat_id, user_id)` that probe reads every member whose marker is not below it: all 1,000
//! of a group where everyone has read, for each of the page's 200 messages. The index
//! `chat_members_read_idx (chat_id, shown_read_seq)` (migrations 20261229000001, 20270107000001) reads the
//! lowest markers first and stops at the first one below the seq, or finds none at once.
//!
//! The data, written with SQL keeping the send path's invariants (`windi check` clean), then
//! `VACUUM ANALYZE`: one private chat and two groups of the same 1,000 users, 2,000 messages
//! each, from a few senders in turn, among the chats of `windi generate` (5,000 more, 10,000
//! users; 2,000 and 1,000 with `--quick`):
//!
//! - the private chat, both members having read everything: the baseline;
//! - a group where every member has read everything: the worst case for the plan without the
//!   index (nothing stops the probe before the last member);
//! - a group where 10 members spread over the member list stopped 15, 30 … 150 messages
//!   before the end, the rest read everything: the newest page then has 150 messages someone
//!   has not read and 50 that everyone has.
//!
//! What is measured is what a client opening the chat asks: its newest page of 200
//! (`GET /chat/history/{id}?limit=200&before_seq=<last+1>`), from [`CLIENTS`] concurrent
//! clients (members of the chat), one request at a time each: p50, p99 and pages/s. Next to it,
//! the same page's SQL alone (`messages::page`, the very query windi runs) through sqlx on one
//! connection, sequentially. Each repetition measures the three chats with the index, then
//! drops it (`DROP INDEX chat_members_read_idx`) and measures them again, then creates it
//! again from its own definition, so one run shows the plan before and after; ratios are the
//! group against the private chat within the same phase of the same repetition.
//!
//! The other chats matter. Postgres plans the flag's probe for any chat, from the average
//! chat's size: in a database holding only these three chats (2,002 member rows, all but two
//! in the groups), it reads the whole of `chat_members` for every message, even with the
//! index, and the private chat's page costs as much as the group's. So before `windi
//! generate` adds the rest, the page's SQL is timed in that small database too, `--reps`
//! times (its own figure).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::Value;
use sqlx::PgPool;
use windi_shared::store::messages::{self, SeqRange};

use crate::{
    harness::{Ctx, User, Windi, WindiOptions, bulk_users},
    probe,
    report::{Figure, Target},
};

/// The index under test, as migration 20261229000001 names it.
const INDEX: &str = "chat_members_read_idx";
/// Members of each group (the size).
const MEMBERS: usize = 1_000;
/// Messages in each chat.
const MESSAGES: i64 = 2_000;
/// The page a client opening a chat asks for (the largest the API gives).
const PAGE: i64 = 200;
/// Concurrent clients asking for pages, each with a member's token.
const CLIENTS: usize = 4;
/// Members who send the group's messages, in turn (the first ones of the member list).
const SENDERS: usize = 20;
/// Members of the second group who have not read to the end: every 100th of the member list,
/// the k-th (from 1) stopped 15·k messages before the end.
const BEHIND: i64 = 10;
const BEHIND_STEP: i64 = 15;

/// One chat under test: its id, the tokens its clients ask with, and what the newest page's
/// `read` flags must be.
#[derive(Debug)]
struct Chat {
    id: i64,
    tokens: Vec<String>,
    /// Messages of the newest page every other member has read.
    read_in_page: usize,
}

/// Per phase (with the index, without it): per chat, one sample per repetition.
#[derive(Debug, Default)]
struct Phase {
    http_p50: [Vec<f64>; 3],
    http_p99: [Vec<f64>; 3],
    rate: [Vec<f64>; 3],
    sql_p50: [Vec<f64>; 3],
}

/// Chat indexes in [`Phase`]'s arrays, in the order each phase measures them.
const PRIVATE: usize = 0;
const ALL_READ: usize = 1;
const SOME_BEHIND: usize = 2;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let requests = ctx.pick(300, 20_000);
    let sql_pages = ctx.pick(20, 500);
    let budget = Duration::from_millis(ctx.pick(250, 5_000));

    let windi = Windi::start(ctx, "read_flag", WindiOptions::api_only()).await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, MEMBERS, "read").await?;
    let pool = windi.db().pool(2).await?;
    // Its own definition, to create it again exactly as the migration did.
    let index_def: String =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = $1")
            .bind(INDEX)
            .fetch_optional(&pool)
            .await?
            .with_context(|| format!("no index {INDEX}: is migration 20261229000001 there?"))?;

    let loaded = Instant::now();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let private = load_chat(&pool, "private", &ids[..2], &[MESSAGES; 2], 2).await?;
    let all_read = load_chat(&pool, "group", &ids, &vec![MESSAGES; MEMBERS], SENDERS).await?;
    let mut markers = vec![MESSAGES; MEMBERS];
    for k in 1..=BEHIND {
        markers[(k * 100 - 1) as usize] = MESSAGES - BEHIND_STEP * k;
    }
    let some_behind = load_chat(&pool, "group", &ids, &markers, SENDERS).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    let mut load_secs = loaded.elapsed().as_secs_f64();
    let sql = windi.db().pool(1).await?;

    // The database of these chats alone, SQL only (see the module's documentation).
    let mut alone: [Vec<f64>; 2] = Default::default();
    for _ in 0..ctx.reps {
        for (side, chat) in [private, all_read].into_iter().enumerate() {
            let ms = sql_pages_ms(&sql, chat, sql_pages, budget).await?;
            alone[side].push(probe::p50_p99(ms).0);
        }
    }

    let loaded = Instant::now();
    let (background_users, background_chats, background_messages) =
        ctx.pick(("1000", "2000", "10000"), ("10000", "5000", "50000"));
    probe::generate(
        ctx,
        windi.db(),
        &[
            "--users",
            background_users,
            "--chats",
            background_chats,
            "--messages",
            background_messages,
            "--seed",
            "19",
        ],
    )
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    probe::check(ctx, windi.db()).await?;
    load_secs += loaded.elapsed().as_secs_f64();

    let tokens =
        |members: &[User]| -> Vec<String> { members.iter().map(|u| u.token.clone()).collect() };
    let lowest_behind = (MESSAGES - BEHIND_STEP * BEHIND) as usize;
    let chats = [
        Chat {
            id: private,
            tokens: tokens(&users[..2]),
            read_in_page: PAGE as usize,
        },
        Chat {
            id: all_read,
            tokens: tokens(&users[..CLIENTS]),
            read_in_page: PAGE as usize,
        },
        Chat {
            id: some_behind,
            tokens: tokens(&users[..CLIENTS]),
            // Seqs last−199 ..= lowest marker of those behind.
            read_in_page: lowest_behind - (MESSAGES - PAGE) as usize,
        },
    ];

    let base = windi.api_url.clone();
    let mut phases = [Phase::default(), Phase::default()];
    for rep in 0..ctx.reps {
        for (dropped, phase) in phases.iter_mut().enumerate() {
            if dropped == 1 {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {INDEX}")))
                    .execute(&pool)
                    .await?;
            }
            for (i, chat) in chats.iter().enumerate() {
                // The flags are right either way, and the first pages warm the caches and
                // windi's prepared statement (replanned after the DDL) outside the figures.
                if rep == 0 {
                    verify_page(&api, chat).await?;
                    pages(ctx, &base, chat, CLIENTS * 4, budget).await?;
                }
                let (mut latencies, rate) = pages(ctx, &base, chat, requests, budget).await?;
                phase.http_p50[i].push(crate::report::quantile(&mut latencies, 0.5));
                phase.http_p99[i].push(crate::report::quantile(&mut latencies, 0.99));
                phase.rate[i].push(rate);
                let sql_ms = sql_pages_ms(&sql, chat.id, sql_pages, budget).await?;
                phase.sql_p50[i].push(probe::p50_p99(sql_ms).0);
            }
            if dropped == 1 {
                sqlx::raw_sql(sqlx::AssertSqlSafe(index_def.clone()))
                    .execute(&pool)
                    .await?;
            }
        }
    }
    sql.close().await;
    pool.close().await;

    let note = format!(
        "newest page of 200 of 2,000 messages (`?limit=200&before_seq=2001`); {CLIENTS} \
         concurrent clients, up to {requests} pages or {:.2} s per chat per rep; data by SQL \
         with the send path's invariants among `windi generate --users {background_users} \
         --chats {background_chats} --messages {background_messages}`, `windi check` clean \
         (loaded in {load_secs:.0} s)",
        budget.as_secs_f64()
    );
    let sql_note = format!(
        "`messages::page` (windi's own query) through sqlx, one connection, sequential, up \
         to {sql_pages} pages or {:.2} s per chat per rep",
        budget.as_secs_f64()
    );
    let mut figures = vec![
        Figure::new(
            "read-flag",
            format!(
                "the page's SQL p50, group of {MEMBERS}, all read, no other chat in the database"
            ),
            "ms",
            &alone[1],
        )
        .against("private chat, same database", &alone[0])
        .note(format!(
            "before `windi generate` added the other chats: chat_members holds these chats' \
             {} rows alone; {sql_note}",
            2 * MEMBERS + 2
        )),
    ];
    for (dropped, phase) in phases.iter().enumerate() {
        let (when, target) = if dropped == 0 {
            ("", true)
        } else {
            (", index dropped", false)
        };
        let with_target = |f: Figure, t: Target| if target { f.target(t) } else { f };
        let baseline = format!("private chat{when}");
        figures.push(with_target(
            Figure::new(
                "read-flag",
                format!("history page p50, group of {MEMBERS}, all read{when}"),
                "ms",
                &phase.http_p50[ALL_READ],
            )
            .against(&baseline, &phase.http_p50[PRIVATE])
            .note(if target {
                note.clone()
            } else {
                format!(
                    "the plan before issue 19: `DROP INDEX {INDEX}` in the same run, between \
                     the measurements with it, created again after"
                )
            }),
            Target::RatioAtMost(2.0),
        ));
        figures.push(
            Figure::new(
                "read-flag",
                format!("history page p99, group of {MEMBERS}, all read{when}"),
                "ms",
                &phase.http_p99[ALL_READ],
            )
            .against(&baseline, &phase.http_p99[PRIVATE]),
        );
        figures.push(with_target(
            Figure::new(
                "read-flag",
                format!("history pages/s, group of {MEMBERS}, all read{when}"),
                "pages/s",
                &phase.rate[ALL_READ],
            )
            .against(&baseline, &phase.rate[PRIVATE]),
            Target::RatioAtLeast(0.5),
        ));
        figures.push(with_target(
            Figure::new(
                "read-flag",
                format!("history page p50, group of {MEMBERS}, {BEHIND} members behind{when}"),
                "ms",
                &phase.http_p50[SOME_BEHIND],
            )
            .against(&baseline, &phase.http_p50[PRIVATE]),
            Target::RatioAtMost(2.0),
        ));
        figures.push(
            Figure::new(
                "read-flag",
                format!("the page's SQL p50, group of {MEMBERS}, all read{when}"),
                "ms",
                &phase.sql_p50[ALL_READ],
            )
            .against(&baseline, &phase.sql_p50[PRIVATE])
            .note(sql_note.clone()),
        );
        figures.push(
            Figure::new(
                "read-flag",
                format!("the page's SQL p50, group of {MEMBERS}, {BEHIND} members behind{when}"),
                "ms",
                &phase.sql_p50[SOME_BEHIND],
            )
            .against(&baseline, &phase.sql_p50[PRIVATE]),
        );
    }
    Ok(figures)
}

/// A chat of `members` (a private chat of the first two, or a group owned by the first) with
/// [`MESSAGES`] messages sent by the first `senders` members in turn, each member's marker at
/// `markers[i]`; answers its id. The send path's invariants hold: seqs and revs 1..n, one
/// `message` change per message, members joined with the chat (rev 0), and no sender has a
/// message above their own marker (the markers given keep the senders' at the end).
async fn load_chat(
    pool: &PgPool,
    kind: &str,
    members: &[i64],
    markers: &[i64],
    senders: usize,
) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let (owner, other) = (members[0], members[1]);
    let private = kind == "private";
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO chats (kind, name, creator_id, private_low, private_high, last_seq, rev,
                            created_at)
         VALUES ($1, CASE WHEN $1 = 'group' THEN 'read flag bench' END, $2,
                 CASE WHEN $1 = 'private' THEN least($2, $3) END,
                 CASE WHEN $1 = 'private' THEN greatest($2, $3) END,
                 $4, $4, now() - interval '30 days')
         RETURNING id",
    )
    .bind(kind)
    .bind(owner)
    .bind(other)
    .bind(MESSAGES)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
         SELECT $1, u, CASE WHEN n = 1 AND NOT $4 THEN 'owner' ELSE 'member' END, marker
         FROM unnest($2::bigint[], $3::bigint[]) WITH ORDINALITY AS t(u, marker, n)",
    )
    .bind(id)
    .bind(members)
    .bind(markers)
    .bind(private)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET member_rev = member_rev + 1 WHERE id = ANY($1)")
        .bind(members)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, created_at,
                               content_hash)
         SELECT $1, s, s, s, ($2::bigint[])[1 + s % cardinality($2::bigint[])], x.text,
                now() - ($3 - s) * interval '1 second',
                sha256(int8send($1) || convert_to(x.text, 'UTF8'))
         FROM generate_series(1, $3::bigint) s,
              LATERAL (SELECT 'bench message ' || s
                       || ', about as long as a real one: sixty chars' AS text) x
         ORDER BY s",
    )
    .bind(id)
    .bind(&members[..senders])
    .bind(MESSAGES)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id, created_at)
         SELECT chat_id, rev, 'message', id, sender_id, created_at FROM messages
         WHERE chat_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The newest page of `chat`.
fn newest_page(chat: i64) -> String {
    format!(
        "/chat/history/{chat}?limit={PAGE}&before_seq={}",
        MESSAGES + 1
    )
}

/// The newest page is the last [`PAGE`] seqs, and exactly `read_in_page` of them (the oldest)
/// are read: a fast page with wrong flags must not pass.
async fn verify_page(api: &crate::harness::Api, chat: &Chat) -> anyhow::Result<()> {
    let page = api.get(&chat.tokens[0], &newest_page(chat.id)).await?;
    let page = page.as_array().context("a history page is not a list")?;
    let seqs: Vec<i64> = page.iter().filter_map(|m| m["seq"].as_i64()).collect();
    ensure!(
        seqs == ((MESSAGES - PAGE + 1)..=MESSAGES).collect::<Vec<_>>(),
        "chat {}: the newest page is not seqs {}..={MESSAGES}",
        chat.id,
        MESSAGES - PAGE + 1
    );
    let read: Vec<bool> = page
        .iter()
        .map(|m| m["read"] == Value::Bool(true))
        .collect();
    let expected: Vec<bool> = (0..PAGE as usize).map(|i| i < chat.read_in_page).collect();
    ensure!(
        read == expected,
        "chat {}: {} of the newest page read, expected the oldest {}",
        chat.id,
        read.iter().filter(|r| **r).count(),
        chat.read_in_page
    );
    Ok(())
}

/// Latencies (ms) of the chat's newest page asked by [`CLIENTS`] concurrent clients, each one
/// request at a time with a member's token (client i with token i mod n), until `count` in all
/// or `budget`; and the pages per second they got together. Any non-2xx answer is an error.
async fn pages(
    ctx: &Ctx,
    base: &str,
    chat: &Chat,
    count: usize,
    budget: Duration,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let url = format!("{base}{}", newest_page(chat.id));
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for client in 0..CLIENTS {
        let (http, url, issued) = (ctx.http.clone(), url.clone(), issued.clone());
        let token = chat.tokens[client % chat.tokens.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while started.elapsed() < budget && issued.fetch_add(1, Ordering::Relaxed) < count {
                let sent = Instant::now();
                let response = http
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await?;
                let status = response.status();
                let body = response.bytes().await?;
                out.push(sent.elapsed().as_secs_f64() * 1e3);
                ensure!(
                    status.is_success(),
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(out)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await.context("a client task panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(!latencies.is_empty(), "no page finished within {budget:?}");
    let rate = latencies.len() as f64 / elapsed;
    Ok((latencies, rate))
}

/// Latencies (ms) of up to `count` runs of the newest page's query itself
/// ([`messages::page`], what the history route runs after its membership check), one at a time
/// on one connection, stopping early after `budget`.
async fn sql_pages_ms(
    pool: &PgPool,
    chat: i64,
    count: usize,
    budget: Duration,
) -> anyhow::Result<Vec<f64>> {
    let range = SeqRange {
        after: 0,
        before: MESSAGES + 1,
        limit: PAGE,
        offset: 0,
        from_newest: true,
    };
    let started = Instant::now();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if started.elapsed() > budget && !out.is_empty() {
            break;
        }
        let sent = Instant::now();
        let page = messages::page(pool, chat, range).await?;
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        ensure!(
            page.len() == PAGE as usize,
            "a page of {} messages",
            page.len()
        );
    }
    Ok(out)
}
