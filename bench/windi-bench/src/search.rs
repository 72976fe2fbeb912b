//! `search`: `GET /chat/search` over `windi generate`'s million messages, for a user in 200
//! chats, at 16 concurrent clients (issue 20: p99 ≤ 50 ms), and what its index costs a send.
//!
//! The data: `windi generate` (10,000 users, 5,000 chats, 1,000,000 messages of its English
//! and Russian chat vocabulary; a tenth with `--quick`), then one more user made a member of
//! 200 of its chats (by SQL, read to the end, `windi check` clean), who also sends 20
//! messages with a rare word into them through the API. Then `VACUUM ANALYZE`, what autovacuum
//! would have done by the time anyone searches.
//!
//! The queries, each client taking the next in turn: a common English word and a common
//! Russian one (each in about one message in twenty), a word typed half-way (the prefix
//! path), a phrase, a word with an exclusion, two words, the rare word, and a common word in
//! one chat (`chat_id`). Every answer is checked: 200, every hit in one of the user's chats.
//!
//! Baseline: the same searches through `store::search::messages` (the very queries the route
//! runs, steered by the same word statistics) on a pool of as many connections, from as many
//! tasks: what the route adds to its SQL.
//!
//! The send cost: `POST /chat/message` from [`SENDERS`] clients for [`SEND_SECONDS`], with the
//! indexes search reads (the words', and each chat's messages by id) and then without them
//! (`DROP INDEX`, created again after from their own definitions),
//! interleaved per repetition on the same server and database: sends/s with / without.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use sqlx::PgPool;
use windi_shared::{domain::search, store};

use crate::{
    harness::{Ctx, Windi, WindiOptions, bulk_users},
    probe,
    report::{Figure, Target},
};

/// Concurrent search clients (the issue's).
const CLIENTS: usize = 16;
/// Chats the searching user is a member of (the issue's; 100 with `--quick`, whose 500 chats
/// hold about 150 groups).
const CHATS: usize = 200;
const QUICK_CHATS: usize = 100;
/// The indexes only search reads: the words' (migration 20270101000001) and each chat's
/// messages by id (migration 20270103000001).
const INDEXES: [&str; 2] = ["messages_search_idx", "messages_chat_id_idx"];
/// The word only the rare messages have.
const RARE: &str = "zanzibar";
/// Concurrent senders while the send cost is measured, and for how long each time.
const SENDERS: usize = 16;
const SEND_SECONDS: u64 = 10;

