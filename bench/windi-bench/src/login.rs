//! `login`: how many logins a second the machine allows, and whether a login flood slows
//! everyone else's reads (issue 11, item 7).
//!
//! Logins are argon2id-bound (19 MiB, 2 passes: ~16 ms of one core each), so the baseline is
//! the same verification with windi's own code (`Passwords`, the same parameters and the same
//! limit of two in flight per core), in the benchmark's process, on the same cores. `wrk`
//! floods `POST /auth/login` with the right password over 50 accounts.
//!
//! Then the cost to others: one client reads keyset history pages (a chat of 5,000 messages)
//! sequentially, idle, then during the same login flood; the target is the flood's p99 within
//! 2× of idle.
//!
//! Limits: the login guard (`LoginGuard`: 5 failures per account, 100 per address, in 15
//! minutes) counts only *failed* logins, and every login here succeeds, so it never applies
//! and nothing needs raising; there is no limit on successful logins. The per-user `LIMIT_*`
//! limits are raised by the harness as for every scenario (they do not touch reads or logins).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use windi_shared::service::auth::Passwords;

use crate::{
    chatlist::load_chats,
    harness::{Ctx, PASSWORD, Windi, WindiOptions, bulk_users},
    probe::{self, Rng},
    report::{Figure, Target},
};

const ACCOUNTS: usize = 50;
/// Enough connections to keep every argon2 permit of windi busy (two per core) with some queue;
/// `BENCH_LOGIN_CONNECTIONS` overrides it (fewer: a lighter flood, to see where reads suffer).
const FLOOD_CONNECTIONS: usize = 8;
const FLOOD_THREADS: usize = 2;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let flood_connections: usize = match std::env::var("BENCH_LOGIN_CONNECTIONS") {
        Ok(v) => v.parse().context("BENCH_LOGIN_CONNECTIONS")?,
        Err(_) => FLOOD_CONNECTIONS,
    };
    let flood_threads = FLOOD_THREADS.min(flood_connections);
    let seconds = ctx.pick(1u64, 10);
    let messages = ctx.pick(500i64, 5_000);
    let windi = Windi::start(ctx, "login", WindiOptions::api_only()).await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, ACCOUNTS, "login").await?;
    let pool = windi.db().pool(2).await?;
    load_chats(&pool, &users[..3], 1, messages).await?;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(users[0].id)
        .fetch_one(&pool)
        .await?;
    let chat: i64 = sqlx::query_scalar("SELECT chat_id FROM chat_members WHERE user_id = $1")
        .bind(users[2].id)
        .fetch_one(&pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
    pool.close().await;
    // A login as each account once, through the API: they all work before the flood.
    api.login(&users[1].email, PASSWORD).await?;

    let script = std::env::temp_dir().join(format!("windi-bench-login-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        lua_script(&users.iter().map(|u| u.email.as_str()).collect::<Vec<_>>()),
    )?;
    let login_url = format!("{}/auth/login", windi.api_url);
    let reader = &users[2];
    let requests = ctx.pick(2_000, 20_000);
    let read_window = Duration::from_secs(seconds.saturating_sub(1).max(1));

    let mut logins = Vec::new();
    let mut verifies = Vec::new();
    let mut idle_p99 = Vec::new();
    let mut flood_p99 = Vec::new();
    let mut idle_p50 = Vec::new();
    let mut flood_p50 = Vec::new();
    let mut hashing_p99 = Vec::new();
    for rep in 0..ctx.reps {
        let run = probe::wrk(
            flood_threads,
            flood_connections,
            seconds,
            Some(&script),
            None,
            &login_url,
        )
        .await?;
        logins.push(run.requests_per_sec);
        verifies.push(argon2_rate(&hash, cores, Duration::from_secs(seconds)).await?);

        // The same pages idle and during the flood: a reader seeded by the repetition.
        let read_pages = || {
            let mut rng = Rng::new(rep as u64 + 1);
            probe::latencies(
                &ctx.http,
                &windi.api_url,
                &reader.token,
                requests,
                read_window,
                move || {
                    format!(
                        "/chat/history/{chat}?before_seq={}",
                        rng.between(101, messages + 1)
                    )
                },
            )
        };
        let idle = read_pages().await?;
        let (p50, p99) = probe::p50_p99(idle);
        idle_p50.push(p50);
        idle_p99.push(p99);

        // The flood runs a second longer than the reads, which start once it is under way.
        let flood = {
            let script = script.clone();
            let url = login_url.clone();
            tokio::spawn(async move {
                probe::wrk(
                    flood_threads,
                    flood_connections,
                    seconds + 1,
                    Some(&script),
                    None,
                    &url,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = read_pages().await?;
        flood.await.context("the flood task panicked")??;
        let (p50, p99) = probe::p50_p99(during);
        flood_p50.push(p50);
        flood_p99.push(p99);

        // The same hashes with no login at all: windi's own Passwords, as many in flight, in
        // this process. What the reads lose here is the hashing's presence on the cores
        // (caches, memory bandwidth), not anything on windi's request path.
        let hashing = {
            let hash = hash.clone();
            let window = read_window + Duration::from_secs(1);
            tokio::spawn(async move { argon2_rate(&hash, cores, window).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = read_pages().await?;
        hashing.await.context("the hashing task panicked")??;
        hashing_p99.push(probe::p50_p99(during).1);
    }
    let _ = std::fs::remove_file(&script);

    Ok(vec![
        Figure::new("login", format!("logins/s, wrk -c{flood_connections}, {cores} cores"), "logins/s", &logins)
            .against(format!("argon2id verify in-process, {} in flight", cores * 2), &verifies)
            .note("argon2id (19 MiB, t=2, p=1) is the cost: the baseline is windi's own Passwords::verify \
                   of the same hash; every login succeeds, so LoginGuard (failures only) never applies"),
        Figure::new("login", "history page p99 during a login flood", "ms", &flood_p99)
            .against("idle", &idle_p99)
            .target(Target::RatioAtMost(2.0))
            .note(format!("one sequential reader, keyset pages of a {messages}-message chat, {}s windows; \
                           the flood is the logins/s run's wrk", read_window.as_secs())),
        Figure::new("login", "history page p50 during a login flood", "ms", &flood_p50)
            .against("idle", &idle_p50),
        Figure::new("login", "history page p99 while the same hashes run without logins", "ms", &hashing_p99)
            .against("idle", &idle_p99)
            .note("the flood's argon2 work alone, in the benchmark's process (windi's Passwords, the same \
                   threads and priority): the part of the flood's p99 that no change on the login path \
                   can take back"),
    ])
}

/// A `wrk` script posting the login form, cycling over the accounts.
fn lua_script(emails: &[&str]) -> String {
    let bodies: Vec<String> = emails
        .iter()
        .map(|e| format!("\"username={}&password={PASSWORD}\"", e.replace('@', "%40")))
        .collect();
    format!(
        "local bodies = {{{}}}\n\
         local i = 0\n\
         wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, nil, nil, bodies[i])\nend\n",
        bodies.join(", ")
    )
}

/// Verifications a second of `hash` with windi's own `Passwords`, two in flight per core as
/// windi allows, for `window`.
async fn argon2_rate(hash: &str, cores: usize, window: Duration) -> anyhow::Result<f64> {
    let passwords = Passwords::new(cores * 2);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cores * 2 {
        let (passwords, done, hash) = (passwords.clone(), done.clone(), hash.to_owned());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < window {
                let ok = passwords
                    .verify(PASSWORD.into(), Some(hash.clone()))
                    .await?;
                anyhow::ensure!(ok, "the password did not verify");
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
