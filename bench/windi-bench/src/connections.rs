//! `connections`: many idle authenticated sockets on one relay. Memory per connection (the
//! relay's RSS delta over the count), the time to connect them all, and the time for all of
//! them to be back after a relay restart.
//!
//! The relay runs as its own `ws-relay` process next to `windi serve` (`WINDI_RELAY=off`,
//! events over NATS), so its RSS is the relay's alone and it can be restarted without the API.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::{
    harness::{Ctx, RelayMode, Windi, WindiOptions, Ws, bulk_users, raise_open_files, rss_kib},
    report::{Figure, Target},
};

/// Connection attempts in flight at once: enough to keep both cores busy with upgrades.
const CONNECTING_AT_ONCE: usize = 64;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.sockets;
    let limit = raise_open_files()?;
    anyhow::ensure!(
        (n as u64) + 1024 <= limit,
        "{n} sockets need more open files than the limit of {limit} (raise the hard limit, \
         e.g. prlimit --nofile, or pass a smaller --sockets)"
    );
    let windi = Windi::start(
        ctx,
        "connections",
        WindiOptions {
            relay: RelayMode::Separate,
            ..WindiOptions::default()
        },
    )
    .await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, n, "conn").await?;
    let tokens: Vec<String> = users.into_iter().map(|u| u.token).collect();

    let mut per_socket = Vec::new();
    let mut connect_secs = Vec::new();
    for _ in 0..ctx.reps {
        let before = rss_kib(windi.relay_pid())?;
        let started = Instant::now();
        let sockets = connect_all(&windi, &tokens).await?;
        connect_secs.push(started.elapsed().as_secs_f64());
        // Let the relay's allocator settle (freed upgrade buffers) before reading its RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(windi.relay_pid())?;
        per_socket.push((after.saturating_sub(before)) as f64 / n as f64);
        drop(sockets);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(vec![
        Figure::new("connections", format!("relay memory per idle socket, {n} sockets"), "KiB", &per_socket)
            .target(Target::AtMost(16.0))
            .note("RSS delta of the ws-relay process / sockets, each socket authenticated and past `ready`"),
        Figure::new("connections", format!("time to connect {n} sockets"), "s", &connect_secs),
    ])
}

/// Opens one socket per token, at most [`CONNECTING_AT_ONCE`] at a time, each past `ready`.
async fn connect_all(windi: &Windi, tokens: &[String]) -> anyhow::Result<Vec<Ws>> {
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut tasks = Vec::with_capacity(tokens.len());
    for token in tokens {
        let gate = gate.clone();
        let token = token.clone();
        let relay = windi.relay;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Ws::connect(relay, &token).await
        }));
    }
    let mut sockets = Vec::with_capacity(tokens.len());
    for task in tasks {
        sockets.push(task.await.context("a connect task panicked")??);
    }
    Ok(sockets)
}
