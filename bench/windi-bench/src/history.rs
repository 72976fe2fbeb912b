//! `history`: reading a chat's history and its change log stays as fast at a million messages
//! as at twenty thousand (issue 11, item 5).
//!
//! The data is `windi generate`'s: regular chats plus its long tail, run twice on one fresh
//! database — one chat of 20,000 messages (the baseline) and one of 1,000,000 (2,000 and 20,000
//! with `--quick`) — then `windi check` and `VACUUM ANALYZE` (what autovacuum would have done
//! by the time anyone reads). A member of each chat logs in; one client asks sequentially, on
//! one keep-alive connection, for:
//!
//! - keyset pages (`before_seq`, the default limit of 100) at positions drawn uniformly over
//!   the chat, in the big chat against the same in the small one: the target is the big
//!   chat's p50 within 1.5× of the small one's;
//! - the deep-offset page, the seed's `limit`/`offset` (counted from the oldest message) for
//!   the newest page of the big chat — what a client that pages the seed's way must ask to
//!   show recent history — against the keyset page at the same place;
//! - `GET /chat/changes` after a rev 10,000 back (1,000 with `--quick`), the first page and the
//!   whole catch-up in pages of 200, big chat against small.
//!
//! Each repetition runs every pair A then B; ratios are per repetition.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::{
    harness::{BenchDb, Ctx, Windi, WindiOptions},
    probe::{self, Rng},
    report::{Figure, Target},
};

/// The default history page, as a client that sets no limit gets.
const PAGE: i64 = 100;

/// One chat under test and a member's token.
struct Chat {
    id: i64,
    last_seq: i64,
    token: String,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let (small, large) = ctx.pick((2_000i64, 20_000i64), (20_000, 1_000_000));
    let back = ctx.pick(1_000i64, 10_000);
    let requests = ctx.pick(100, 2_000);
    let offset_requests = ctx.pick(10, 30);
    let budget = Duration::from_secs(ctx.pick(3, 60));

    let db = BenchDb::create(ctx, "history").await?;
    let loaded = Instant::now();
    // Two runs of the generator (which adds to what is there): the small chat with some
    // regular traffic around it, then the big one. Different seeds: the emails differ.
    probe::generate(
        ctx,
        &db,
        &[
            "--users",
            "200",
            "--chats",
            "100",
            "--messages",
            "5000",
            "--seed",
            "1",
            "--tail-chats",
            "1",
            "--tail-messages",
            &small.to_string(),
        ],
    )
    .await?;
    probe::generate(
        ctx,
        &db,
        &[
            "--users",
            "20",
            "--chats",
            "0",
            "--messages",
            "0",
            "--seed",
            "2",
            "--tail-chats",
            "1",
            "--tail-messages",
            &large.to_string(),
        ],
    )
    .await?;
    probe::check(ctx, &db).await?;
    let pool = db.pool(1).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    let load_secs = loaded.elapsed().as_secs_f64();

    let member = |last_seq: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT c.id, u.email FROM chats c JOIN chat_members m ON m.chat_id = c.id
                 JOIN users u ON u.id = m.user_id
                 WHERE c.last_seq = $1 AND c.name LIKE 'Long History%'
                 ORDER BY m.user_id LIMIT 1",
            )
            .bind(last_seq)
            .fetch_one(&pool)
            .await
            .with_context(|| format!("no generated chat of {last_seq} messages"))
        }
    };
    let (small_id, small_email) = member(small).await?;
    let (large_id, large_email) = member(large).await?;
    pool.close().await;

    let windi = Windi::start_on(ctx, db, WindiOptions::api_only()).await?;
    let api = windi.api(ctx);
    let password = "generated-password";
    let small = Chat {
        id: small_id,
        last_seq: small,
        token: api.login(&small_email, password).await?,
    };
    let large = Chat {
        id: large_id,
        last_seq: large,
        token: api.login(&large_email, password).await?,
    };
    verify_pages(&api, &large).await?;

    let base = windi.api_url.clone();
    let http = &ctx.http;
    // Warm-up: both chats' pages and both code paths once over, outside the figures.
    keyset_pages(http, &base, &small, 99, requests / 2, budget).await?;
    keyset_pages(http, &base, &large, 99, requests / 2, budget).await?;

    let mut f = Samples::default();
    for rep in 0..ctx.reps {
        let seed = rep as u64 + 1;
        let (p50, p99) =
            probe::p50_p99(keyset_pages(http, &base, &small, seed, requests, budget).await?);
        f.keyset_small.push((p50, p99));
        let (p50, p99) =
            probe::p50_p99(keyset_pages(http, &base, &large, seed, requests, budget).await?);
        f.keyset_large.push((p50, p99));

        let (id, newest) = (large.id, large.last_seq - PAGE);
        let offset = probe::latencies(http, &base, &large.token, offset_requests, budget, || {
            format!("/chat/history/{id}?limit={PAGE}&offset={newest}")
        })
        .await?;
        f.offset.push(probe::p50_p99(offset).0);
        let last = large.last_seq;
        let same_place =
            probe::latencies(http, &base, &large.token, offset_requests, budget, || {
                format!("/chat/history/{id}?before_seq={}", last + 1)
            })
            .await?;
        f.offset_keyset.push(probe::p50_p99(same_place).0);

        for (chat, first, catch_up) in [
            (&small, &mut f.changes_small, &mut f.catch_up_small),
            (&large, &mut f.changes_large, &mut f.catch_up_large),
        ] {
            let (id, from) = (chat.id, chat.last_seq - back);
            let page = probe::latencies(http, &base, &chat.token, requests, budget, || {
                format!("/chat/changes/{id}?after_rev={from}")
            })
            .await?;
            first.push(probe::p50_p99(page).0);
            catch_up.push(catch_up_ms(&api, chat, from).await?);
        }
    }

    let note = format!(
        "generated data (windi generate --tail-chats), `windi check` clean, VACUUM ANALYZE; \
         loaded in {load_secs:.0} s; one sequential client, {requests} pages per side per rep \
         at uniform random positions"
    );
    let n = |v: i64| thousands(v);
    Ok(vec![
        Figure::new(
            "history",
            format!("keyset page p50, chat of {} messages", n(large.last_seq)),
            "ms",
            &firsts(&f.keyset_large),
        )
        .against(
            format!("chat of {}", n(small.last_seq)),
            &firsts(&f.keyset_small),
        )
        .target(Target::RatioAtMost(1.5))
        .note(note),
        Figure::new(
            "history",
            format!("keyset page p99, chat of {} messages", n(large.last_seq)),
            "ms",
            &seconds(&f.keyset_large),
        )
        .against(
            format!("chat of {}", n(small.last_seq)),
            &seconds(&f.keyset_small),
        ),
        Figure::new(
            "history",
            format!(
                "deep-offset page p50 (limit {PAGE}, offset {}: the newest page the seed's way)",
                n(large.last_seq - PAGE)
            ),
            "ms",
            &f.offset,
        )
        .against("keyset page at the same place", &f.offset_keyset)
        .note(format!(
            "the offset is a seq bound (seqs are gap-free), an index seek like the keyset \
             page; before that, OFFSET walked every skipped row (1.5 s at 1M); \
             {offset_requests} requests per side per rep"
        )),
        Figure::new(
            "history",
            format!(
                "changes after a rev {} back, first page p50, chat of {}",
                n(back),
                n(large.last_seq)
            ),
            "ms",
            &f.changes_large,
        )
        .against(format!("chat of {}", n(small.last_seq)), &f.changes_small)
        .target(Target::RatioAtMost(1.5)),
        Figure::new(
            "history",
            format!(
                "catch-up of {} changes (pages of 200), chat of {}",
                n(back),
                n(large.last_seq)
            ),
            "ms",
            &f.catch_up_large,
        )
        .against(format!("chat of {}", n(small.last_seq)), &f.catch_up_small)
        .target(Target::RatioAtMost(1.5)),
    ])
}

