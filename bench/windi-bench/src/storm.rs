//! `storm`: 10,000 sockets reconnecting at once after a relay restart, each resuming as a real
//! client does (issue 18, "Recovery in proportion to changes"). How long until every one has
//! its replay, how hard Postgres is hit meanwhile, and what that does to the API's latency.
//!
//! Each user is in a private chat (with their neighbour) and a group of 100. The relay runs as
//! its own `ws-relay` process (as in `connections`). Each repetition starts a fresh relay,
//! connects every socket (64 upgrades in flight) and sends each one's `resume` with the revs of
//! its two chats, then:
//!
//! 1. **idle**: a light stream of `GET /chat/list` against the API (100 a second, open loop,
//!    on a thread and runtime of its own, timed from each request's scheduled time) for 11 s,
//!    which also lets Postgres publish the connects' statistics before the storm's are read;
//! 2. **storm**: SIGTERM the relay (clients get close 1012); while it is down one message goes
//!    into every group through the API, so every socket is owed one change; the relay starts
//!    again. Every client reconnects with its token (retrying every 50 ms), sends `resume`
//!    with the revs it had (again 600 ms later if the relay answers it with an `error` frame,
//!    as `unavailable` tells a client to), and waits for the missed message. The same API
//!    stream runs, and a
//!    sampler reads `pg_stat_database` every 100 ms ([`pg_activity`]).
//!
//! Figures: the time from SIGTERM until the last socket has its replay (the relay holds live
//! changes until a connection's resume, so that socket is live too); the peak Postgres
//! transactions per second over any 1 s window of the storm; the API's p99 during the storm
//! against the same stream idle, same repetition. The baseline of the first two is the relay
//! of an earlier revision when `PREVIOUS_WINDI_BIN` and `PREVIOUS_WS_RELAY_BIN` are set (on a
//! database of its own, interleaved, only one side's sockets open at a time).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    harness::{
        Api, Ctx, RelayMode, To, User, Windi, WindiOptions, Ws, bulk_users, groups_of, marked,
        private_chats, raise_open_files,
    },
    pg_activity::{self, Sampler, recovery_counters},
    report::{Figure, quantile},
};

/// Members per group.
const GROUP: usize = 100;
const CONNECTING_AT_ONCE: usize = 64;
/// How long a client keeps trying to come back and get its replay.
const BACK_WAIT: Duration = Duration::from_secs(120);
/// The API stream's requests per second.
const PROBE_RATE: u32 = 100;
/// Users whose chat lists the API stream reads, in turn.
const PROBE_USERS: usize = 50;
const PREFIX: &str = "storm-";
/// The storm's message into group g in repetition r is numbered `r * STRIDE + g`.
const STRIDE: u32 = 1_000_000;

/// One relay (current or previous) with its users and chats.
struct Side {
    windi: Windi,
    api: Api,
    users: Vec<User>,
    /// Each group's chat id and its owner's token.
    groups: Vec<(i64, String)>,
}

/// What one storm measured.
struct Outcome {
    secs: f64,
    peak_per_sec: f64,
    /// From the SIGTERM to a second after the last replay.
    transactions: i64,
    peak_active: i64,
    idle: Probe,
    storm: Probe,
    counters: String,
}

impl Side {
    async fn start(ctx: &Ctx, tag: &str, n: usize, group: usize) -> anyhow::Result<Self> {
        let windi = Windi::start(
            ctx,
            tag,
            WindiOptions {
                relay: RelayMode::Separate,
                ..WindiOptions::default()
            },
        )
        .await?;
        let api = windi.api(ctx);
        let users = bulk_users(&windi, &api, n, tag).await?;
        private_chats(&api, &users).await?;
        let groups = groups_of(&api, &users, group, "storm").await?;
        Ok(Self {
            windi,
            api,
            users,
            groups,
        })
    }

