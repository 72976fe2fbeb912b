//! What every scenario needs to measure the real thing: the binaries, a fresh database on the
//! shared Postgres, `windi serve` (and optionally a separate `ws-relay`) as child processes
//! with the benchmark's environment, HTTP and WebSocket clients, bulk users, and process RSS.
//!
//! The pieces a scenario uses, in order:
//!
//! ```ignore
//! let windi = Windi::start(ctx, "send", WindiOptions::default()).await?;  // fresh db, NATS on
//! let api = windi.api(ctx);
//! let users = bulk_users(&windi, &api, 1000, "send").await?;  // tokens minted, no argon2 per user
//! let chat = api.group(&users[0].token, "g", &[users[1].id]).await?;
//! let ws = Ws::connect(windi.relay, &users[1].token).await?;  // answers once `ready` arrives
//! let rss = rss_kib(windi.relay_pid())?;
//! windi.stop().await;  // SIGTERM, wait; the database is dropped with `windi`
//! ```
//!
//! Everything listens on 127.0.0.1 ports the OS hands out; every wait is bounded.

// A toolkit for every scenario: not each build of the scenarios uses every helper.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// The signing secret windi runs with in the benchmark (a fake: these databases are dropped).
pub const JWT_SECRET: &str = "bench-only-fake-secret-0123456789abcdef0123";
/// The password of every user the harness makes.
pub const PASSWORD: &str = "bench-password-1";

/// The raised per-user limits, set on every windi the bench starts: one bench user sends
/// thousands a second, and the benchmark measures the send path, not the limiter refusing it.
/// Printed in the run's header so nobody mistakes the figures for the defaults' behaviour.
pub const RAISED_LIMITS: &[(&str, &str)] = &[
    ("LIMIT_SENDS_PER_SEC", "1000000000"),
    ("LIMIT_SENDS_BURST", "1000000000"),
    ("LIMIT_GROUPS_PER_MIN", "1000000000"),
    ("LIMIT_GROUPS_BURST", "1000000000"),
    ("LIMIT_TYPING_PER_SEC", "1000000000"),
    ("LIMIT_TYPING_BURST", "1000000000"),
    ("LIMIT_SEARCHES_PER_SEC", "1000000000"),
    ("LIMIT_SEARCHES_BURST", "1000000000"),
];

/// The run's settings, shared by every scenario.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The CI smoke: tiny sizes, a few seconds per scenario.
    pub quick: bool,
    /// Interleaved repetitions per figure (A, B, A, B …).
    pub reps: usize,
    /// The workspace root (for `git`, `target/`).
    pub repo: PathBuf,
    pub windi_bin: PathBuf,
    pub relay_bin: PathBuf,
    /// Superuser URL of the shared Postgres, used to create and drop the benchmark databases.
    pub admin_url: String,
    pub nats_url: String,
    /// `connections`: how many idle sockets (`--sockets`).
    pub sockets: usize,
    /// `storm`: how many sockets reconnect at once (`--storm-sockets`).
    pub storm_sockets: usize,
    /// `windi` and `ws-relay` of an earlier revision (`PREVIOUS_WINDI_BIN`,
    /// `PREVIOUS_WS_RELAY_BIN`): `recovery` and `storm` run them as their baseline when set.
    pub previous: Option<(PathBuf, PathBuf)>,
    /// A client for setup calls (not the load generator).
    pub http: reqwest::Client,
}

impl Ctx {
    /// `quick` in a `--quick` run, else `full`.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    /// These settings with other binaries (an earlier revision's, as a baseline).
    pub fn with_binaries(&self, windi_bin: &Path, relay_bin: &Path) -> Self {
        Self {
            windi_bin: windi_bin.to_owned(),
            relay_bin: relay_bin.to_owned(),
            ..self.clone()
        }
    }
}

/// `PREVIOUS_WINDI_BIN` and `PREVIOUS_WS_RELAY_BIN`, both or neither (absolute paths).
pub fn previous_binaries() -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (
        std::env::var_os("PREVIOUS_WINDI_BIN"),
        std::env::var_os("PREVIOUS_WS_RELAY_BIN"),
    ) {
        (None, None) => Ok(None),
        (Some(windi), Some(relay)) => Ok(Some((
            std::path::absolute(windi)?,
            std::path::absolute(relay)?,
        ))),
        _ => bail!("set both PREVIOUS_WINDI_BIN and PREVIOUS_WS_RELAY_BIN, or neither"),
    }
}