/// What the clients ask, in turn; `None` searches all the user's chats, `Some` one chat.
fn queries(one_chat: i64) -> Vec<(&'static str, Option<i64>)> {
    vec![
        ("build", None),
        ("привет", None),
        ("tomo", None),
        ("\"see you\"", None),
        ("coffee -lunch", None),
        ("deploy done", None),
        (RARE, None),
        ("build", Some(one_chat)),
    ]
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let (users, chats, messages) =
        ctx.pick(("1000", "500", "100000"), ("10000", "5000", "1000000"));
    let requests = ctx.pick(400, 8_000);
    let budget = Duration::from_secs(ctx.pick(3, 30));
    let send_seconds = ctx.pick(2, SEND_SECONDS);
    let joined = ctx.pick(QUICK_CHATS, CHATS);

    let windi = Windi::start(ctx, "search", WindiOptions::api_only()).await?;
    let api = windi.api(ctx);
    let loaded = Instant::now();
    probe::generate(
        ctx,
        windi.db(),
        &[
            "--users",
            users,
            "--chats",
            chats,
            "--messages",
            messages,
            "--seed",
            "20",
        ],
    )
    .await?;
    let generated = loaded.elapsed().as_secs_f64();
    let searcher = bulk_users(&windi, &api, 1, "search").await?.remove(0);
    let pool = windi.db().pool(CLIENTS as u32 + 2).await?;
    let member_of = join_chats(&pool, searcher.id, joined).await?;
    for (i, chat) in member_of.iter().take(20).enumerate() {
        api.post(
            &searcher.token,
            "/chat/message",
            &json!({"chat_id": chat, "text": format!("the {RARE} plan, part {i}")}),
        )
        .await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    probe::check(ctx, windi.db()).await?;
    let load_secs = loaded.elapsed().as_secs_f64();
    let one_chat = busiest(&pool, &member_of).await?;
    let queries = queries(one_chat);

    let mut index_defs = Vec::new();
    for index in INDEXES {
        let def: String =
            sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = $1")
                .bind(index)
                .fetch_optional(&pool)
                .await?
                .with_context(|| format!("no index {index}: are the migrations there?"))?;
        index_defs.push(def);
    }

    let mut http_p50 = Vec::new();
    let mut http_p99 = Vec::new();
    let mut rates = Vec::new();
    let mut sql_p50 = Vec::new();
    let mut sql_p99 = Vec::new();
    let mut per_query: Vec<Vec<f64>> = vec![Vec::new(); queries.len()];
    let mut per_query_pages: Vec<Vec<(usize, bool)>> = vec![Vec::new(); queries.len()];
    let mut sends_with = Vec::new();
    let mut sends_without = Vec::new();
    let base = windi.api_url.clone();
    for rep in 0..ctx.reps {
        if rep == 0 {
            // Warm the caches outside the figures, and check every answer once.
            searches(
                ctx,
                &base,
                &searcher.token,
                &queries,
                &member_of,
                CLIENTS * 8,
                budget,
            )
            .await?;
        }
        let Searched {
            latencies,
            pages,
            rate,
        } = searches(
            ctx,
            &base,
            &searcher.token,
            &queries,
            &member_of,
            requests,
            budget,
        )
        .await?;
        let mut all: Vec<f64> = latencies.iter().map(|(_, ms)| *ms).collect();
        for (q, ms) in &latencies {
            per_query[*q].push(*ms);
        }
        for (q, hits, short) in pages {
            per_query_pages[q].push((hits, short));
        }
        let (p50, p99) = probe::p50_p99(std::mem::take(&mut all));
        http_p50.push(p50);
        http_p99.push(p99);
        rates.push(rate);
        let sql = sql_searches(&pool, searcher.id, &queries, requests, budget).await?;
        let (p50, p99) = probe::p50_p99(sql);
        sql_p50.push(p50);
        sql_p99.push(p99);
    }
    // The sends come after every search: their messages would change what the searches find
    // (a walk for a Russian word would first pass tens of thousands of new English ones).
    for _ in 0..ctx.reps {
        sends_with.push(sends(ctx, &base, &searcher.token, &member_of, send_seconds).await?);
        for index in INDEXES {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {index}")))
                .execute(&pool)
                .await?;
        }
        sends_without.push(sends(ctx, &base, &searcher.token, &member_of, send_seconds).await?);
        for def in &index_defs {
            sqlx::raw_sql(sqlx::AssertSqlSafe(def.clone()))
                .execute(&pool)
                .await?;
        }
        sqlx::raw_sql("VACUUM ANALYZE messages")
            .execute(&pool)
            .await?;
    }
    pool.close().await;

    let note = format!(
        "`windi generate --users {users} --chats {chats} --messages {messages}` (generated \
         in {generated:.0} s, all loaded in {load_secs:.0} s), one user in {joined} of its \
         chats; {CLIENTS} concurrent clients on keep-alive connections, up to {requests} \
         searches or {:.0} s per rep, the queries {} in turn",
        budget.as_secs_f64(),
        queries
            .iter()
            .map(|(q, chat)| if chat.is_some() {
                format!("`{q}` (one chat)")
            } else {
                format!("`{q}`")
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sql_note = format!(
        "`store::search::messages` (the route's own query) through sqlx, {CLIENTS} tasks on \
         {CLIENTS} connections, the same queries"
    );
    let mut figures = vec![
        Figure::new("search", "search p99, 16 clients", "ms", &http_p99)
            .against("its SQL alone, 16 tasks", &sql_p99)
            .target(Target::AtMost(50.0))
            .note(note),
        Figure::new("search", "search p50, 16 clients", "ms", &http_p50)
            .against("its SQL alone, 16 tasks", &sql_p50)
            .note(sql_note),
        Figure::new("search", "searches/s, 16 clients", "searches/s", &rates),
        Figure::new(
            "search",
            format!("sends/s with the search indexes, {SENDERS} clients"),
            "sends/s",
            &sends_with,
        )
        .against("the same without them (DROP INDEX)", &sends_without)
        .target(Target::RatioAtLeast(0.9))
        .note(format!(
            "POST /chat/message from {SENDERS} clients into the user's {joined} chats for \
             {send_seconds} s, with the indexes then without them, same server and database, \
             per rep"
        )),
    ];
    for (i, (q, chat)) in queries.iter().enumerate() {
        let samples = std::mem::take(&mut per_query[i]);
        let (p50, p99) = probe::p50_p99(samples);
        let what = if chat.is_some() { " (one chat)" } else { "" };
        // A page's work is bounded: one the walk stopped short of full (with a `next`) makes
        // the client ask again, so how often that happens belongs with the latency.
        let answers = std::mem::take(&mut per_query_pages[i]);
        let short = answers.iter().filter(|(_, short)| *short).count();
        let fewest = answers.iter().map(|(hits, _)| *hits).min().unwrap_or(0);
        figures.push(
            Figure::new("search", format!("search p99, `{q}`{what}"), "ms", &[p99]).note(format!(
                "p50 {p50:.1} ms; all reps together; first pages short of {} with a next: \
                     {short} of {}, the fewest hits {fewest}",
                search::DEFAULT_HITS,
                answers.len()
            )),
        );
    }
    Ok(figures)
}

/// Makes `user` a member of the `count` busiest group chats (a private chat takes no third),
/// read to the end, as the send path's invariants want it; answers their ids.
async fn join_chats(pool: &PgPool, user: i64, count: usize) -> anyhow::Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    let chats: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
         SELECT id, $1, 'member', last_seq FROM chats
         WHERE kind = 'group' ORDER BY chats.last_seq DESC, chats.id LIMIT $2
         RETURNING chat_id",
    )
    .bind(user)
    .bind(count as i64)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET member_rev = member_rev + 1 WHERE id = $1")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    ensure!(
        chats.len() == count,
        "only {} group chats to join, {count} needed",
        chats.len()
    );
    Ok(chats)
}

/// The chat of `chats` with the most messages.
async fn busiest(pool: &PgPool, chats: &[i64]) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar(
            "SELECT id FROM chats WHERE id = ANY($1) ORDER BY last_seq DESC LIMIT 1",
        )
        .bind(chats)
        .fetch_one(pool)
        .await?,
    )
}