    /// Each user's `resume` frame with the current rev of each of their chats, in user order.
    async fn resume_frames(&self) -> anyhow::Result<Vec<String>> {
        let db = self.windi.db().pool(1).await?;
        let ids: Vec<i64> = self.users.iter().map(|u| u.id).collect();
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT m.user_id, c.id, c.rev FROM chat_members m JOIN chats c ON c.id = m.chat_id
             WHERE m.user_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&db)
        .await?;
        db.close().await;
        let mut revs: HashMap<i64, serde_json::Map<String, serde_json::Value>> = HashMap::new();
        for (user, chat, rev) in rows {
            revs.entry(user)
                .or_default()
                .insert(chat.to_string(), rev.into());
        }
        Ok(self
            .users
            .iter()
            .map(|u| json!({"type": "resume", "revs": revs.remove(&u.id).unwrap_or_default()}))
            .map(|frame| frame.to_string())
            .collect())
    }

    async fn storm(&mut self, ctx: &Ctx, rep: u32) -> anyhow::Result<Outcome> {
        let n = self.users.len();
        self.windi.restart_relay(ctx).await?;
        let frames = Arc::new(self.resume_frames().await?);
        let tokens: Arc<Vec<String>> =
            Arc::new(self.users.iter().map(|u| u.token.clone()).collect());
        let relay = self.windi.relay;
        let sockets: Vec<anyhow::Result<Ws>> = stream::iter(0..n)
            .map(|i| {
                let (frames, tokens) = (frames.clone(), tokens.clone());
                async move {
                    let mut ws = Ws::connect(relay, &tokens[i]).await?;
                    ws.send_text(&frames[i]).await?;
                    Ok(ws)
                }
            })
            .buffered(CONNECTING_AT_ONCE)
            .collect()
            .await;
        let sockets = sockets.into_iter().collect::<anyhow::Result<Vec<Ws>>>()?;

        let probe_tokens: Vec<String> = tokens.iter().take(PROBE_USERS).cloned().collect();
        let idle_probe = ApiProbe::start(&self.api.base, probe_tokens.clone())?;
        // Longer than Postgres may hold an idle backend's counts: none of the connects' shows
        // up in the storm's samples.
        tokio::time::sleep(ctx.pick(Duration::from_secs(1), pg_activity::FLUSH_WINDOW)).await;
        let idle = idle_probe.stop().await?;

        let waiting: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                let (frames, tokens) = (frames.clone(), tokens.clone());
                tokio::spawn(come_back(ws, relay, tokens, frames, i, rep))
            })
            .collect();
        let sampler = Sampler::start(self.windi.db().pool(1).await?);
        let storm_probe = ApiProbe::start(&self.api.base, probe_tokens)?;
        let started = Instant::now();
        self.windi.stop_relay().await?;
        // Committed while the relay is down: every socket is owed one change of its group.
        let api = &self.api;
        let sent: Vec<anyhow::Result<serde_json::Value>> = stream::iter(self.groups.iter())
            .enumerate()
            .map(|(g, (chat, owner))| async move {
                let key = format!("{PREFIX}{}", rep * STRIDE + g as u32);
                api.send(
                    owner,
                    To::Chat(*chat),
                    "while the relay was down",
                    Some(&key),
                )
                .await
            })
            .buffer_unordered(8)
            .collect()
            .await;
        sent.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        self.windi.start_relay(ctx).await?;
        let mut last = started;
        let mut failed = Vec::new();
        let mut back = Vec::with_capacity(n);
        let (mut connect_retries, mut resume_retries) = (0, 0);
        for task in waiting {
            match task.await.context("a come-back task panicked")? {
                Ok(b) => {
                    last = last.max(b.at);
                    connect_retries += b.connect_retries;
                    resume_retries += b.resume_retries;
                    back.push(b.ws);
                }
                Err(e) => failed.push(e),
            }
        }
        let storm = storm_probe.stop().await?;
        // Postgres publishes a busy backend's counts about once a second: what the storm's
        // last second did shows up within the next one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = sampler.stop().await;
        let health = self.windi.relay_health(ctx).await?;
        drop(back);
        if let Some(e) = failed.first() {
            bail!(
                "{} of {n} sockets did not get their replay: {e:#}",
                failed.len()
            );
        }
        Ok(Outcome {
            secs: last.duration_since(started).as_secs_f64(),
            peak_per_sec: pg_activity::peak_rate(&samples, Duration::from_secs(1)),
            transactions: pg_activity::total(&samples),
            peak_active: pg_activity::peak_active(&samples),
            idle,
            storm,
            counters: format!(
                "{connect_retries} failed connect attempts (refused while down included), {resume_retries} resumes answered with an \
                 error and sent again; {}",
                recovery_counters(&json!({}), &health)
            ),
        })
    }
}

/// What one client went through to come back.
struct Back {
    ws: Ws,
    /// When the message its group got while the relay was down arrived.
    at: Instant,
    /// Upgrades that failed (refused or timed out), and connections that dropped before the
    /// replay, before one got it.
    connect_retries: usize,
    /// `resume`s answered with an `error` frame (`unavailable`, `rate_limited`) and sent again.
    resume_retries: usize,
}

/// How long a client waits before sending `resume` again after an `error` answer: more than
/// the relay's limit of one resume per 500 ms.
const RESUME_RETRY: Duration = Duration::from_millis(600);