#[derive(Default)]
struct Samples {
    keyset_small: Vec<(f64, f64)>,
    keyset_large: Vec<(f64, f64)>,
    offset: Vec<f64>,
    offset_keyset: Vec<f64>,
    changes_small: Vec<f64>,
    changes_large: Vec<f64>,
    catch_up_small: Vec<f64>,
    catch_up_large: Vec<f64>,
}

fn firsts(v: &[(f64, f64)]) -> Vec<f64> {
    v.iter().map(|p| p.0).collect()
}

fn seconds(v: &[(f64, f64)]) -> Vec<f64> {
    v.iter().map(|p| p.1).collect()
}

fn thousands(v: i64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Latencies of `count` keyset pages (`before_seq`, the default limit) at positions drawn
/// uniformly over the chat from `seed`.
async fn keyset_pages(
    http: &reqwest::Client,
    base: &str,
    chat: &Chat,
    seed: u64,
    count: usize,
    budget: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let (id, last) = (chat.id, chat.last_seq);
    probe::latencies(http, base, &chat.token, count, budget, move || {
        let before = rng.between(PAGE + 1, last + 1);
        format!("/chat/history/{id}?before_seq={before}")
    })
    .await
}

/// Every change after `from`, page by page (200 each) until `more` is false; answers the
/// milliseconds it took. Bounded: at most the changes asked for / 200 + 2 pages.
async fn catch_up_ms(api: &crate::harness::Api, chat: &Chat, from: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut rev = from;
    let pages = (chat.last_seq - from) / 200 + 2;
    for _ in 0..pages {
        let page = api
            .get(
                &chat.token,
                &format!("/chat/changes/{}?after_rev={rev}&limit=200", chat.id),
            )
            .await?;
        rev = page["rev"].as_i64().context("a changes page without rev")?;
        if page["more"] != Value::Bool(true) {
            ensure!(
                rev == chat.last_seq,
                "catch-up ended at rev {rev}, not {}",
                chat.last_seq
            );
            return Ok(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    anyhow::bail!("catch-up did not end within {pages} pages")
}

/// The pages measured answer what they should: 100 messages ending just below the cursor, the
/// offset page the newest 100, and a changes page from the rev after the one asked.
async fn verify_pages(api: &crate::harness::Api, chat: &Chat) -> anyhow::Result<()> {
    let seqs = |page: &Value| -> Vec<i64> {
        page.as_array()
            .map(|a| a.iter().filter_map(|m| m["seq"].as_i64()).collect())
            .unwrap_or_default()
    };
    let (id, last) = (chat.id, chat.last_seq);
    let keyset = api
        .get(&chat.token, &format!("/chat/history/{id}?before_seq=5001"))
        .await?;
    ensure!(
        seqs(&keyset) == (4901..=5000).collect::<Vec<_>>(),
        "the keyset page is not seqs 4901..=5000"
    );
    let offset = api
        .get(
            &chat.token,
            &format!("/chat/history/{id}?limit={PAGE}&offset={}", last - PAGE),
        )
        .await?;
    ensure!(
        seqs(&offset) == ((last - PAGE + 1)..=last).collect::<Vec<_>>(),
        "the offset page is not the newest {PAGE}"
    );
    let changes = api
        .get(
            &chat.token,
            &format!("/chat/changes/{id}?after_rev={}", last - 1000),
        )
        .await?;
    ensure!(
        changes["changes"][0]["rev"] == last - 999,
        "the changes page does not start after the rev asked: {}",
        changes["changes"][0]
    );
    Ok(())
}