/// Builds `windi` and `ws-relay` in release mode, unless `WINDI_BIN` (and `WS_RELAY_BIN`)
/// name binaries to use. Answers their paths.
pub fn binaries(repo: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    if let Some(windi) = std::env::var_os("WINDI_BIN") {
        let relay = std::env::var_os("WS_RELAY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("release/ws-relay"));
        // Absolute: the children run in the temporary directory.
        return Ok((std::path::absolute(windi)?, std::path::absolute(relay)?));
    }
    eprintln!("building windi and ws-relay (cargo build --release) …");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "windi",
            "-p",
            "windi-ws-relay",
        ])
        .current_dir(repo)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release -p windi -p windi-ws-relay failed");
    }
    Ok((
        target.join("release/windi"),
        target.join("release/ws-relay"),
    ))
}

/// A port the OS considers free on 127.0.0.1 now (released at once for the child to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `url` with its database name replaced by `name` and TLS off: both windi and the
/// baselines talk to Postgres over plain TCP on loopback (TLS there costs ~15%, and the
/// shared server has `ssl=on`, which libpq and sqlx would otherwise negotiate).
pub fn database_url(admin_url: &str, name: &str) -> String {
    let without_query = admin_url.split('?').next().unwrap_or(admin_url);
    let base = without_query
        .rsplit_once('/')
        .map_or(without_query, |(b, _)| b);
    format!("{base}/{name}?sslmode=disable")
}

/// A database of its own on the shared Postgres, dropped (`WITH (FORCE)`) when this is.
#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    /// Plain-TCP URL of the database (see [`database_url`]).
    pub url: String,
    admin_url: String,
}

impl BenchDb {
    /// `CREATE DATABASE windi_bench_<scenario>_<pid>_<n>`.
    pub async fn create(ctx: &Ctx, scenario: &str) -> anyhow::Result<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "windi_bench_{scenario}_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_pool(&ctx.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await;
        Ok(Self {
            url: database_url(&ctx.admin_url, &name),
            name,
            admin_url: ctx.admin_url.clone(),
        })
    }

    /// A pool on the database (for setup queries and checks, not the measured path).
    pub async fn pool(&self, max: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await?)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        // Synchronous on purpose, so it also runs when a scenario fails half-way.
        let dropped = Command::new("psql")
            .arg(self.admin_url.split('?').next().unwrap_or(&self.admin_url))
            .args([
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .status();
        if !matches!(dropped, Ok(s) if s.success()) {
            eprintln!("warning: could not drop database {}", self.name);
        }
    }
}

async fn admin_pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot reach Postgres at {url} (BENCH_ADMIN_URL)"))
}

/// Where the WebSocket relay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Inside `windi serve` (the default: one process, as `windi` runs locally).
    Embedded,
    /// A separate `ws-relay` process next to `windi serve` with `WINDI_RELAY=off`, fed by
    /// NATS (so it can be restarted, and its RSS is the relay's alone).
    Separate,
    /// No relay at all (`WINDI_RELAY=off`, no `ws-relay`).
    Off,
}

/// How to start windi.
#[derive(Debug, Clone)]
pub struct WindiOptions {
    /// Events over NATS (`NATS_URL` and a unique `NATS_SUBJECT_PREFIX`); off keeps them in
    /// the process. [`RelayMode::Separate`] needs it.
    pub nats: bool,
    pub relay: RelayMode,
    /// Extra environment for both processes (e.g. `DB_MAX_CONNECTIONS`), set after the
    /// defaults so it can override them.
    pub env: Vec<(String, String)>,
}

impl Default for WindiOptions {
    fn default() -> Self {
        Self {
            nats: true,
            relay: RelayMode::Embedded,
            env: Vec::new(),
        }
    }
}

impl WindiOptions {
    /// The API alone: events in-process, no relay (the HTTP-only scenarios).
    pub fn api_only() -> Self {
        Self {
            nats: false,
            relay: RelayMode::Off,
            ..Self::default()
        }
    }

    pub fn env(mut self, var: &str, value: impl ToString) -> Self {
        self.env.push((var.to_owned(), value.to_string()));
        self
    }
}