/// Waits for the relay to close `ws`, reconnects with token `i` (retrying every 50 ms while
/// the new relay is not up or refuses the upgrade), resumes with `frames[i]` (again after an
/// `error` answer, as a client is told to), and waits for the message its group got while
/// the relay was down.
async fn come_back(
    mut ws: Ws,
    relay: SocketAddr,
    tokens: Arc<Vec<String>>,
    frames: Arc<Vec<String>>,
    i: usize,
    rep: u32,
) -> anyhow::Result<Back> {
    let deadline = tokio::time::Instant::now() + BACK_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => bail!("socket {i} was not closed by the restart"),
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    drop(ws);
    let (mut connect_retries, mut resume_retries) = (0, 0);
    // A client whose new connection drops before its replay connects again, as any would.
    loop {
        let mut ws = loop {
            if tokio::time::Instant::now() >= deadline {
                bail!("socket {i} could not reconnect within {BACK_WAIT:?}");
            }
            if let Ok(ws) = Ws::connect(relay, &tokens[i]).await {
                break ws;
            }
            connect_retries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ws.send_text(&frames[i]).await?;
        loop {
            match tokio::time::timeout_at(deadline, ws.stream.next()).await {
                Err(_) => bail!("socket {i} got no replay within {BACK_WAIT:?}"),
                Ok(Some(Ok(Message::Text(text)))) => {
                    if marked(&text, PREFIX).is_some_and(|n| n / STRIDE == rep) {
                        return Ok(Back {
                            ws,
                            at: Instant::now(),
                            connect_retries,
                            resume_retries,
                        });
                    }
                    if text.contains(r#""type":"error""#) {
                        resume_retries += 1;
                        tokio::time::sleep(RESUME_RETRY).await;
                        ws.send_text(&frames[i]).await?;
                    }
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                    connect_retries += 1;
                    break;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// What an [`ApiProbe`] saw: latencies in ms of the answered requests, and the failures.
#[derive(Debug, Default)]
struct Probe {
    ms: Vec<f64>,
    failed: usize,
}

impl Probe {
    fn p(&self, q: f64) -> f64 {
        quantile(&mut self.ms.clone(), q)
    }
}

/// `GET /chat/list` at [`PROBE_RATE`] a second, open loop, on a thread and runtime of its own
/// (so the benchmark's thousands of socket tasks do not delay its clock), timed from each
/// request's scheduled time; until [`ApiProbe::stop`].
struct ApiProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Probe>>,
}

impl ApiProbe {
    /// At most this long, whatever happens.
    const LONGEST: Duration = Duration::from_secs(600);

    fn start(base: &str, tokens: Vec<String>) -> anyhow::Result<Self> {
        anyhow::ensure!(!tokens.is_empty(), "the API probe needs a user");
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("{base}/chat/list");
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(32)
                    .timeout(Duration::from_secs(30))
                    .build()?;
                let mut requests = tokio::task::JoinSet::new();
                let t0 = Instant::now();
                let every = Duration::from_secs(1) / PROBE_RATE;
                for i in 0.. {
                    let due = t0 + every * i;
                    if stopped.load(Ordering::Relaxed) || due > t0 + Self::LONGEST {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let request = http
                        .get(&url)
                        .bearer_auth(&tokens[i as usize % tokens.len()])
                        .send();
                    requests.spawn(async move {
                        let response = request.await.ok()?.error_for_status().ok()?;
                        response.bytes().await.ok()?;
                        Some(due.elapsed().as_secs_f64() * 1e3)
                    });
                }
                let mut probe = Probe::default();
                while let Some(done) = requests.join_next().await {
                    match done.ok().flatten() {
                        Some(ms) => probe.ms.push(ms),
                        None => probe.failed += 1,
                    }
                }
                Ok(probe)
            })
        });
        Ok(Self { stop, thread })
    }

    async fn stop(self) -> anyhow::Result<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the API probe panicked"))?
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.storm_sockets;
    let group = GROUP.min(n).min(ctx.pick(20, GROUP));
    anyhow::ensure!(
        n >= 2 && n.is_multiple_of(group) && n.is_multiple_of(2),
        "--storm-sockets {n}: give an even multiple of the group size ({group})"
    );
    let limit = raise_open_files()?;
    anyhow::ensure!(
        (n as u64) + 1024 <= limit,
        "{n} sockets need more open files than this process's limit of {limit} (pass a smaller \
         --storm-sockets)"
    );
    let mut current = Side::start(ctx, "storm", n, group).await?;
    let mut previous = match &ctx.previous {
        Some((windi, relay)) => Some((
            ctx.with_binaries(windi, relay),
            Side::start(&ctx.with_binaries(windi, relay), "storm_prev", n, group)
                .await
                .context("the previous revision's windi and ws-relay")?,
        )),
        None => None,
    };
    let mut now = Vec::new();
    let mut before = Vec::new();
    for rep in 0..ctx.reps as u32 {
        let o = current.storm(ctx, rep).await?;
        report_rep(rep, "", &o);
        now.push(o);
        if let Some((old_ctx, side)) = previous.as_mut() {
            let o = side.storm(old_ctx, rep).await?;
            report_rep(rep, ", previous relay", &o);
            before.push(o);
        }
    }
    current.windi.stop().await;
    if let Some((_, side)) = previous {
        side.windi.stop().await;
    }
    Ok(figures(n, group, &now, &before))
}

fn report_rep(rep: u32, which: &str, o: &Outcome) {
    eprintln!(
        "  storm rep {rep}{which}: all resumed in {:.1} s; Postgres peak {:.0}/s ({} in all, \
         {} active at most); API p99 {:.1} ms (idle {:.1} ms), {} failed; {}",
        o.secs,
        o.peak_per_sec,
        o.transactions,
        o.peak_active,
        o.storm.p(0.99),
        o.idle.p(0.99),
        o.storm.failed + o.idle.failed,
        o.counters
    );
}

fn figures(n: usize, group: usize, now: &[Outcome], before: &[Outcome]) -> Vec<Figure> {
    let col = |o: &[Outcome], f: fn(&Outcome) -> f64| -> Vec<f64> { o.iter().map(f).collect() };
    let previous = "the previous relay (PREVIOUS_*_BIN), same run";
    let mut time = Figure::new(
        "storm",
        format!("time until {n} sockets are resumed after a relay restart, each with its replay"),
        "s",
        &col(now, |o| o.secs),
    )
    .note(format!(
        "from SIGTERM of ws-relay through {} group sends while it is down and its restart, to \
         the last socket that reconnected, sent `resume` with the revs of its 2 chats (a private \
         chat and a group of {group}) and got the missed message; the relay's /health after \
         each storm: {}",
        n / group,
        counters(now)
    ));
    let mut peak = Figure::new(
        "storm",
        "peak Postgres transactions/s during the storm (1 s windows)",
        "transactions/s",
        &col(now, |o| o.peak_per_sec),
    )
    .note(format!(
        "pg_stat_database xact_commit + xact_rollback sampled every 100 ms from SIGTERM to 1 s \
         after the last replay (Postgres publishes a busy backend's counts about once a second); \
         transactions in all {:?}; most backends active at once {:?}",
        col(now, |o| o.transactions as f64),
        col(now, |o| o.peak_active as f64)
    ));
    if !before.is_empty() {
        time = time.against(previous, &col(before, |o| o.secs));
        peak = peak.against(previous, &col(before, |o| o.peak_per_sec));
        let notes = (time.note.take(), peak.note.take());
        time = time.note(format!(
            "{}; the previous relay's: {}",
            notes.0.unwrap_or_default(),
            counters(before)
        ));
        peak = peak.note(format!(
            "{}; the previous relay: {:?} transactions in all, {:?} backends active at most",
            notes.1.unwrap_or_default(),
            col(before, |o| o.transactions as f64),
            col(before, |o| o.peak_active as f64)
        ));
    }
    let mut out = vec![time, peak, api_p99(now, "", n)];
    if !before.is_empty() {
        out.push(api_p99(before, ", previous relay", n));
    }
    out
}

/// Each repetition's relay counters, for a note.
fn counters(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| o.counters.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The API's p99 during the storm against the same stream idle, same repetition.
fn api_p99(outcomes: &[Outcome], which: &str, n: usize) -> Figure {
    let storm: Vec<f64> = outcomes.iter().map(|o| o.storm.p(0.99)).collect();
    let idle: Vec<f64> = outcomes.iter().map(|o| o.idle.p(0.99)).collect();
    let p50 = |f: fn(&Outcome) -> &Probe| -> Vec<f64> {
        outcomes
            .iter()
            .map(|o| (f(o).p(0.5) * 100.0).round() / 100.0)
            .collect()
    };
    let failed: Vec<usize> = outcomes
        .iter()
        .map(|o| o.storm.failed + o.idle.failed)
        .collect();
    Figure::new(
        "storm",
        format!("API p99, GET /chat/list at {PROBE_RATE}/s while {n} sockets resume{which}"),
        "ms",
        &storm,
    )
    .against("the same stream idle, same repetition", &idle)
    .note(format!(
        "open loop from its own thread, timed from each request's scheduled time; p50 {:?} ms \
         storm vs {:?} ms idle; requests failed (non-2xx or no answer): {failed:?}",
        p50(|o| &o.storm),
        p50(|o| &o.idle)
    ))
}
