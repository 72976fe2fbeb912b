//! `fanout`: one group with every member connected. Delivery throughput (a burst of sends,
//! deliveries per second until every member's socket has every message) and delivery latency
//! at a fixed 50 msg/s (p50/p99 over every message × member), against a bare WebSocket
//! broadcaster written here: axum + a tokio broadcast channel, no auth, no database, no NATS,
//! each frame encoded once and the same bytes written to every socket — the floor of fan-out
//! on this machine. It serves the same number of sockets, read by the same client code, in the
//! same run, interleaved with windi.
//!
//! windi's path per message: HTTP, the send transaction, a JetStream publish, the relay's NATS
//! subscription, its routing to each member's connection queue, and the write. windi also
//! sends a `read` frame per message (the sender's marker moves), which the bare broadcaster
//! does not: it is part of windi's protocol and is counted in windi's cost.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, Utf8Bytes, WebSocket},
    },
    response::Response,
    routing::{get, post},
};
use tokio::sync::broadcast;

use crate::{
    harness::{
        Api, Ctx, Reader, To, Windi, WindiOptions, Ws, bulk_users, connect_many, message_frame,
        wait_count,
    },
    report::{Figure, Target, quantile},
};

const TEXT: &str = "benchmark message with a realistic length, about sixty chars";
/// Concurrent senders of a burst (closed loop), on both sides.
const BURST_SENDERS: usize = 4;
/// Messages of phase p in repetition r are numbered from `(2r + p) * STRIDE`.
const STRIDE: u32 = 1_000_000;

/// Where a phase sends: windi's API as the group's owner, or the bare broadcaster.
#[derive(Debug, Clone)]
enum Side {
    Windi { api: Api, token: String, chat: i64 },
    Bare { url: String, http: reqwest::Client },
}

