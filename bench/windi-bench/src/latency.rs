//! `latency`: end to end, `POST /chat/message` → the `message` frame on the other member's
//! socket, at a fixed offered rate over private chats with every user connected, beside raw
//! NATS publish → subscribe latency at the same rate in the same run.
//!
//! Open loop: send i is scheduled at `t0 + i / rate` and its latency counted from that
//! scheduled time, so a stall delays every send behind it and shows in the percentiles
//! (no coordinated omission). In-flight sends are capped at [`IN_FLIGHT`]; a send waiting for
//! that cap is still timed from its schedule.
//!
//! The baseline is the floor under windi's fan-out path: one core-NATS publish per message of
//! the same size, received by one subscriber on another connection. windi adds HTTP, the
//! send transaction, a JetStream publish with its ack, and the relay's routing and write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::{
    harness::{
        Api, Ctx, Reader, Windi, WindiOptions, Ws, bulk_users, connect_many, marked, message_frame,
        private_chats, wait_count,
    },
    report::{Figure, Target, quantile},
};

/// Sends in flight at most (the open loop's safety bound).
const IN_FLIGHT: usize = 512;
const TEXT: &str = "benchmark message with a realistic length, about sixty chars";
/// Numbers the messages of repetition r from `r * REP_STRIDE`, so keys never repeat.
const REP_STRIDE: u32 = 1_000_000;

/// p50, p99 and p99.9 of one repetition, in ms, and how many of the sends never arrived.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    lost: usize,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let clients = ctx.pick(40, 1000);
    let rate = ctx.pick(100, 500);
    let seconds = ctx.pick(2, 15);

    let windi = Windi::start(ctx, "latency", WindiOptions::default()).await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, clients, "lat").await?;
    let chats = private_chats(&api, &users).await?;
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let mut sockets = connect_many(windi.relay, &tokens, 64).await?;
    // Sender k (user 2k) sends into chat k; its peer (2k + 1) is the one measured.
    let senders: Vec<(String, i64)> = chats
        .iter()
        .enumerate()
        .map(|(k, chat)| (users[2 * k].token.clone(), *chat))
        .collect();

    let (mut w, mut n) = (Vec::new(), Vec::new());
    for rep in 0..ctx.reps {
        let (back, found) = windi_rep(&api, sockets, &senders, rate, seconds, rep as u32).await?;
        sockets = back;
        let nats = nats_rep(&ctx.nats_url, &windi.nats_prefix, rate, seconds, rep as u32).await?;
        eprintln!(
            "  latency rep {rep}: windi p50 {:.1} p99 {:.1} p99.9 {:.1} ms ({} lost); \
             NATS p50 {:.2} p99 {:.2} p99.9 {:.2} ms",
            found.p50, found.p99, found.p999, found.lost, nats.p50, nats.p99, nats.p999
        );
        w.push(found);
        n.push(nats);
    }
    drop(sockets);
    windi.stop().await;

    let lost: usize = w.iter().map(|p| p.lost).sum();
    let what = format!(
        "{rate} msg/s over {} private chats, {clients} sockets",
        chats.len()
    );
    let note = format!(
        "open loop, {seconds} s per repetition, timed from each send's scheduled time; \
         {lost} of {} sends never arrived; NATS on, relay embedded in windi serve; the bench's \
         clients share the cores",
        rate as usize * seconds as usize * ctx.reps
    );
    let baseline = "raw NATS publish → subscribe, same rate and size";
    let figure = |label: &str, pick: fn(&Percentiles) -> f64| {
        let ws: Vec<f64> = w.iter().map(pick).collect();
        let ns: Vec<f64> = n.iter().map(pick).collect();
        Figure::new("latency", format!("{label}, {what}"), "ms", &ws).against(baseline, &ns)
    };
    Ok(vec![
        figure("p50", |p| p.p50),
        figure("p99", |p| p.p99)
            .target(Target::AtMost(20.0))
            .note(note),
        figure("p99.9", |p| p.p999),
    ])
}

