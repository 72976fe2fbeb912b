//! `recovery`: one change whose event never reached the relay, in a group of 1,000 members
//! who are all connected (issue 18, "Recovery in proportion to changes"). What it costs
//! Postgres to recover it, and how long until every socket has it.
//!
//! The relay runs as its own `ws-relay` process (as in `connections`); every member's socket
//! has sent `resume` with the chat's rev and is live (a first message, sent through the API
//! and NATS, reached all of them). The lost change is a message sent through a second
//! `windi serve` on the same database that publishes nowhere ([`Windi::silent_twin`]): the
//! relay learns of it only from its poller, and each connection has to read it from Postgres.
//!
//! Measured per repetition: the time from the send until all 1,000 sockets have the message,
//! the relay's own counters over it (`catch_up_queries` sent to Postgres against
//! `catch_up_coalesced` callers served by a read already under way), and the database's
//! transactions over an 11 s window from the send less those of the 11 s window before it
//! (see [`pg_activity`]), which counts the same for a relay that has no such counters.
//!
//! The baseline is the relay of an earlier revision (`PREVIOUS_WINDI_BIN` and
//! `PREVIOUS_WS_RELAY_BIN`, both `windi` and `ws-relay` built at that revision), on a database
//! and processes of its own, interleaved with the current one. Without them the figures stand
//! alone; issue 18 gives the earlier design's cost as one identical catch-up read per socket.

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;

use crate::{
    harness::{
        Api, Ctx, Reader, RelayMode, To, Twin, User, Windi, WindiOptions, bulk_users, connect_many,
        raise_open_files, wait_count,
    },
    pg_activity::{self, FLUSH_WINDOW, counter_delta},
    report::Figure,
};

/// Frames of this benchmark's messages carry a dedup key with this prefix.
const PREFIX: &str = "lost-";
const TEXT: &str = "a message whose event the relay never gets";
/// How long every socket may take to get a change.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One relay (current or previous) with its group connected.
struct Side {
    windi: Windi,
    twin: Twin,
    owner: User,
    chat: i64,
    members: usize,
    readers: Vec<Reader>,
    /// Marked frames every socket has seen, all messages together.
    delivered: Arc<AtomicUsize>,
    /// Messages sent so far (the warm-up included).
    sent: usize,
    stats: sqlx::PgPool,
}

/// What one lost change cost.
struct Outcome {
    secs: f64,
    /// The window's transactions less the idle window's (`None` with `--quick`, whose
    /// windows are too short for Postgres's statistics).
    transactions: Option<f64>,
    catch_up_queries: Option<f64>,
    catch_up_coalesced: Option<f64>,
    counters: String,
}

impl Side {
    async fn start(ctx: &Ctx, tag: &str, members: usize) -> anyhow::Result<Self> {
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
        let users = bulk_users(&windi, &api, members, tag).await?;
        let others: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
        let chat = api
            .group(&users[0].token, "bench recovery", &others)
            .await?;
        let stats = windi.db().pool(1).await?;
        let rev: i64 = sqlx::query_scalar("SELECT rev FROM chats WHERE id = $1")
            .bind(chat)
            .fetch_one(&stats)
            .await?;
        let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
        let sockets = connect_many(windi.relay, &tokens, 64).await?;
        let delivered = Arc::new(AtomicUsize::new(0));
        let resume = json!({"type": "resume", "revs": {chat.to_string(): rev}});
        let mut readers = Vec::with_capacity(members);
        for mut ws in sockets {
            ws.send_json(&resume).await?;
            readers.push(Reader::spawn(ws, PREFIX, false, delivered.clone()));
        }
        let twin = windi.silent_twin(ctx).await?;
        let mut side = Self {
            windi,
            twin,
            owner: users[0].clone(),
            chat,
            members,
            readers,
            delivered,
            sent: 0,
            stats,
        };
        // Through the API and NATS: every socket is live once all of them have it.
        side.send(&api, 0).await?;
        // Postgres publishes the set-up's statistics before the first idle window is read.
        if !ctx.quick {
            tokio::time::sleep(FLUSH_WINDOW).await;
        }
        Ok(side)
    }