/// A running windi: `windi serve` on a fresh database, and `ws-relay` when separate. Dropping
/// it kills the processes (use [`Windi::stop`] for a clean stop) and then drops the database.
#[derive(Debug)]
pub struct Windi {
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// Where WebSocket clients connect (`ws://<relay>/ws`); meaningless with [`RelayMode::Off`].
    pub relay: SocketAddr,
    pub nats_prefix: String,
    nats_url: String,
    options: WindiOptions,
    env: Vec<(String, String)>,
    windi_bin: PathBuf,
    relay_bin: PathBuf,
    api: Child,
    relay_child: Option<Child>,
    /// Always `Some` until [`Windi::stop`] hands it out; dropped after the processes are
    /// gone (see `Drop`).
    db: Option<BenchDb>,
}

impl Windi {
    /// Creates the database and starts `windi serve` (which migrates it), and `ws-relay` for
    /// [`RelayMode::Separate`]; answers once `/health` of each answers (30 s at most).
    pub async fn start(ctx: &Ctx, scenario: &str, options: WindiOptions) -> anyhow::Result<Self> {
        let db = BenchDb::create(ctx, scenario).await?;
        Self::start_on(ctx, db, options).await
    }

    /// [`Windi::start`] on an existing database (e.g. one filled beforehand, or to restart
    /// windi between repetitions on the same data).
    pub async fn start_on(ctx: &Ctx, db: BenchDb, options: WindiOptions) -> anyhow::Result<Self> {
        let port = free_port()?;
        let relay_port = free_port()?;
        let nats_prefix = format!("bench{}x{}", std::process::id(), port);
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("PORT".into(), port.to_string()),
            ("RELAY_PORT".into(), relay_port.to_string()),
            ("JWT_SECRET_KEY".into(), JWT_SECRET.into()),
            ("RUST_LOG".into(), "warn".into()),
            ("NATS_SUBJECT_PREFIX".into(), nats_prefix.clone()),
        ];
        env.extend(
            RAISED_LIMITS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        if options.nats {
            env.push(("NATS_URL".into(), ctx.nats_url.clone()));
        } else if options.relay == RelayMode::Separate {
            bail!("a separate ws-relay needs NATS");
        }
        if options.relay != RelayMode::Embedded {
            env.push(("WINDI_RELAY".into(), "off".into()));
        }
        env.extend(options.env.iter().cloned());

        let api = spawn(&ctx.windi_bin, &["serve"], &env)?;
        let mut windi = Self {
            api_url: format!("http://127.0.0.1:{port}"),
            relay: SocketAddr::from(([127, 0, 0, 1], relay_port)),
            nats_prefix,
            nats_url: ctx.nats_url.clone(),
            options,
            env,
            windi_bin: ctx.windi_bin.clone(),
            relay_bin: ctx.relay_bin.clone(),
            api,
            relay_child: None,
            db: Some(db),
        };
        wait_healthy(
            &ctx.http,
            &format!("{}/health", windi.api_url),
            &mut windi.api,
        )
        .await?;
        if windi.options.relay == RelayMode::Separate {
            windi.start_relay(ctx).await?;
        }
        Ok(windi)
    }

    /// Starts the separate relay (after [`Windi::stop_relay`]); answers when its `/health`
    /// answers.
    pub async fn start_relay(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut child = spawn(&self.relay_bin, &[], &self.env)?;
        let url = format!("http://{}/health", self.relay);
        let healthy = wait_healthy(&ctx.http, &url, &mut child).await;
        self.relay_child = Some(child);
        healthy
    }

    /// A client of this windi's HTTP API.
    pub fn api(&self, ctx: &Ctx) -> Api {
        Api {
            base: self.api_url.clone(),
            http: ctx.http.clone(),
        }
    }

    pub fn api_pid(&self) -> u32 {
        self.api.id()
    }

    /// The process that serves WebSockets: `ws-relay` when separate, else `windi serve`.
    pub fn relay_pid(&self) -> u32 {
        self.relay_child.as_ref().map_or(self.api.id(), Child::id)
    }

    /// Stops the separate relay with SIGTERM (clients get close 1012) and waits for its exit;
    /// [`Windi::start_relay`] starts it again on the same port.
    pub async fn stop_relay(&mut self) -> anyhow::Result<()> {
        let child = self
            .relay_child
            .take()
            .context("no separate relay to stop")?;
        terminate(child).await;
        Ok(())
    }

