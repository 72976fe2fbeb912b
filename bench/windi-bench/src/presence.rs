//! `presence`: what presence costs at scale (issue 21). 10,000 connected users in groups, with
//! churn: 500 sockets a second close and 500 open (the same users, one in ten, coming and
//! going), for a window of 10 s, measured on the connections that stay.
//!
//! Figures, per repetition, for groups of 100 against groups of 50 (the baseline, same run,
//! interleaved: only one side's sockets are open at a time):
//! - `presence` frames and bytes per staying connection per second: bounded by the batching
//!   (one frame per 2 s at most) and growing with the number of contacts whose state changes,
//!   so doubling the group doubles the bytes; a design that told every member of every group
//!   about every change in it would quadruple them (group squared);
//! - the relay's CPU (its process's user + system time over the window, in cores), which grows
//!   with the churn times the contacts told, the same way.
//!
//! The relay runs as its own `ws-relay` process (as in `storm`), the users are each in one
//! group; their tokens are signed directly (`bulk_users`).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    harness::{
        Api, Ctx, RelayMode, User, Windi, WindiOptions, Ws, bulk_users, groups_of, raise_open_files,
    },
    report::{Figure, Target},
};

/// Sockets closed, and as many opened, per second.
const CHURN: usize = 500;
/// Churn is applied in this many steps a second.
const STEPS: usize = 10;
const CONNECTING_AT_ONCE: usize = 64;

/// One windi with its users in groups of `group`.
struct Side {
    windi: Windi,
    users: Vec<User>,
    group: usize,
}

/// What one window measured.
struct Outcome {
    frames_per_conn_s: f64,
    bytes_per_conn_s: f64,
    relay_cores: f64,
    churn_per_s: f64,
}

/// Presence frames and their bytes seen by the staying connections while `measuring`.
#[derive(Default)]
struct Counters {
    measuring: AtomicBool,
    frames: AtomicU64,
    bytes: AtomicU64,
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
        let api: Api = windi.api(ctx);
        let users = bulk_users(&windi, &api, n, tag).await?;
        groups_of(&api, &users, group, "presence").await?;
        Ok(Self {
            windi,
            users,
            group,
        })
    }

    /// Connects every user, churns the last `pool` of them for `window`, and counts what the
    /// others receive.
    async fn measure(&self, window: Duration, settle: Duration) -> anyhow::Result<Outcome> {
        let relay = self.windi.relay;
        let n = self.users.len();
        // Every `stride`-th user comes and goes, so each group has its share of them.
        let stride = (n / (CHURN * 2)).max(4);
        let (pool, stayers): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % stride == 0);
        let staying = stayers.len();
        let counters = Arc::new(Counters::default());
        let tokens: Vec<String> = self.users.iter().map(|u| u.token.clone()).collect();
        let of = |ids: &[usize]| ids.iter().map(|&i| tokens[i].clone()).collect::<Vec<_>>();
        let readers: Vec<tokio::task::JoinHandle<()>> = connect(relay, &of(&stayers))
            .await?
            .into_iter()
            .map(|ws| tokio::spawn(count(ws, Some(counters.clone()))))
            .collect();
        // Half the pool is connected when the window starts: each step closes the oldest of
        // those and opens as many of the others.
        let (first, second) = pool.split_at(pool.len() / 2);
        let mut online: VecDeque<(usize, tokio::task::JoinHandle<()>)> = connect(relay, &of(first))
            .await?
            .into_iter()
            .zip(first)
            .map(|(ws, &i)| (i, tokio::spawn(count(ws, None))))
            .collect();
        let mut offline: VecDeque<usize> = second.iter().copied().collect();
        // The connects' own presence changes reach everyone in frames 2 s apart: let them
        // pass before the window.
        tokio::time::sleep(settle).await;

        // Each pool user stays a second or more on each side: a change the keeper writes
        // (once a second) is a real one, not a toggle that nets to nothing in between.
        let per_step = (CHURN / STEPS).min(pool.len() / 2 / STEPS).max(1);
        let pid = self.windi.relay_pid();
        let cpu_before = cpu_ticks(pid)?;
        counters.measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / STEPS as u32);
        let mut churned = 0usize;
        while started.elapsed() < window {
            tick.tick().await;
            // The oldest online go; the longest offline come back (each pool user comes and
            // goes about once a second).
            let closing: Vec<_> = online.drain(..per_step.min(online.len())).collect();
            let opening: Vec<usize> = offline.drain(..per_step.min(offline.len())).collect();
            for (i, reader) in closing {
                reader.abort();
                offline.push_back(i);
            }
            let opened = connect(relay, &of(&opening)).await?;
            churned += opened.len();
            online.extend(
                opening
                    .into_iter()
                    .zip(opened)
                    .map(|(i, ws)| (i, tokio::spawn(count(ws, None)))),
            );
        }
        let elapsed = started.elapsed().as_secs_f64();
        counters.measuring.store(false, Ordering::Relaxed);
        let cpu_after = cpu_ticks(pid)?;
        for reader in readers
            .into_iter()
            .chain(online.into_iter().map(|(_, r)| r))
        {
            reader.abort();
        }
        let frames = counters.frames.load(Ordering::Relaxed) as f64;
        let bytes = counters.bytes.load(Ordering::Relaxed) as f64;
        Ok(Outcome {
            frames_per_conn_s: frames / staying as f64 / elapsed,
            bytes_per_conn_s: bytes / staying as f64 / elapsed,
            relay_cores: (cpu_after - cpu_before) as f64 / clock_ticks()? / elapsed,
            churn_per_s: churned as f64 / elapsed,
        })
    }
}