    /// Sends message `n` as the owner through `api` and waits until every socket has it;
    /// answers how long that took from the send.
    async fn send(&mut self, api: &Api, n: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        api.send(
            &self.owner.token,
            To::Chat(self.chat),
            TEXT,
            Some(&format!("{PREFIX}{n}")),
        )
        .await?;
        self.sent += 1;
        let expected = self.sent * self.members;
        if !wait_count(&self.delivered, expected, DELIVERY_WAIT).await {
            let got = self.delivered.load(std::sync::atomic::Ordering::Relaxed);
            anyhow::bail!("message {n}: {got} of {expected} deliveries within {DELIVERY_WAIT:?}");
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Loses one change: sent through the silent twin, recovered by the relay from Postgres.
    async fn lose_one(&mut self, ctx: &Ctx, n: usize) -> anyhow::Result<Outcome> {
        let window = ctx.pick(None, Some(FLUSH_WINDOW));
        let idle = match window {
            Some(window) => {
                let before = pg_activity::transactions(&self.stats).await?;
                tokio::time::sleep(window).await;
                Some(pg_activity::transactions(&self.stats).await? - before)
            }
            None => None,
        };
        let health_before = self.windi.relay_health(ctx).await?;
        let before = pg_activity::transactions(&self.stats).await?;
        let started = Instant::now();
        let silent = self.twin.api(ctx);
        let secs = self.send(&silent, n).await?;
        let health_after = self.windi.relay_health(ctx).await?;
        let transactions = match (window, idle) {
            (Some(window), Some(idle)) => {
                tokio::time::sleep_until((started + window).into()).await;
                let during = pg_activity::transactions(&self.stats).await? - before;
                Some((during - idle) as f64)
            }
            _ => None,
        };
        Ok(Outcome {
            secs,
            transactions,
            catch_up_queries: counter_delta(&health_before, &health_after, "catch_up_queries"),
            catch_up_coalesced: counter_delta(&health_before, &health_after, "catch_up_coalesced"),
            counters: pg_activity::recovery_counters(&health_before, &health_after),
        })
    }

    async fn stop(self) {
        for reader in self.readers {
            drop(reader.stop().await);
        }
        self.stats.close().await;
        drop(self.twin);
        self.windi.stop().await;
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let members = ctx.pick(50, 1000);
    let limit = raise_open_files()?;
    anyhow::ensure!(
        2 * members as u64 + 1024 <= limit,
        "{members} sockets per relay need more open files than this process's limit of {limit}"
    );
    let mut current = Side::start(ctx, "recovery", members).await?;
    let mut previous = match &ctx.previous {
        Some((windi, relay)) => Some(
            Side::start(&ctx.with_binaries(windi, relay), "recovery_prev", members)
                .await
                .context("the previous revision's windi and ws-relay")?,
        ),
        None => None,
    };
    let mut now: Vec<Outcome> = Vec::new();
    let mut before: Vec<Outcome> = Vec::new();
    for rep in 0..ctx.reps {
        // Message 0 was the warm-up.
        let outcome = current.lose_one(ctx, rep + 1).await?;
        eprintln!(
            "  recovery rep {rep}: all {members} have it in {:.2} s; transactions {:?}; {}",
            outcome.secs, outcome.transactions, outcome.counters
        );
        now.push(outcome);
        if let Some(side) = previous.as_mut() {
            let outcome = side.lose_one(ctx, rep + 1).await?;
            eprintln!(
                "  recovery rep {rep}, previous relay: {:.2} s; transactions {:?}; {}",
                outcome.secs, outcome.transactions, outcome.counters
            );
            before.push(outcome);
        }
    }
    current.stop().await;
    if let Some(side) = previous {
        side.stop().await;
    }

    let column = |o: &[Outcome], f: fn(&Outcome) -> Option<f64>| -> Vec<f64> {
        o.iter().map(|o| f(o).unwrap_or(f64::NAN)).collect()
    };
    let counters = |o: &[Outcome]| -> String {
        o.iter()
            .map(|o| o.counters.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut reads_note = format!(
        "the relay's /health over the recovery, per repetition: {}; callers served by a read \
         already under way (catch_up_coalesced): {:?}; issue 18 gives the earlier design as one \
         identical read per socket ({members})",
        counters(&now),
        column(&now, |o| o.catch_up_coalesced)
    );
    let previous_name = "the previous relay (PREVIOUS_*_BIN), same run";
    let mut time = Figure::new(
        "recovery",
        format!("time until all {members} sockets of a group have a change whose event was lost"),
        "s",
        &column(&now, |o| Some(o.secs)),
    )
    .note(
        "from the send through a second windi serve without NATS until every socket has the \
         message frame; the relay finds it with its poller (RELAY_POLL_INTERVAL_MS = 1000)",
    );
    let mut transactions = Figure::new(
        "recovery",
        "Postgres transactions for the lost change (11 s from the send, less the 11 s before)",
        "transactions",
        &column(&now, |o| o.transactions),
    )
    .note(
        "pg_stat_database xact_commit + xact_rollback of the benchmark's database; includes the \
         silent API's send and session read and the poller's reads of the feed",
    );
    if !before.is_empty() {
        time = time.against(previous_name, &column(&before, |o| Some(o.secs)));
        transactions = transactions.against(previous_name, &column(&before, |o| o.transactions));
        reads_note.push_str(&format!(
            "; the previous relay's /health: {}",
            counters(&before)
        ));
    }
    let reads = Figure::new(
        "recovery",
        format!("catch-up reads the relay sent for it, {members} sockets asking"),
        "queries",
        &column(&now, |o| o.catch_up_queries),
    )
    .note(reads_note);
    Ok(vec![time, reads, transactions])
}