    /// Stops the relay with SIGTERM (clients get close 1012) and starts it again on the same
    /// port; answers when its `/health` answers. For [`RelayMode::Embedded`] this restarts
    /// the whole `windi serve`.
    pub async fn restart_relay(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        match self.relay_child.take() {
            Some(child) => {
                terminate(child).await;
                self.start_relay(ctx).await
            }
            None => {
                let fresh = spawn(&ctx.windi_bin, &["serve"], &self.env)?;
                let old = std::mem::replace(&mut self.api, fresh);
                terminate(old).await;
                // The old one held the port until it exited; the new one may have failed to
                // bind meanwhile, so start it again if it did.
                if self.api.try_wait()?.is_some() {
                    self.api = spawn(&ctx.windi_bin, &["serve"], &self.env)?;
                }
                let url = format!("{}/health", self.api_url);
                wait_healthy(&ctx.http, &url, &mut self.api).await
            }
        }
    }

    /// SIGTERM to each process, then wait (10 s at most each, then SIGKILL). Answers the
    /// database, still there, for a restart on the same data ([`Windi::start_on`]).
    pub async fn stop(mut self) -> BenchDb {
        if let Some(relay) = self.relay_child.take() {
            terminate(relay).await;
        }
        let api = std::mem::replace(&mut self.api, placeholder_child());
        terminate(api).await;
        if self.options.nats {
            delete_stream(&self.nats_url, &self.nats_prefix).await;
        }
        self.db.take().expect("the database is there until stop")
    }

    /// The database this windi serves.
    pub fn db(&self) -> &BenchDb {
        self.db.as_ref().expect("the database is there until stop")
    }

    /// A second `windi serve` (the same binary) on this windi's database that publishes no
    /// event anywhere (NATS off, no relay): what it commits reaches the relay only through
    /// Postgres, like a change whose event was lost.
    pub async fn silent_twin(&self, ctx: &Ctx) -> anyhow::Result<Twin> {
        let port = free_port()?;
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "NATS_URL" | "PORT" | "RELAY_PORT" | "WINDI_RELAY"
                )
            })
            .cloned()
            .collect();
        env.extend([
            ("PORT".into(), port.to_string()),
            ("RELAY_PORT".into(), free_port()?.to_string()),
            ("WINDI_RELAY".into(), "off".into()),
        ]);
        let mut child = spawn(&self.windi_bin, &["serve"], &env)?;
        let api_url = format!("http://127.0.0.1:{port}");
        let healthy = wait_healthy(&ctx.http, &format!("{api_url}/health"), &mut child).await;
        let twin = Twin { api_url, child };
        healthy.map(|()| twin)
    }

    /// The relay's `/health` counters (JSON; a counter an older relay lacks is absent).
    pub async fn relay_health(&self, ctx: &Ctx) -> anyhow::Result<Value> {
        let url = format!("http://{}/health", self.relay);
        let response = ctx.http.get(&url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }
}

/// A `windi serve` whose events go nowhere ([`Windi::silent_twin`]); killed when dropped.
#[derive(Debug)]
pub struct Twin {
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    child: Child,
}

impl Twin {
    /// A client of this process's HTTP API.
    pub fn api(&self, ctx: &Ctx) -> Api {
        Api {
            base: self.api_url.clone(),
            http: ctx.http.clone(),
        }
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Windi {
    fn drop(&mut self) {
        for child in self.relay_child.iter_mut().chain([&mut self.api]) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Now that nothing is connected to it.
        drop(self.db.take());
    }
}

/// Deletes the JetStream stream windi made for this prefix (best effort: it would otherwise
/// keep a run's events on the shared NATS for a day).
async fn delete_stream(url: &str, prefix: &str) {
    let name = windi_shared::events::stream_name(prefix);
    let deleted = tokio::time::timeout(Duration::from_secs(5), async {
        let client = async_nats::connect(url).await.ok()?;
        async_nats::jetstream::new(client)
            .delete_stream(&name)
            .await
            .ok()
    })
    .await;
    if !matches!(deleted, Ok(Some(_))) {
        eprintln!("note: could not delete the JetStream stream {name}");
    }
}

/// A child that has already exited, to stand in for one moved out of a [`Windi`].
fn placeholder_child() -> Child {
    let mut child = Command::new("true")
        .stdout(Stdio::null())
        .spawn()
        .expect("`true` runs");
    let _ = child.wait();
    child
}

fn spawn(bin: &Path, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        // Away from the repository, so no `.env` there is read: the environment is all of it.
        .current_dir(std::env::temp_dir())
        .env_remove("NATS_URL")
        .env_remove("WINDI_RELAY")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// SIGTERM, then up to 10 s for the exit, then SIGKILL.
async fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn wait_healthy(http: &reqwest::Client, url: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("the process behind {url} exited with {status} (run it by hand to see why)");
        }
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer within 30 s")
}

/// A user with a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub token: String,
}

/// The HTTP API of one windi, for setup and checks.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
}