/// One repetition against windi: `rate × seconds` sends, round-robin over the chats.
async fn windi_rep(
    api: &Api,
    sockets: Vec<Ws>,
    senders: &[(String, i64)],
    rate: u32,
    seconds: u64,
    rep: u32,
) -> anyhow::Result<(Vec<Ws>, Percentiles)> {
    let total = (rate as u64 * seconds) as usize;
    let count = Arc::new(AtomicUsize::new(0));
    let readers: Vec<Reader> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| Reader::spawn(ws, "lat-", i % 2 == 1, count.clone()))
        .collect();
    let failures = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let schedule = schedule(total, rate);
    for (i, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until((*at).into()).await;
        let permit = gate.clone().acquire_owned().await?;
        let (token, chat) = senders[i % senders.len()].clone();
        let (api, failures) = (api.clone(), failures.clone());
        let key = format!("lat-{}", rep * REP_STRIDE + i as u32);
        tokio::spawn(async move {
            let sent = api
                .send(&token, crate::harness::To::Chat(chat), TEXT, Some(&key))
                .await;
            if sent.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Each message reaches both members' sockets (the sender's own device too).
    wait_count(&count, 2 * total, Duration::from_secs(10)).await;
    let mut back = Vec::with_capacity(readers.len());
    let mut arrivals = Vec::new();
    for reader in readers {
        let (ws, seen) = reader.stop().await;
        back.push(ws.context("the relay closed a socket during the measurement")?);
        arrivals.extend(seen);
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {total} sends failed");
    }
    Ok((back, percentiles(&schedule, arrivals, rep * REP_STRIDE)))
}

/// One repetition of the baseline: core NATS, one publisher and one subscriber connection.
async fn nats_rep(
    url: &str,
    prefix: &str,
    rate: u32,
    seconds: u64,
    rep: u32,
) -> anyhow::Result<Percentiles> {
    let total = (rate as u64 * seconds) as usize;
    let subject = format!("{prefix}.bench.latency");
    let publisher = async_nats::connect(url).await?;
    let subscriber = async_nats::connect(url).await?;
    let mut sub = subscriber.subscribe(subject.clone()).await?;
    subscriber.flush().await?;
    let receiver = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(total);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 10);
        while seen.len() < total {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => {
                    if let Some(n) = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|t| marked(t, "lat-"))
                    {
                        seen.push((n, Instant::now()));
                    }
                }
                _ => break,
            }
        }
        seen
    });
    let schedule = schedule(total, rate);
    for (i, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until((*at).into()).await;
        let frame = message_frame(&format!("lat-{}", rep * REP_STRIDE + i as u32), TEXT);
        publisher.publish(subject.clone(), frame.into()).await?;
    }
    publisher.flush().await?;
    let seen = receiver.await?;
    Ok(percentiles(&schedule, seen, rep * REP_STRIDE))
}

/// `total` instants `1 / rate` apart, starting 200 ms from now.
fn schedule(total: usize, rate: u32) -> Vec<Instant> {
    let t0 = Instant::now() + Duration::from_millis(200);
    (0..total)
        .map(|i| t0 + Duration::from_secs_f64(i as f64 / f64::from(rate)))
        .collect()
}

/// Latencies (arrival − schedule) of the arrivals numbered from `base`, and how many of the
/// scheduled never arrived.
fn percentiles(schedule: &[Instant], arrivals: Vec<(u32, Instant)>, base: u32) -> Percentiles {
    let mut ms: Vec<f64> = arrivals
        .into_iter()
        .filter_map(|(n, at)| {
            let i = n.checked_sub(base)? as usize;
            let due = schedule.get(i)?;
            Some(at.saturating_duration_since(*due).as_secs_f64() * 1000.0)
        })
        .collect();
    let lost = schedule.len().saturating_sub(ms.len());
    Percentiles {
        p50: quantile(&mut ms, 0.5),
        p99: quantile(&mut ms, 0.99),
        p999: quantile(&mut ms, 0.999),
        lost,
    }
}
