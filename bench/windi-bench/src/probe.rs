//! Load generators shared by the data scenarios (`history`, `chatlist`, `login`): one client
//! timing sequential requests (latency percentiles), `wrk` for throughput, `windi generate`
//! and `windi check` on a benchmark database, and a small PRNG for reproducible positions.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::harness::{BenchDb, Ctx, JWT_SECRET, run_tool};

/// The generator's deterministic PRNG (splitmix64), so every run asks for the same pages.
pub use windi::generate::Rng;

/// Latencies (ms) of up to `count` sequential authenticated GETs, one at a time on one
/// keep-alive connection, stopping early after `budget`. `path` picks each request's path.
/// Any non-2xx answer is an error: a refused request must not pass for a fast one.
pub async fn latencies(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
    budget: Duration,
    mut path: impl FnMut() -> String,
) -> anyhow::Result<Vec<f64>> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if started.elapsed() > budget {
            break;
        }
        let url = format!("{base}{}", path());
        let sent = Instant::now();
        let response = http
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
    }
    anyhow::ensure!(!out.is_empty(), "no request finished within {budget:?}");
    Ok(out)
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub requests_per_sec: f64,
}

/// `wrk -t<threads> -c<connections> -d<seconds>s [-s script] [-H header] url`; fails on any
/// non-2xx answer or socket error, so a refused request never counts as throughput.
pub async fn wrk(
    threads: usize,
    connections: usize,
    seconds: u64,
    script: Option<&Path>,
    header: Option<&str>,
    url: &str,
) -> anyhow::Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("30s");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    if let Some(header) = header {
        cmd.arg("-H").arg(header);
    }
    cmd.arg(url);
    let out = run_tool(cmd).await.context("wrk (apt-get install wrk)")?;
    if let Some(line) = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk against {url}: {line}\n{out}");
    }
    let requests_per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    Ok(WrkRun { requests_per_sec })
}

/// `windi generate` (after migrating) on `db` with these arguments; answers its stdout.
pub async fn generate(ctx: &Ctx, db: &BenchDb, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = windi_command(ctx, db);
    cmd.arg("generate").args(args);
    run_tool(cmd).await
}

/// `windi check` on `db`: an error naming the broken invariants if any is broken.
pub async fn check(ctx: &Ctx, db: &BenchDb) -> anyhow::Result<()> {
    let mut cmd = windi_command(ctx, db);
    cmd.arg("check");
    run_tool(cmd).await.map(drop).context("windi check")
}

fn windi_command(ctx: &Ctx, db: &BenchDb) -> Command {
    let mut cmd = Command::new(&ctx.windi_bin);
    cmd.current_dir(std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET_KEY", JWT_SECRET)
        .env("RUST_LOG", "warn");
    cmd
}

/// p50 and p99 of each of a list of latency sets.
pub fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    let p50 = crate::report::quantile(&mut samples, 0.5);
    let p99 = crate::report::quantile(&mut samples, 0.99);
    (p50, p99)
}