impl Side {
    async fn send(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Self::Windi { api, token, chat } => {
                api.send(token, To::Chat(*chat), TEXT, Some(key)).await?;
            }
            Self::Bare { url, http } => {
                http.post(url)
                    .body(message_frame(key, TEXT))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let members = ctx.pick(50, 1000);
    let burst = ctx.pick(20, 150);
    let rate = 50;
    let seconds = ctx.pick(2, 10);

    let windi = Windi::start(ctx, "fanout", WindiOptions::default()).await?;
    let api = windi.api(ctx);
    let users = bulk_users(&windi, &api, members, "fan").await?;
    let ids: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
    let chat = api.group(&users[0].token, "bench fan-out", &ids).await?;
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let mut windi_sockets = connect_many(windi.relay, &tokens, 64).await?;
    let bare = Bare::start()?;
    let fake_tokens = vec!["-".to_owned(); members];
    let mut bare_sockets = connect_many(bare.addr, &fake_tokens, 64).await?;

    let windi_side = Side::Windi {
        api: api.clone(),
        token: users[0].token.clone(),
        chat,
    };
    let bare_side = Side::Bare {
        url: format!("http://{}/send", bare.addr),
        http: ctx.http.clone(),
    };
    let (mut w_rate, mut b_rate, mut w_p50, mut b_p50, mut w_p99, mut b_p99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..ctx.reps as u32 {
        let base = 2 * rep * STRIDE;
        let (s, r) = throughput(windi_sockets, &windi_side, burst, base).await?;
        windi_sockets = s;
        w_rate.push(r);
        let (s, r) = throughput(bare_sockets, &bare_side, burst, base).await?;
        bare_sockets = s;
        b_rate.push(r);

        let base = (2 * rep + 1) * STRIDE;
        let (s, p) = latency(windi_sockets, &windi_side, rate, seconds, base).await?;
        windi_sockets = s;
        w_p50.push(p.0);
        w_p99.push(p.1);
        let (s, p) = latency(bare_sockets, &bare_side, rate, seconds, base).await?;
        bare_sockets = s;
        b_p50.push(p.0);
        b_p99.push(p.1);
        eprintln!(
            "  fanout rep {rep}: windi {:.0}/s p99 {:.1} ms; bare {:.0}/s p99 {:.1} ms",
            w_rate[w_rate.len() - 1],
            w_p99[w_p99.len() - 1],
            b_rate[b_rate.len() - 1],
            b_p99[b_p99.len() - 1]
        );
    }
    // The relay's own counters say how it delivered: live, or from Postgres after a gap.
    let health = ctx
        .http
        .get(format!("http://{}/health", windi.relay))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await
        .unwrap_or_default();
    let counters = format!(
        "relay counters over the run: {} delivered live, {} gaps, {} changes backfilled from \
         Postgres, {} slow consumers",
        health["delivered"], health["gaps"], health["backfilled"], health["slow_consumers"]
    );
    eprintln!("  {counters}");
    drop(windi_sockets);
    drop(bare_sockets);
    bare.stop();
    windi.stop().await;

    let bare_name = "bare axum broadcaster (tokio broadcast, no auth/DB/NATS)";
    Ok(vec![
        Figure::new(
            "fanout",
            format!("deliveries/s, burst of {burst} msgs to a group of {members}, all connected"),
            "deliveries/s",
            &w_rate,
        )
        .against(bare_name, &b_rate)
        .target(Target::RatioAtLeast(0.5))
        .note(format!(
            "{BURST_SENDERS} concurrent HTTP senders (closed loop) on both sides; counted until \
             every socket had every message; windi also sends a read frame per message; {counters}"
        )),
        Figure::new(
            "fanout",
            format!("p50 delivery at {rate} msg/s, group of {members}"),
            "ms",
            &w_p50,
        )
        .against(bare_name, &b_p50),
        Figure::new(
            "fanout",
            format!("p99 delivery at {rate} msg/s, group of {members}"),
            "ms",
            &w_p99,
        )
        .against(bare_name, &b_p99)
        .target(Target::AtMost(100.0))
        .note(format!(
            "open loop, {seconds} s per repetition, every message × member, timed from the \
             scheduled send; the bench's {} client sockets share the 2 cores",
            2 * members
        )),
    ])
}

/// Starts a reader on every socket.
fn readers(sockets: Vec<Ws>, measure: bool) -> (Vec<Reader>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let readers = sockets
        .into_iter()
        .map(|ws| Reader::spawn(ws, "fan-", measure, count.clone()))
        .collect();
    (readers, count)
}

async fn collect(readers: Vec<Reader>) -> anyhow::Result<(Vec<Ws>, Vec<(u32, Instant)>)> {
    let mut sockets = Vec::with_capacity(readers.len());
    let mut seen = Vec::new();
    for reader in readers {
        let (ws, s) = reader.stop().await;
        sockets.push(ws.context("a socket was closed during the measurement")?);
        seen.extend(s);
    }
    Ok((sockets, seen))
}

/// `burst` sends by [`BURST_SENDERS`] closed-loop senders; deliveries per second until every
/// socket has every message.
async fn throughput(
    sockets: Vec<Ws>,
    side: &Side,
    burst: usize,
    base: u32,
) -> anyhow::Result<(Vec<Ws>, f64)> {
    let expected = burst * sockets.len();
    let (readers, count) = readers(sockets, false);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..BURST_SENDERS {
        let (side, next) = (side.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= burst {
                    return Ok::<_, anyhow::Error>(());
                }
                side.send(&format!("fan-{}", base + i as u32)).await?;
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let sent = started.elapsed().as_secs_f64();
    let complete = wait_count(&count, expected, Duration::from_secs(60)).await;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("    burst: {burst} sends done in {sent:.2} s, all delivered in {elapsed:.2} s");
    let got = count.load(Ordering::Relaxed);
    let (sockets, _) = collect(readers).await?;
    if !complete {
        bail!("only {got} of {expected} deliveries within 60 s");
    }
    Ok((sockets, expected as f64 / elapsed))
}

/// Open-loop sends at `rate` for `seconds`; p50 and p99 in ms over every delivery, timed
/// from each send's scheduled time.
async fn latency(
    sockets: Vec<Ws>,
    side: &Side,
    rate: u32,
    seconds: u64,
    base: u32,
) -> anyhow::Result<(Vec<Ws>, (f64, f64))> {
    let total = (u64::from(rate) * seconds) as usize;
    let expected = total * sockets.len();
    let (readers, count) = readers(sockets, true);
    let t0 = Instant::now() + Duration::from_millis(200);
    let schedule: Vec<Instant> = (0..total)
        .map(|i| t0 + Duration::from_secs_f64(i as f64 / f64::from(rate)))
        .collect();
    let mut sends = Vec::with_capacity(total);
    for (i, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until((*at).into()).await;
        let side = side.clone();
        let key = format!("fan-{}", base + i as u32);
        sends.push(tokio::spawn(async move { side.send(&key).await }));
    }
    for send in sends {
        send.await??;
    }
    let complete = wait_count(&count, expected, Duration::from_secs(30)).await;
    let got = count.load(Ordering::Relaxed);
    let (sockets, seen) = collect(readers).await?;
    if !complete {
        bail!("only {got} of {expected} deliveries within 30 s");
    }
    let mut ms: Vec<f64> = seen
        .into_iter()
        .filter_map(|(n, at)| {
            let due = schedule.get(n.checked_sub(base)? as usize)?;
            Some(at.saturating_duration_since(*due).as_secs_f64() * 1000.0)
        })
        .collect();
    Ok((sockets, (quantile(&mut ms, 0.5), quantile(&mut ms, 0.99))))
}

/// The bare broadcaster, on a runtime and thread of its own (two workers, like a separate
/// server process on this machine), until [`Bare::stop`].
#[derive(Debug)]
struct Bare {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let (frames, _) = broadcast::channel::<Utf8Bytes>(4096);
                let app = Router::new()
                    .route("/ws", get(upgrade))
                    .route("/send", post(publish))
                    .with_state(frames);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Sockets still open would hold graceful shutdown; the thread ends with the process.
        drop(self.thread.take());
    }
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(frames): State<broadcast::Sender<Utf8Bytes>>,
) -> Response {
    let rx = frames.subscribe();
    ws.read_buffer_size(4096)
        .on_upgrade(move |socket| serve(socket, rx))
}

async fn publish(State(frames): State<broadcast::Sender<Utf8Bytes>>, body: String) {
    // Encoded once: every socket is written the same bytes.
    let _ = frames.send(Utf8Bytes::from(body));
}

/// Says `ready` (as the relay does, so the same client connects), then writes every
/// broadcast frame; a lagging socket skips what it missed.
async fn serve(mut socket: WebSocket, mut rx: broadcast::Receiver<Utf8Bytes>) {
    if socket
        .send(Message::Text(r#"{"type":"ready","user_id":0}"#.into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(frame) => {
                    if socket.send(Message::Text(frame)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
