//! `windi-bench`: how close windi runs to what this machine allows, as ratios against
//! baselines measured in the same run (issue 11).
//!
//! ```text
//! cargo run --release -p windi-bench -- <scenario>... [--quick] [--reps N] [--out FILE]
//! ```
//!
//! Each scenario starts what it needs (`windi serve` as a child process on a fresh database of
//! the shared Postgres, NATS, baselines), runs windi and its baseline interleaved (A, B, A, B …)
//! `--reps` times, and answers [`report::Figure`]s; the run prints them as a table and writes
//! JSON to `target/bench/<unix-time>.json` and `target/bench/latest.json` (or `--out`).
//!
//! # Adding a scenario
//!
//! A scenario is a module with
//!
//! ```ignore
//! pub async fn run(ctx: &harness::Ctx) -> anyhow::Result<Vec<report::Figure>>
//! ```
//!
//! listed in [`SCENARIOS`] and in the `match` of [`run_scenario`]. It sizes itself with
//! `ctx.pick(quick, full)`, repeats `ctx.reps` times interleaving windi with its baseline, and
//! builds figures with `Figure::new(..).against(..).target(..).note(..)` (one sample per
//! repetition; ratios are taken per repetition). The harness ([`harness`]) starts windi
//! (`Windi::start`), makes users (`bulk_users`), talks HTTP (`Api`) and WebSocket (`Ws`), and
//! reads RSS (`rss_kib`). Every loop must be bounded in count and time, and `--quick` must
//! finish in a few seconds.

mod connections;
mod fanout;
mod harness;
mod latency;
mod probe;
mod report;
mod send;

mod capacity;
mod chatlist;
mod history;
mod login;
mod read_flag;
mod search;
mod upload;

mod pg_activity;
mod presence;
mod recovery;
mod storm;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;

use crate::{
    harness::Ctx,
    report::{Figure, Report},
};

/// Every scenario, in the order `all` runs them.
const SCENARIOS: &[&str] = &[
    "send",
    "latency",
    "fanout",
    "connections",
    "history",
    "read-flag",
    "search",
    "chatlist",
    "login",
    "upload",
    "recovery",
    "storm",
    "presence",
    "capacity",
];

/// Benchmarks of windi against same-run baselines; prints a table and writes JSON.
///
/// Needs the shared Postgres (BENCH_ADMIN_URL, default postgres://postgres@127.0.0.1:5432/postgres),
/// NATS (NATS_URL, default nats://127.0.0.1:4222), and `wrk` and `pgbench` on PATH. Builds
/// windi in release mode unless WINDI_BIN (and WS_RELAY_BIN) are set. With PREVIOUS_WINDI_BIN
/// and PREVIOUS_WS_RELAY_BIN (an earlier revision's binaries), `recovery` and `storm` run them
/// as their baseline.
#[derive(Debug, Parser)]
#[command(name = "windi-bench")]
struct Cli {
    /// Scenarios to run: send, latency, fanout, connections, history, read-flag, search, chatlist,
    /// login, upload, recovery, storm, presence, capacity, or all.
    #[arg(required = true, value_parser = scenario_name)]
    scenarios: Vec<String>,
    /// The CI smoke: tiny sizes, a few seconds per scenario (figures are real but noisy).
    #[arg(long)]
    quick: bool,
    /// Interleaved repetitions of each figure.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    reps: u64,
    /// Write the JSON here instead of target/bench/<unix-time>.json and latest.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `connections`: idle authenticated sockets to open (200 with --quick unless given).
    #[arg(long)]
    sockets: Option<usize>,
    /// `storm`: sockets that reconnect at once after the relay restarts (200 with --quick
    /// unless given); an even multiple of 100. `presence`: the users connected, a multiple of
    /// 100.
    #[arg(long)]
    storm_sockets: Option<usize>,
}

fn scenario_name(raw: &str) -> Result<String, String> {
    if raw == "all" || SCENARIOS.contains(&raw) {
        Ok(raw.to_owned())
    } else {
        Err(format!("one of {}, or all", SCENARIOS.join(", ")))
    }
}

async fn run_scenario(name: &str, ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    match name {
        "send" => send::run(ctx).await,
        "latency" => latency::run(ctx).await,
        "fanout" => fanout::run(ctx).await,
        "connections" => connections::run(ctx).await,
        "history" => history::run(ctx).await,
        "read-flag" => read_flag::run(ctx).await,
        "search" => search::run(ctx).await,
        "chatlist" => chatlist::run(ctx).await,
        "login" => login::run(ctx).await,
        "upload" => upload::run(ctx).await,
        "recovery" => recovery::run(ctx).await,
        "storm" => storm::run(ctx).await,
        "presence" => presence::run(ctx).await,
        // capacity reads the figures measured before it; see the loop in `run`.
        "capacity" => capacity::run(ctx, &[]).await,
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    windi_shared::blobs::install_tls_provider();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("windi-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios; answers whether every one of them ran (a missed target is a figure,
/// not a failure).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let (windi_bin, relay_bin) = harness::binaries(&repo)?;
    let ctx = Ctx {
        quick: cli.quick,
        reps: cli.reps as usize,
        windi_bin,
        relay_bin,
        admin_url: std::env::var("BENCH_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        nats_url: std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        sockets: cli.sockets.unwrap_or(if cli.quick { 200 } else { 10_000 }),
        storm_sockets: cli
            .storm_sockets
            .unwrap_or(if cli.quick { 200 } else { 10_000 }),
        previous: harness::previous_binaries()?,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        repo,
    };
    let names: Vec<&str> = if cli.scenarios.iter().any(|s| s == "all") {
        SCENARIOS.to_vec()
    } else {
        cli.scenarios.iter().map(String::as_str).collect()
    };
    let mut report = Report::new(&ctx.repo, ctx.quick, ctx.reps);
    println!(
        "windi-bench {} on {} cores ({}), {} reps{}",
        report.git_revision,
        report.machine.cores,
        report.machine.cpu,
        ctx.reps,
        if ctx.quick { ", --quick" } else { "" }
    );
    println!(
        "note: the load generators run on the same {} cores as windi, Postgres and NATS, for \
         windi and its baselines alike; per-user rate limits are raised ({}).",
        report.machine.cores,
        harness::RAISED_LIMITS
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut all_ran = true;
    for name in names {
        let started = Instant::now();
        println!("\n== {name} ==");
        let ran = if name == "capacity" {
            capacity::run(&ctx, &report.figures).await
        } else {
            run_scenario(name, &ctx).await
        };
        match ran {
            Ok(figures) => {
                let mut part = Report::new(&ctx.repo, ctx.quick, ctx.reps);
                part.figures = figures;
                print!("{}", part.table());
                report.figures.extend(part.figures);
            }
            Err(e) => {
                all_ran = false;
                println!("{name} failed: {e:#}");
            }
        }
        println!("({name}: {:.0} s)", started.elapsed().as_secs_f64());
    }
    println!("\n== all figures ==\n{}", report.table());
    for path in report.write(&ctx.repo.join("target/bench"), cli.out.as_deref())? {
        println!("wrote {}", path.display());
    }
    Ok(all_ran)
}