/// Where [`Api::send`] sends.
#[derive(Debug, Clone, Copy)]
pub enum To {
    Chat(i64),
    /// The private chat with this user (created by the first message).
    User(i64),
}

impl Api {
    /// `POST /auth/register` then `POST /auth/login` (two argon2 hashes: ~40 ms of CPU; use
    /// [`bulk_users`] for more than a few dozen).
    pub async fn user(&self, email: &str) -> anyhow::Result<User> {
        let body = self
            .json(self.http.post(format!("{}/auth/register", self.base)).json(
                &json!({"name": email.split('@').next(), "email": email, "password": PASSWORD}),
            ))
            .await?;
        let id = body["id"].as_i64().context("register answered no id")?;
        let token = self.login(email, PASSWORD).await?;
        Ok(User {
            id,
            email: email.to_owned(),
            token,
        })
    }

    /// `POST /auth/login`: a new session's access token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = self
            .json(
                self.http
                    .post(format!("{}/auth/login", self.base))
                    .form(&[("username", email), ("password", password)]),
            )
            .await?;
        Ok(body["access_token"]
            .as_str()
            .context("login answered no access_token")?
            .to_owned())
    }

    /// `POST /chat/message`; answers the `MessageOut`.
    pub async fn send(
        &self,
        token: &str,
        to: To,
        text: &str,
        dedup_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut body = json!({"text": text});
        match to {
            To::Chat(id) => body["chat_id"] = id.into(),
            To::User(id) => body["recipient_id"] = id.into(),
        }
        if let Some(key) = dedup_key {
            body["dedup_key"] = key.into();
        }
        self.post(token, "/chat/message", &body).await
    }

    /// `POST /chat/group` with `members` (up to 999 besides the owner); answers its chat id.
    pub async fn group(&self, token: &str, name: &str, members: &[i64]) -> anyhow::Result<i64> {
        let body = self
            .post(
                token,
                "/chat/group",
                &json!({"name": name, "participant_ids": members}),
            )
            .await?;
        body["chat_id"]
            .as_i64()
            .context("group answered no chat_id")
    }

    /// An authenticated POST of JSON; a non-2xx answer is an error naming the status and body.
    pub async fn post(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// An authenticated GET; a non-2xx answer is an error naming the status and body.
    pub async fn get(&self, token: &str, path: &str) -> anyhow::Result<Value> {
        self.json(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.timeout(Duration::from_secs(30)).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }
}

/// `n` users with live sessions, fast: one user is registered over HTTP (for a real argon2
/// hash of [`PASSWORD`], so the others can log in too), the rest are inserted with that hash
/// in one statement, each gets a session row, and their access tokens are signed with the
/// benchmark's secret exactly as a login would sign them. Emails are
/// `bench-<tag>-<i>@example.com`, i from 1.
pub async fn bulk_users(
    windi: &Windi,
    api: &Api,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<User>> {
    let seed = api.user(&format!("bench-{tag}-seed@example.com")).await?;
    let db = windi.db().pool(2).await?;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(seed.id)
        .fetch_one(&db)
        .await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO users (name, email, password_hash)
         SELECT 'Bench ' || i, 'bench-' || $1 || '-' || i || '@example.com', $2
         FROM generate_series(1, $3::bigint) i
         RETURNING id, email",
    )
    .bind(tag)
    .bind(&hash)
    .bind(n as i64)
    .fetch_all(&db)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let sessions: Vec<(i64, i64)> = sqlx::query_as(
        "INSERT INTO sessions (user_id, user_agent, refresh_hash, refresh_expires_at)
         SELECT u, 'windi-bench', sha256(convert_to('bench-refresh-' || $2 || '-' || u, 'UTF8')),
                now() + interval '30 days'
         FROM unnest($1::bigint[]) u
         RETURNING user_id, id",
    )
    .bind(&ids)
    .bind(tag)
    .fetch_all(&db)
    .await?;
    db.close().await;
    let session_of: std::collections::HashMap<i64, i64> = sessions.into_iter().collect();
    let tokens = token_signer()?;
    let mut users = Vec::with_capacity(n);
    for (id, email) in rows {
        let sid = *session_of.get(&id).context("a user without a session")?;
        let token = tokens.issue(id, sid)?.token;
        users.push(User { id, email, token });
    }
    users.sort_by_key(|u| u.id);
    Ok(users)
}

/// The token signer windi uses, with the benchmark's secret and a 12-hour lifetime (longer
/// than any run, so no token expires mid-measurement).
fn token_signer() -> anyhow::Result<windi_shared::service::auth::Tokens> {
    let config = windi_shared::config::JwtConfig::new(
        JWT_SECRET.as_bytes().to_vec(),
        jsonwebtoken::Algorithm::HS256,
        Duration::from_secs(12 * 3600),
    )?;
    Ok(windi_shared::service::auth::Tokens::new(&config))
}

type WsStream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of the relay with small buffers (4 KiB read, like the relay's own), so
/// thousands of them fit in the benchmark process.
#[derive(Debug)]
pub struct Ws {
    pub stream: WsStream,
}

impl Ws {
    /// Connects with `?token=` and waits (10 s at most) for the `ready` frame.
    pub async fn connect(relay: SocketAddr, token: &str) -> anyhow::Result<Self> {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let url = format!("ws://{relay}/ws?token={token}");
        let (stream, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async_with_config(url, Some(config), true),
        )
        .await
        .context("connect timed out")??;
        let mut ws = Self { stream };
        match ws.next_json(Duration::from_secs(10)).await? {
            Some(frame) if frame["type"] == "ready" => Ok(ws),
            other => bail!("expected ready, got {other:?}"),
        }
    }

    pub async fn send_json(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.send_text(&frame.to_string()).await
    }

    /// Sends a text frame already encoded (e.g. one `resume` frame per user, built once).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream
            .send(Message::text(text))
            .await
            .map_err(Into::into)
    }

    /// The next text frame as JSON; `None` if nothing came within `wait`. A close or the end
    /// of the stream is an error.
    pub async fn next_json(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match next {
                Err(_) => return Ok(None),
                Ok(None) => bail!("the relay ended the connection"),
                Ok(Some(message)) => match message? {
                    Message::Text(text) => return Ok(Some(serde_json::from_str(&text)?)),
                    Message::Close(frame) => bail!("closed: {frame:?}"),
                    _ => continue,
                },
            }
        }
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Runs a blocking command (a load generator or pgbench) off the async threads; answers its
/// stdout, or an error with its stderr when it fails.
pub async fn run_tool(mut cmd: Command) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Raises this process's open-file soft limit to its hard limit (with `prlimit`, since the
/// workspace forbids the `unsafe` a direct `setrlimit` needs); children started afterwards
/// inherit it. Answers the soft limit now in force.
pub fn raise_open_files() -> anyhow::Result<u64> {
    let pid = std::process::id().to_string();
    let hard = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--output=HARD", "--noheadings"])
        .output()?;
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    let soft = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--output=SOFT", "--noheadings"])
        .output()?;
    String::from_utf8_lossy(&soft.stdout)
        .trim()
        .parse()
        .context("cannot read the open-file limit (prlimit)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_frames_are_new_messages_with_the_prefix() {
        let frame = r#"{"type":"message","chat_id":1,"message":{"dedup_key":"lat-42","text":"x"}}"#;
        assert_eq!(marked(frame, "lat-"), Some(42));
        assert_eq!(marked(frame, "fan-"), None);
        let read = r#"{"type":"message_updated","message":{"dedup_key":"lat-42"}}"#;
        assert_eq!(marked(read, "lat-"), None);
    }

    #[test]
    fn database_urls_name_the_database_and_turn_tls_off() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://u:p@h/postgres?sslmode=require", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
    }
}

/// Opens one relay socket per token, at most `at_once` connecting at a time, each past
/// `ready`; fails on the first socket that cannot.
pub async fn connect_many(
    relay: SocketAddr,
    tokens: &[String],
    at_once: usize,
) -> anyhow::Result<Vec<Ws>> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut tasks = Vec::with_capacity(tokens.len());
    for token in tokens {
        let gate = gate.clone();
        let token = token.clone();
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

/// The number in a frame's `"dedup_key":"<prefix><n>"`, for a new-message frame
/// (`"type":"message",`) only. Found by substring, not by parsing the JSON, so that reading
/// tens of thousands of frames a second costs the benchmark's own client little CPU (the
/// same code reads windi's and the baselines' frames).
pub fn marked(frame: &str, prefix: &str) -> Option<u32> {
    if !frame.contains("\"type\":\"message\",") {
        return None;
    }
    let key = format!("\"dedup_key\":\"{prefix}");
    let start = frame.find(&key)? + key.len();
    let digits = frame[start..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// What a [`Reader`] answers when stopped: its socket (`None` if it was closed meanwhile)
/// and the numbers of the marked frames it saw, with their arrival times.
pub type ReadOutcome = (Option<Ws>, Vec<(u32, Instant)>);

/// A socket being read by a task of its own: it answers pings (tungstenite does on read) and
/// notes when each marked frame arrived, until [`Reader::stop`].
#[derive(Debug)]
pub struct Reader {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<ReadOutcome>,
}

impl Reader {
    /// Starts reading `ws`, noting frames marked `prefix` (see [`marked`]) when `measure`,
    /// and counting them in `count` either way.
    pub fn spawn(
        mut ws: Ws,
        prefix: &'static str,
        measure: bool,
        count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => return (Some(ws), seen),
                    next = ws.stream.next() => match next {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(n) = marked(&text, prefix) {
                                let at = Instant::now();
                                count.fetch_add(1, Ordering::Relaxed);
                                if measure {
                                    seen.push((n, at));
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return (None, seen),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
        Self { stop, task }
    }

    /// Stops reading; answers the socket (`None` if it was closed meanwhile) and the marked
    /// frames' numbers with their arrival times.
    pub async fn stop(self) -> ReadOutcome {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or((None, Vec::new()))
    }
}

/// Waits until `count` reaches `expected` or `wait` passes; answers whether it did.
pub async fn wait_count(
    count: &std::sync::atomic::AtomicUsize,
    expected: usize,
    wait: Duration,
) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if count.load(Ordering::Relaxed) >= expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    count.load(Ordering::Relaxed) >= expected
}

/// Opens the private chat of users 2k and 2k+1 for every k (one first message each, from 2k,
/// in order); answers the chat ids, chat k at index k.
/// Puts `users` in groups of `size`, in order, the first of each its owner; answers each
/// group's chat id and its owner's token.
pub async fn groups_of(
    api: &Api,
    users: &[User],
    size: usize,
    name: &str,
) -> anyhow::Result<Vec<(i64, String)>> {
    let mut groups = Vec::with_capacity(users.len().div_ceil(size));
    for (g, members) in users.chunks(size).enumerate() {
        let others: Vec<i64> = members[1..].iter().map(|u| u.id).collect();
        let chat = api
            .group(&members[0].token, &format!("{name} {g}"), &others)
            .await?;
        groups.push((chat, members[0].token.clone()));
    }
    Ok(groups)
}

pub async fn private_chats(api: &Api, users: &[User]) -> anyhow::Result<Vec<i64>> {
    let mut chats = Vec::with_capacity(users.len() / 2);
    for (k, pair) in users.chunks_exact(2).enumerate() {
        let m = api
            .send(
                &pair[0].token,
                To::User(pair[1].id),
                "hello",
                Some(&format!("open-{k}")),
            )
            .await?;
        chats.push(
            m["chat_id"]
                .as_i64()
                .context("a send answered no chat_id")?,
        );
    }
    Ok(chats)
}

/// A frame shaped and sized like the relay's `message` frame for a benchmark message, marked
/// with `dedup_key` (for baselines that must carry what windi carries).
pub fn message_frame(dedup_key: &str, text: &str) -> String {
    // Written out (not `json!`, which sorts keys) so `type` comes first, as in the relay's.
    format!(
        r#"{{"type":"message","chat_id":1234,"seq":5678,"rev":5678,"message":{{"id":123456,"chat_id":1234,"seq":5678,"sender_id":4321,"text":{},"timestamp":"2026-12-02T04:00:00.123456Z","read":false,"dedup_key":"{dedup_key}","rev":5678,"edited_at":null,"deleted":false,"reply_to":null,"reactions":[]}}}}"#,
        Value::from(text)
    )
}