/// Latencies (query index, ms) of up to `count` searches from [`CLIENTS`] concurrent clients,
/// each asking the next query in turn, one at a time, until `budget`; and searches per second.
/// Any non-200, or a hit outside `member_of`, is an error.
async fn searches(
    ctx: &Ctx,
    base: &str,
    token: &str,
    queries: &[(&'static str, Option<i64>)],
    member_of: &[i64],
    count: usize,
    budget: Duration,
) -> anyhow::Result<Searched> {
    let issued = Arc::new(AtomicUsize::new(0));
    let member_of: Arc<Vec<i64>> = Arc::new(member_of.to_vec());
    let queries: Arc<Vec<(&'static str, Option<i64>)>> = Arc::new(queries.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (http, issued, token) = (ctx.http.clone(), issued.clone(), token.to_owned());
        let (base, member_of, queries) = (base.to_owned(), member_of.clone(), queries.clone());
        tasks.push(tokio::spawn(async move {
            let (mut out, mut pages) = (Vec::new(), Vec::new());
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= count || started.elapsed() >= budget {
                    break;
                }
                let q = n % queries.len();
                let (text, chat) = queries[q];
                let mut url = reqwest::Url::parse(&format!("{base}/chat/search"))?;
                url.query_pairs_mut().append_pair("q", text);
                if let Some(chat) = chat {
                    url.query_pairs_mut()
                        .append_pair("chat_id", &chat.to_string());
                }
                let request = http
                    .get(url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30));
                let sent = Instant::now();
                let response = request.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                out.push((q, sent.elapsed().as_secs_f64() * 1e3));
                ensure!(
                    status.is_success(),
                    "search {text:?}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
                let page: Value = serde_json::from_slice(&body)?;
                let hits = page["hits"].as_array().context("no hits list")?;
                let short = hits.len() < search::DEFAULT_HITS as usize && !page["next"].is_null();
                pages.push((q, hits.len(), short));
                for hit in hits {
                    let chat_id = hit["chat_id"].as_i64().context("a hit without chat_id")?;
                    ensure!(
                        member_of.contains(&chat_id),
                        "search {text:?} answered a message of chat {chat_id}, not the user's"
                    );
                }
            }
            anyhow::Ok((out, pages))
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut pages = Vec::with_capacity(count);
    for task in tasks {
        let (out, shown) = task.await.context("a client task panicked")??;
        latencies.extend(out);
        pages.extend(shown);
    }
    ensure!(
        !latencies.is_empty(),
        "no search finished within {budget:?}"
    );
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok(Searched {
        latencies,
        pages,
        rate,
    })
}

/// What [`searches`] measured: latencies (query index, ms), each answer's page (query index,
/// hits, whether it stopped short of a full page with a `next`), and searches per second.
struct Searched {
    latencies: Vec<(usize, f64)>,
    pages: Vec<(usize, usize, bool)>,
    rate: f64,
}

/// A query, its chat if one, and (expected matches, messages in all) for the store.
type Parsed = (search::Query, Option<i64>, (f64, f64));

/// Latencies (ms) of the same searches run as the route's query itself, from [`CLIENTS`]
/// tasks on `pool`.
async fn sql_searches(
    pool: &PgPool,
    user_id: i64,
    queries: &[(&'static str, Option<i64>)],
    count: usize,
    budget: Duration,
) -> anyhow::Result<Vec<f64>> {
    let issued = Arc::new(AtomicUsize::new(0));
    let stats = store::search::word_stats(pool).await?;
    let parsed: Arc<Vec<Parsed>> = Arc::new(
        queries
            .iter()
            .map(|(q, chat)| {
                let query = search::parse(q)?;
                let expected = search::expected_matches(&stats, &query);
                Ok((query, *chat, (expected, stats.messages)))
            })
            .collect::<windi_shared::Result<_>>()?,
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (pool, issued, parsed) = (pool.clone(), issued.clone(), parsed.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= count || started.elapsed() >= budget {
                    break;
                }
                let (query, chat_id, expected) = &parsed[n % parsed.len()];
                let scope = store::search::Scope {
                    user_id,
                    chat_id: *chat_id,
                    before: i64::MAX,
                    limit: search::DEFAULT_HITS,
                };
                let sent = Instant::now();
                store::search::messages(&pool, query, scope, *expected, Default::default()).await?;
                out.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(out)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await.context("a SQL task panicked")??);
    }
    Ok(latencies)
}

/// Sends per second from [`SENDERS`] clients, each sending into `chats` in turn for `seconds`.
async fn sends(
    ctx: &Ctx,
    base: &str,
    token: &str,
    chats: &[i64],
    seconds: u64,
) -> anyhow::Result<f64> {
    let sent = Arc::new(AtomicUsize::new(0));
    let chats: Arc<Vec<i64>> = Arc::new(chats.to_vec());
    let started = Instant::now();
    let budget = Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(SENDERS);
    for client in 0..SENDERS {
        let (http, sent, token, chats) = (
            ctx.http.clone(),
            sent.clone(),
            token.to_owned(),
            chats.clone(),
        );
        let url = format!("{base}/chat/message");
        tasks.push(tokio::spawn(async move {
            let mut i = client;
            while started.elapsed() < budget {
                let chat = chats[i % chats.len()];
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"chat_id": chat, "text": format!("see you tomorrow, build {i} is green")}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await?;
                ensure!(
                    response.status().is_success(),
                    "send: {}",
                    response.status()
                );
                sent.fetch_add(1, Ordering::Relaxed);
                i += SENDERS;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a sender task panicked")??;
    }
    Ok(sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