/// Opens a socket per token, [`CONNECTING_AT_ONCE`] upgrades in flight.
async fn connect(relay: SocketAddr, tokens: &[String]) -> anyhow::Result<Vec<Ws>> {
    let sockets: Vec<anyhow::Result<Ws>> = stream::iter(tokens.iter().cloned())
        .map(|token| async move { Ws::connect(relay, &token).await })
        .buffered(CONNECTING_AT_ONCE)
        .collect()
        .await;
    sockets.into_iter().collect()
}

/// Reads a socket until it ends (or the task is aborted, which closes it), counting presence
/// frames into `counters` while they measure.
async fn count(mut ws: Ws, counters: Option<Arc<Counters>>) {
    while let Some(Ok(message)) = ws.stream.next().await {
        if let (Some(c), Message::Text(text)) = (&counters, &message)
            && c.measuring.load(Ordering::Relaxed)
            && text.starts_with(r#"{"type":"presence""#)
        {
            c.frames.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        }
    }
}

/// User plus system CPU time of a process so far, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').context("a malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields[11].parse()?, fields[12].parse()?);
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.storm_sockets;
    let (small, large) = ctx.pick((10, 20), (50, 100));
    anyhow::ensure!(
        n.is_multiple_of(large) && n >= 4 * large,
        "--storm-sockets {n}: give a multiple of {large}, at least {}",
        4 * large
    );
    let limit = raise_open_files()?;
    anyhow::ensure!(
        (n as u64) + 1024 <= limit,
        "{n} sockets need more open files than this process's limit of {limit}"
    );
    let window = ctx.pick(Duration::from_secs(3), Duration::from_secs(10));
    // Past the batching interval (2 s) twice, so the connects' frames are out of the way.
    let settle = Duration::from_secs(5);
    let base = Side::start(ctx, "presence_small", n, small).await?;
    let side = Side::start(ctx, "presence_large", n, large).await?;
    let (mut now, mut before) = (Vec::new(), Vec::new());
    for rep in 0..ctx.reps {
        for (which, s, out) in [("base", &base, &mut before), ("", &side, &mut now)] {
            let o = s.measure(window, settle).await?;
            eprintln!(
                "  presence rep {rep} {which} groups of {}: {:.3} frames and {:.0} bytes per \
                 connection per second, relay {:.2} cores, churn {:.0} connects/s (and as many \
                 closes)",
                s.group, o.frames_per_conn_s, o.bytes_per_conn_s, o.relay_cores, o.churn_per_s
            );
            out.push(o);
        }
    }
    base.windi.stop().await;
    side.windi.stop().await;
    let col = |o: &[Outcome], f: fn(&Outcome) -> f64| -> Vec<f64> { o.iter().map(f).collect() };
    let baseline = format!("groups of {small}, same run");
    let how = format!(
        "{n} users connected in groups of {large}; {CHURN} sockets a second close and {CHURN} \
         open (the same pool of users coming and going) for {} s; counted on the connections \
         that stay",
        window.as_secs()
    );
    Ok(vec![
        Figure::new(
            "presence",
            format!("presence bytes per connection per second, groups of {large}"),
            "B/s",
            &col(&now, |o| o.bytes_per_conn_s),
        )
        .against(&baseline, &col(&before, |o| o.bytes_per_conn_s))
        .target(Target::RatioAtMost(3.0))
        .note(format!(
            "{how}. Doubling the group doubles the contacts whose changes a connection hears \
             (ratio ~2); telling every member of every group about every change would be ~4"
        )),
        Figure::new(
            "presence",
            format!("presence frames per connection per second, groups of {large}"),
            "frames/s",
            &col(&now, |o| o.frames_per_conn_s),
        )
        .against(&baseline, &col(&before, |o| o.frames_per_conn_s))
        .target(Target::AtMost(0.5 + 1.0 / window.as_secs_f64()))
        .note(
            "batched: at most one frame per 2 s per connection, whatever the churn (0.5/s, \
             plus one that a window's edge can cut in)",
        ),
        Figure::new(
            "presence",
            format!("relay CPU under churn, groups of {large}"),
            "cores",
            &col(&now, |o| o.relay_cores),
        )
        .against(&baseline, &col(&before, |o| o.relay_cores))
        .target(Target::RatioAtMost(3.0))
        .note(format!(
            "the ws-relay process's user + system time over the window. {how}. Churn \
             achieved: {:.0} connects/s",
            col(&now, |o| o.churn_per_s)
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
        )),
    ])
}
