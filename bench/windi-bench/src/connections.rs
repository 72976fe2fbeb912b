//! `connections`: many idle authenticated sockets on one relay. Memory per connection (the
//! relay's RSS delta over the count), the time to connect them all, and the time until all of
//! them are back after a relay restart.
//!
//! The relay runs as its own `ws-relay` process next to `windi serve` (`WINDI_RELAY=off`,
//! events over NATS, as in production), so its RSS is the relay's alone and it restarts
//! without the API. Each repetition starts from a fresh relay process: RSS before, connect
//! every socket (each past `ready`), RSS after; then SIGTERM the relay (clients get close
//! 1012), start it again, and time until every client has reconnected with its token, got
//! `ready` and sent `resume`.
//!
//! The users have no chats: this measures what an idle connection itself costs. A user's
//! chats add a route entry per chat (shared by the chat's connected members) and a cursor
//! entry per connection and chat.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    harness::{
        Ctx, RelayMode, Windi, WindiOptions, Ws, bulk_users, connect_many, raise_open_files,
        rss_kib,
    },
    report::{Figure, Target},
};

/// Connection attempts in flight at once: enough to keep both cores busy with upgrades.
const CONNECTING_AT_ONCE: usize = 64;
/// How long clients keep trying to reconnect after the relay went away.
const RESUME_WAIT: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.sockets;
    let limit = raise_open_files()?;
    anyhow::ensure!(
        (n as u64) + 1024 <= limit,
        "{n} sockets need more open files than this process's limit of {limit} (raise the hard \
         limit, e.g. `prlimit --nofile=65536:65536 --pid $$` as root, or pass a smaller --sockets)"
    );
    let mut windi = Windi::start(
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
    let tokens: Arc<Vec<String>> = Arc::new(users.into_iter().map(|u| u.token).collect());

    let (mut per_socket, mut connect_secs, mut resume_secs) = (vec![], vec![], vec![]);
    for rep in 0..ctx.reps {
        // A fresh relay process: its RSS before is that of an empty relay.
        windi.restart_relay(ctx).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(windi.relay_pid())?;
        let started = Instant::now();
        let sockets = connect_many(windi.relay, &tokens, CONNECTING_AT_ONCE).await?;
        connect_secs.push(started.elapsed().as_secs_f64());
        // Let the upgrade's transient allocations be freed before reading the RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(windi.relay_pid())?;
        per_socket.push(after.saturating_sub(before) as f64 / n as f64);

        let waiting: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, ws)| tokio::spawn(come_back(ws, windi.relay, tokens.clone(), i)))
            .collect();
        let restarted = Instant::now();
        windi.restart_relay(ctx).await?;
        let mut back = Vec::with_capacity(n);
        for task in waiting {
            back.push(task.await.context("a resume task panicked")??);
        }
        resume_secs.push(restarted.elapsed().as_secs_f64());
        eprintln!(
            "  connections rep {rep}: {:.1} KiB/socket, connect {:.1} s, resume {:.1} s",
            per_socket[rep], connect_secs[rep], resume_secs[rep]
        );
        drop(back);
    }
    windi.stop().await;
    Ok(vec![
        Figure::new(
            "connections",
            format!("relay memory per idle socket, {n} sockets"),
            "KiB",
            &per_socket,
        )
        .target(Target::AtMost(16.0))
        .note(
            "RSS delta of a fresh ws-relay process over the sockets, each authenticated and past \
             `ready`; the clients are tokio-tungstenite in the bench process on the same cores",
        ),
        Figure::new(
            "connections",
            format!("time to connect {n} sockets, {CONNECTING_AT_ONCE} at a time"),
            "s",
            &connect_secs,
        ),
        Figure::new(
            "connections",
            format!("time until {n} sockets are back after a relay restart"),
            "s",
            &resume_secs,
        )
        .note(
            "from SIGTERM of ws-relay (clients get 1012) through its restart to the last client \
             reconnected with its token, `ready` received and `resume` sent; clients retry every 50 ms",
        ),
    ])
}

/// Waits for the relay to close `ws`, then reconnects with token `i` (retrying while the new
/// relay is not up) and resumes.
async fn come_back(
    mut ws: Ws,
    relay: std::net::SocketAddr,
    tokens: Arc<Vec<String>>,
    i: usize,
) -> anyhow::Result<Ws> {
    let deadline = tokio::time::Instant::now() + RESUME_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => bail!("socket {i} was not closed by the restart"),
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut ws) = Ws::connect(relay, &tokens[i]).await {
            ws.send_json(&json!({"type": "resume", "revs": {}})).await?;
            return Ok(ws);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("socket {i} could not reconnect within {RESUME_WAIT:?}")
}
