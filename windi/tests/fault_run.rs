//! The fault run: windi's delivery promise checked from the outside, under faults.
//!
//! One private Postgres cluster and one private `nats-server -js` on free loopback ports (never
//! the machine's own 5432 or 4222), and four `windi serve` processes on them: two used as the
//! APIs (A1, A2) and two as the relays (R1, R2), so "an API" and "a relay" can be killed apart.
//! Six users with two WebSocket devices each (real tokio-tungstenite clients over TCP) spread
//! over both relays; two groups and three private chats. Each user writes through both APIs:
//! sends (a failed one retried with the same `dedup_key` on the other API), edits, deletions and
//! reactions; the owner of one group removes a member and adds them back, three times (while
//! their devices are offline, while they are online, and while the relay they are on dies).
//! Meanwhile, at fixed fractions of the run: relay R1 is SIGKILLed and restarted, API A1 too,
//! NATS is paused (SIGSTOP/SIGCONT), then SIGKILLed and restarted, Postgres is stopped
//! (`pg_ctl stop -m fast`) and started again, relay R2 and API A2 are SIGKILLed and restarted.
//!
//! Each device keeps a model per chat, as a client must: it applies change frames in rev order,
//! keeps the highest rev it applied, and after every (re)connect sends
//! `{"type":"resume","revs":{chat: highest applied rev}}` for every chat it knows (also ones it
//! was removed from: the relay says whether it is back). At the end, with Postgres and the API
//! as the truth:
//! - no acknowledged (2xx) send is lost, none is stored twice, seqs and revs are gap-free;
//! - every device applied each chat's change log (`GET /chat/changes`, as a member) restricted
//!   to its user's membership intervals exactly once, in rev order, with each message as the
//!   log has it (an update superseded by a later change of the same message may be skipped,
//!   as the log itself skips it), and caught up within [`CATCH_UP_BOUND`] of the load's end;
//! - no HTTP 500 (nor any 5xx but 503) was ever answered; a 503 carried `Retry-After` and came
//!   only while Postgres was down or within [`PG_503_GRACE`] after it was back;
//! - `/ready` answers 200 on all four processes.
//!
//! A failure names the device (`u6.1` = the second device of user id 6), the chat, and the revs
//! expected and got; the processes' logs are kept in the temp folder it names.
//!
//! Knobs (environment):
//! - `FAULT_RUN_SECS`: length of the load phase, with every fault inside it (default 60; the
//!   whole test takes about 30 s more: start-up, catch-up, checks). The longer variant, for a
//!   soak before a release: `FAULT_RUN_SECS=600 cargo test -p windi --test fault_run --
//!   --nocapture` (the faults stay at the same fractions of the run, so they are further apart
//!   and more load falls between them).
//! - `FAULT_RUN_PACING_MS`: pause between two operations of one writer (default 150; six
//!   writers). Lower it for more load per fault.
//! - `FAULT_RUN_SEED`: the seed of the writers' choices (printed at the start of each run).
//!
//! It needs PostgreSQL's server binaries and `nats-server`, as the rest of the tests do
//! (`scripts/test.sh` installs them).

#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use windi_embedded::{nats, platform::free_port, postgres::Cluster};

/// Users, and the devices (WebSocket clients) each of them has.
const USERS: usize = 6;
const DEVICES_PER_USER: usize = 2;
/// The user the owner of group G1 removes and adds back.
const REJOINER: usize = 5;
/// After the load stops (the last fault is over by then), every device must have applied
/// every change of its chats within this. The relay's poller runs every second and backs off
/// up to 8 intervals after failures; catch-up retries back off up to 5 s.
const CATCH_UP_BOUND: Duration = Duration::from_secs(20);
/// How long after Postgres accepts connections again a 503 is still allowed: the 3 s pool wait
/// plus the 5 s request deadline of a request that began while it was down, and a margin.
const PG_503_GRACE: Duration = Duration::from_secs(10);
/// How long a killed process stays dead before it is restarted: long enough for its clients
/// to notice and move (a deliberate fault duration, not a synchronisation).
const DEAD_TIME: Duration = Duration::from_secs(2);
/// How long NATS stays paused, and Postgres stopped (fault durations).
const PAUSE_TIME: Duration = Duration::from_secs(3);
/// How long the re-joiner stays out of the group between removal and re-add, so changes fall
/// between the two (a fault duration).
const REMOVED_TIME: Duration = Duration::from_millis(1500);
/// A process must answer `/ready` within this after it is started.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// One HTTP attempt's client-side limit (the server's own deadline is 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A writer gives an operation up after retrying it this long.
const OP_GIVE_UP: Duration = Duration::from_secs(30);
/// The pause before an operation is retried on the other API.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How often a device looks at its controls (stop, go offline) while its socket is quiet.
const CONTROL_TICK: Duration = Duration::from_millis(200);
/// A device re-sends `resume` this long after the relay answered it with `unavailable`.
const RESUME_RETRY: Duration = Duration::from_millis(500);
/// A fake HMAC secret for the test's tokens (at least 32 bytes).
const JWT_SECRET: &str = "fault-run-test-secret-not-for-any-real-deployment";
const PASSWORD: &str = "fault-run-password";
/// 👍, percent-encoded for the reaction routes.
const THUMBS_UP: &str = "%F0%9F%91%8D";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// What happened, for the checks and the summary.

/// A 5xx answer (the 503 rule needs when it was asked and answered).
#[derive(Debug)]
struct ServerError {
    asked: Duration,
    answered: Duration,
    api: &'static str,
    what: String,
    status: u16,
    retry_after: bool,
}

#[derive(Debug)]
struct Recorder {
    t0: Instant,
    faults: Mutex<Vec<String>>,
    /// From `pg_ctl stop` to Postgres accepting connections again.
    pg_down: Mutex<Vec<(Duration, Duration)>>,
    server_errors: Mutex<Vec<ServerError>>,
    /// Things wrong that were seen during the run (unexpected answers).
    problems: Mutex<Vec<String>>,
    requests: AtomicU64,
    retries: AtomicU64,
    transport_errors: AtomicU64,
}

impl Recorder {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            faults: Mutex::default(),
            pg_down: Mutex::default(),
            server_errors: Mutex::default(),
            problems: Mutex::default(),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn fault(&self, what: String) {
        let line = format!("{:6.1} s  {what}", self.now().as_secs_f64());
        eprintln!("fault run: {line}");
        self.faults.lock().unwrap().push(line);
    }

    fn problem(&self, what: String) {
        eprintln!("fault run: PROBLEM: {what}");
        self.problems.lock().unwrap().push(what);
    }
}

// ---------------------------------------------------------------------------------------------
// The processes: Postgres, NATS, four windi. Everything is killed when this is dropped.

#[derive(Debug)]
struct Windi {
    name: &'static str,
    port: u16,
    relay_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

#[derive(Debug)]
struct Services {
    dir: PathBuf,
    cluster: Cluster,
    pg_options: String,
    database_url: String,
    nats_bin: PathBuf,
    nats_port: u16,
    nats: Option<Child>,
    windis: Vec<Windi>,
}

impl Services {
    /// Postgres and NATS, started and answering; no windi yet.
    fn start() -> Self {
        let nats_bin = nats::find_server()
            .unwrap_or_else(|| panic!("this test needs nats-server: {}", nats::install_hint()));
        let dir = std::env::temp_dir().join(format!("windi-fault-run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // The `postgres` user (as root) must enter it to reach its cluster.
        fs::set_permissions(
            &dir,
            <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        let cluster = Cluster::new(dir.join("pg")).unwrap_or_else(|e| panic!("{e}"));
        let pg_port = free_port().unwrap();
        let nats_port = free_port().unwrap();
        let mut services = Self {
            database_url: format!("postgres://postgres@127.0.0.1:{pg_port}/windi_fault"),
            pg_options: format!(
                "{} -c fsync=off -c max_connections=200",
                cluster.loopback_options(pg_port)
            ),
            cluster,
            nats_bin,
            nats_port,
            nats: None,
            windis: Vec::new(),
            dir,
        };
        services
            .cluster
            .init(false)
            .unwrap_or_else(|e| panic!("{e}"));
        services
            .cluster
            .start(&services.pg_options)
            .unwrap_or_else(|e| panic!("{e}"));
        services.spawn_nats();
        for name in ["A1", "A2", "R1", "R2"] {
            services.windis.push(Windi {
                name,
                port: free_port().unwrap(),
                relay_port: free_port().unwrap(),
                log: services.dir.join(format!("{name}.log")),
                child: None,
            });
        }
        services
    }

    fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    fn spawn_nats(&mut self) {
        let store = self.dir.join("jetstream");
        self.nats = Some(nats::spawn(&self.nats_bin, self.nats_port, &store).unwrap());
    }

    fn signal_nats(&self, signal: &str) {
        let pid = self.nats.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn kill_nats(&mut self) {
        if let Some(mut child) = self.nats.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn_windi(&mut self, i: usize) {
        let (url, nats_url) = (self.database_url.clone(), self.nats_url());
        let w = &mut self.windis[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_windi"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .env("NATS_URL", nats_url)
            .env("PORT", w.port.to_string())
            .env("RELAY_PORT", w.relay_port.to_string())
            .env("JWT_SECRET_KEY", JWT_SECRET)
            .env("RELAY_ALLOWED_ORIGINS", "*")
            .env("RELAY_MAX_CONNECTIONS_PER_USER", "16")
            .env("LIMIT_SENDS_PER_SEC", "1000")
            .env("LIMIT_SENDS_BURST", "1000")
            .env("LIMIT_GROUPS_PER_MIN", "1000")
            .env("LIMIT_GROUPS_BURST", "1000")
            .env("RUST_LOG", "info")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        w.child = Some(child);
    }

    fn kill_windi(&mut self, i: usize) {
        if let Some(mut child) = self.windis[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn windi_exited(&mut self, i: usize) -> Option<String> {
        let child = self.windis[i].child.as_mut()?;
        child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| format!("{} exited: {status}", self.windis[i].name))
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for i in 0..self.windis.len() {
            self.kill_windi(i);
        }
        self.kill_nats();
        if self.cluster.is_running() {
            let _ = self.cluster.stop("immediate");
        }
        if std::thread::panicking() {
            eprintln!(
                "fault run: the processes' logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until `url` answers 200, or panics naming what did not come up.
async fn wait_ok(http: &reqwest::Client, url: &str, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let answer = http.get(url).timeout(Duration::from_secs(3)).send().await;
        match answer {
            Ok(r) if r.status() == 200 => return,
            other if Instant::now() > deadline => {
                panic!("{what} did not answer 200 at {url} within {within:?}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + START_DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP side: every request goes to one API and, failing there, to the other.

#[derive(Debug)]
struct Api {
    http: reqwest::Client,
    bases: [(&'static str, String); 2],
    rec: Arc<Recorder>,
}

impl Api {
    /// The request on API `first` (0 = A1, 1 = A2); a connection failure, a timeout or a 5xx is
    /// retried on the other API, alternating, for up to [`OP_GIVE_UP`]. Answers the first
    /// other status and its body, or `None` if it never got one.
    async fn call(
        &self,
        first: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        let give_up = Instant::now() + OP_GIVE_UP;
        let mut api = first % 2;
        loop {
            let (name, base) = &self.bases[api];
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .timeout(REQUEST_TIMEOUT);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let asked = self.rec.now();
            self.rec.requests.fetch_add(1, Ordering::Relaxed);
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status < 500 {
                        return Some((status, body));
                    }
                    self.rec.server_errors.lock().unwrap().push(ServerError {
                        asked,
                        answered: self.rec.now(),
                        api: name,
                        what: format!("{method} {path}"),
                        status,
                        retry_after,
                    });
                }
                Err(_) => {
                    self.rec.transport_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if Instant::now() > give_up {
                return None;
            }
            self.rec.retries.fetch_add(1, Ordering::Relaxed);
            api = 1 - api;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// A call whose answer must be one of `ok`; anything else is a problem.
    #[allow(clippy::too_many_arguments)]
    async fn expect(
        &self,
        first: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        ok: &[u16],
        who: &str,
    ) -> Option<(u16, Value)> {
        let answer = self.call(first, method.clone(), path, token, body).await;
        match &answer {
            Some((status, _)) if ok.contains(status) => answer,
            Some((status, body)) => {
                self.rec
                    .problem(format!("{who}: {method} {path} answered {status}: {body}"));
                None
            }
            None => {
                self.rec.problem(format!(
                    "{who}: {method} {path} got no answer but 5xx or errors for {OP_GIVE_UP:?}"
                ));
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The devices: WebSocket clients with a model per chat.

#[derive(Debug, Clone, PartialEq)]
enum FrameKind {
    Message,
    Updated(String),
    /// Someone's join or leave, as a `member` frame.
    Member {
        user_id: i64,
        joined: bool,
    },
    /// "You joined": a `chat` frame.
    Chat,
    /// "You left": a `chat_removed` frame.
    ChatRemoved,
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message => write!(f, "message"),
            Self::Updated(change) => write!(f, "message_updated {change}"),
            Self::Member { user_id, joined } => {
                write!(
                    f,
                    "member {user_id} {}",
                    if *joined { "joined" } else { "left" }
                )
            }
            Self::Chat => write!(f, "chat"),
            Self::ChatRemoved => write!(f, "chat_removed"),
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// The device sent `resume` with this rev for the chat.
    Resumed { from: i64 },
    Frame {
        rev: i64,
        kind: FrameKind,
        message: Option<Value>,
        /// False when it came at or below the rev already applied (a duplicate or out of
        /// order): a client keeping the highest rev ignores it.
        applied: bool,
    },
    /// `chat_removed` again for a chat the device already left, at the rev it left it: the
    /// relay confirming a listed chat is still not the user's, not a change.
    StillRemoved,
}

#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    relay: &'static str,
    event: Event,
}

#[derive(Debug, Default)]
struct ChatModel {
    last: i64,
    left: bool,
    seen: Vec<Seen>,
}

#[derive(Debug)]
struct Device {
    label: String,
    user: usize,
    user_id: i64,
    token: String,
    home: usize,
    chats: Mutex<BTreeMap<i64, ChatModel>>,
    connected: AtomicBool,
    /// The windi process (index) whose relay this device is connected to, while it is.
    on_relay: AtomicUsize,
    /// Set by the test: close the socket and stay away until cleared.
    offline: AtomicBool,
    connects: AtomicU64,
    resume_errors: AtomicU64,
    other_errors: Mutex<Vec<String>>,
}

impl Device {
    fn resume_frame(&self, relay: &'static str, at: Duration) -> Value {
        let mut chats = self.chats.lock().unwrap();
        let mut revs = serde_json::Map::new();
        for (chat_id, model) in chats.iter_mut() {
            revs.insert(chat_id.to_string(), json!(model.last));
            model.seen.push(Seen {
                at,
                relay,
                event: Event::Resumed { from: model.last },
            });
        }
        json!({"type": "resume", "revs": revs})
    }

    /// Applies one frame of the relay to the model (frames that are not changes are skipped).
    fn on_frame(&self, frame: &Value, relay: &'static str, at: Duration) {
        let kind = match frame["type"].as_str().unwrap_or_default() {
            "message" => FrameKind::Message,
            "message_updated" => {
                FrameKind::Updated(frame["change"].as_str().unwrap_or_default().to_owned())
            }
            "member" => FrameKind::Member {
                user_id: frame["user_id"].as_i64().unwrap_or_default(),
                joined: frame["change"] == "joined",
            },
            "chat" => FrameKind::Chat,
            "chat_removed" => FrameKind::ChatRemoved,
            _ => return,
        };
        let chat_id = match kind {
            FrameKind::Chat => frame["chat"]["id"].as_i64(),
            _ => frame["chat_id"].as_i64(),
        };
        let (Some(chat_id), Some(rev)) = (chat_id, frame["rev"].as_i64()) else {
            self.other_errors
                .lock()
                .unwrap()
                .push(format!("a change frame without chat or rev: {frame}"));
            return;
        };
        let own = match kind {
            FrameKind::Chat => Some(true),
            FrameKind::ChatRemoved => Some(false),
            FrameKind::Member { user_id, joined } if user_id == self.user_id => Some(joined),
            _ => None,
        };
        let mut chats = self.chats.lock().unwrap();
        let model = chats.entry(chat_id).or_default();
        if kind == FrameKind::ChatRemoved && model.left && rev == model.last {
            model.seen.push(Seen {
                at,
                relay,
                event: Event::StillRemoved,
            });
            return;
        }
        let applied = rev > model.last;
        if applied {
            model.last = rev;
            if let Some(joined) = own {
                model.left = !joined;
            }
        }
        model.seen.push(Seen {
            at,
            relay,
            event: Event::Frame {
                rev,
                kind,
                message: frame.get("message").cloned(),
                applied,
            },
        });
    }
}

#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
}

/// A device for the whole run: connects (alternating relays from its home one), resumes,
/// applies, and reconnects whenever its socket ends, until told to stop.
async fn run_device(
    device: Arc<Device>,
    relays: [(&'static str, u16, usize); 2],
    control: Arc<Control>,
    rec: Arc<Recorder>,
) {
    let mut next = device.home;
    let mut backoff = Duration::from_millis(100);
    while !control.stop.load(Ordering::Relaxed) {
        if device.offline.load(Ordering::Relaxed) {
            tokio::time::sleep(CONTROL_TICK).await;
            continue;
        }
        let (relay, port, process) = relays[next % 2];
        next += 1;
        device.on_relay.store(process, Ordering::Relaxed);
        if session(&device, relay, port, &control, &rec).await {
            backoff = Duration::from_millis(100);
        } else {
            // Neither relay may be up (one is being restarted): back off a little.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// One connection; true if it got as far as `ready`.
async fn session(
    device: &Device,
    relay: &'static str,
    port: u16,
    control: &Control,
    rec: &Recorder,
) -> bool {
    let url = format!("ws://127.0.0.1:{port}/ws?token={}", device.token);
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    else {
        return false;
    };
    let ready = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    match ready {
        Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains(r#""type":"ready""#) => {}
        _ => return false,
    }
    device.connected.store(true, Ordering::Relaxed);
    device.connects.fetch_add(1, Ordering::Relaxed);
    let resume = device.resume_frame(relay, rec.now());
    let mut alive = ws
        .send(Message::Text(resume.to_string().into()))
        .await
        .is_ok();
    let mut resume_again: Option<Instant> = None;
    while alive {
        if control.stop.load(Ordering::Relaxed) || device.offline.load(Ordering::Relaxed) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            break;
        }
        if resume_again.is_some_and(|at| Instant::now() >= at) {
            resume_again = None;
            let resume = device.resume_frame(relay, rec.now());
            alive = ws
                .send(Message::Text(resume.to_string().into()))
                .await
                .is_ok();
            continue;
        }
        match tokio::time::timeout(CONTROL_TICK, ws.next()).await {
            Err(_) => {}
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => alive = false,
            Ok(Some(Ok(Message::Text(text)))) => {
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if frame["type"] == "error" {
                    if frame["code"] == "unavailable" {
                        // "resume failed; try again" while Postgres is away.
                        device.resume_errors.fetch_add(1, Ordering::Relaxed);
                        resume_again = Some(Instant::now() + RESUME_RETRY);
                    } else {
                        device.other_errors.lock().unwrap().push(format!(
                            "{:.1} s on {relay}: {frame}",
                            rec.now().as_secs_f64()
                        ));
                    }
                } else {
                    device.on_frame(&frame, relay, rec.now());
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    device.connected.store(false, Ordering::Relaxed);
    true
}

// ---------------------------------------------------------------------------------------------
// The writers.

/// A small deterministic generator (SplitMix64): the run is reproducible from its seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
struct User {
    id: i64,
    token: String,
}

#[derive(Debug, Clone)]
struct Acked {
    key: String,
    sender: i64,
    chat: i64,
    id: i64,
}

/// What the writers share: recent messages to react to, acknowledged sends, counts.
#[derive(Debug, Default)]
struct Load {
    recent: Mutex<HashMap<i64, Vec<i64>>>,
    acked: Mutex<Vec<Acked>>,
    unacked_sends: AtomicU64,
    edits: AtomicU64,
    deletes: AtomicU64,
    reactions: AtomicU64,
}

/// Sends `text` with `key` to `chat` (or to `recipient` for a new private chat), retried with
/// the same key across both APIs; records the acknowledgement.
async fn send(
    api: &Api,
    load: &Load,
    first: usize,
    user: &User,
    chat: Option<i64>,
    recipient: Option<i64>,
    key: &str,
) -> Option<Value> {
    let mut body = json!({"text": format!("{key} says hello"), "dedup_key": key});
    match (chat, recipient) {
        (Some(chat), _) => body["chat_id"] = json!(chat),
        (None, Some(to)) => body["recipient_id"] = json!(to),
        (None, None) => unreachable!("a send needs a chat or a recipient"),
    }
    let who = format!("user {} sending {key}", user.id);
    let answer = api
        .call(
            first,
            Method::POST,
            "/chat/message",
            Some(&user.token),
            Some(&body),
        )
        .await;
    let message = match answer {
        Some((200 | 201, message)) => message,
        Some((status, body)) => {
            api.rec.problem(format!("{who}: answered {status}: {body}"));
            return None;
        }
        None => {
            load.unacked_sends.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let (Some(id), Some(chat_id)) = (message["id"].as_i64(), message["chat_id"].as_i64()) else {
        api.rec
            .problem(format!("{who}: a 2xx without id or chat_id: {message}"));
        return None;
    };
    if message["dedup_key"] != key {
        api.rec
            .problem(format!("{who}: answered another message: {message}"));
    }
    load.acked.lock().unwrap().push(Acked {
        key: key.to_owned(),
        sender: user.id,
        chat: chat_id,
        id,
    });
    let mut recent = load.recent.lock().unwrap();
    let list = recent.entry(chat_id).or_default();
    list.push(id);
    if list.len() > 20 {
        list.remove(0);
    }
    Some(message)
}

/// One user's writing until `until`: sends, edits and deletions of their own messages,
/// reactions to anyone's.
#[allow(clippy::too_many_arguments)]
async fn write_until(
    api: Arc<Api>,
    load: Arc<Load>,
    index: usize,
    user: User,
    chats: Vec<i64>,
    seed: u64,
    pacing: Duration,
    until: Instant,
) {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut own: Vec<i64> = Vec::new();
    let mut reacted: HashSet<i64> = HashSet::new();
    let who = format!("user {}", user.id);
    let mut n = 0u64;
    while Instant::now() < until {
        // The load's pace: one operation per writer per interval.
        tokio::time::sleep(pacing).await;
        n += 1;
        let first = rng.below(2);
        let chat = chats[rng.below(chats.len())];
        let roll = rng.below(100);
        if roll < 55 || own.is_empty() {
            let key = format!("u{}-{n}", user.id);
            if let Some(m) = send(&api, &load, first, &user, Some(chat), None, &key).await {
                own.push(m["id"].as_i64().unwrap_or_default());
            }
        } else if roll < 70 {
            let id = own[rng.below(own.len())];
            let body = json!({"text": format!("u{}-{n} edited", user.id)});
            let path = format!("/chat/message/{id}");
            let answer = api
                .expect(
                    first,
                    Method::PATCH,
                    &path,
                    Some(&user.token),
                    Some(&body),
                    &[200],
                    &who,
                )
                .await;
            if answer.is_some() {
                load.edits.fetch_add(1, Ordering::Relaxed);
            }
        } else if roll < 90 {
            let target = load
                .recent
                .lock()
                .unwrap()
                .get(&chat)
                .and_then(|ids| ids.get(rng.below(ids.len().max(1))).copied());
            let Some(id) = target else { continue };
            let path = format!("/chat/message/{id}/reactions/{THUMBS_UP}");
            let method = if reacted.remove(&id) {
                Method::DELETE
            } else {
                reacted.insert(id);
                Method::PUT
            };
            // 409: the message was deleted meanwhile.
            let answer = api
                .expect(
                    first,
                    method,
                    &path,
                    Some(&user.token),
                    None,
                    &[200, 409],
                    &who,
                )
                .await;
            if answer.is_some_and(|(s, _)| s == 200) {
                load.reactions.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let id = own.swap_remove(rng.below(own.len()));
            let path = format!("/chat/message/{id}");
            let answer = api
                .expect(
                    first,
                    Method::DELETE,
                    &path,
                    Some(&user.token),
                    None,
                    &[200],
                    &who,
                )
                .await;
            if answer.is_some() {
                load.deletes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// One row of `chat_changes`.
#[derive(Debug, Clone)]
struct RawChange {
    kind: String,
    user_id: Option<i64>,
}

/// `(after, upto]`: the revs a member is owed, from the rev before their join (0 for a
/// creation member) to their leave (`None`: still a member).
type Interval = (i64, Option<i64>);

fn in_intervals(intervals: &[Interval], rev: i64) -> bool {
    intervals
        .iter()
        .any(|&(after, upto)| rev > after && upto.is_none_or(|u| rev <= u))
}

fn show_intervals(intervals: &[Interval]) -> String {
    let parts: Vec<String> = intervals
        .iter()
        .map(|(a, u)| match u {
            Some(u) => format!("({a}, {u}]"),
            None => format!("({a}, now]"),
        })
        .collect();
    parts.join(" ")
}

/// `[1, 2, 3, 7, 9, 10]` as `1–3, 7, 9–10`, cut after `max` ranges.
fn ranges(revs: &[i64], max: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < revs.len() {
        let mut j = i;
        while j + 1 < revs.len() && revs[j + 1] == revs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            revs[i].to_string()
        } else {
            format!("{}–{}", revs[i], revs[j])
        });
        i = j + 1;
    }
    let more = parts.len().saturating_sub(max);
    parts.truncate(max);
    let mut out = parts.join(", ");
    if more > 0 {
        let _ = write!(out, " and {more} more ranges");
    }
    out
}

/// Whether a frame of `kind` is how `raw` reaches the member `me`.
fn frame_matches(kind: &FrameKind, raw: &RawChange, me: i64) -> bool {
    let own = raw.user_id == Some(me);
    match (kind, raw.kind.as_str()) {
        (FrameKind::Message, "message") => true,
        (FrameKind::Updated(change), stored) => change == stored,
        (FrameKind::Member { user_id, joined }, "member_joined") => {
            *joined && raw.user_id == Some(*user_id)
        }
        (FrameKind::Member { user_id, joined }, "member_left") => {
            !*joined && raw.user_id == Some(*user_id)
        }
        (FrameKind::Chat, "member_joined") | (FrameKind::ChatRemoved, "member_left") => own,
        _ => false,
    }
}

fn without_read(message: &Value) -> Value {
    let mut m = message.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("read");
    }
    m
}

/// What a device received in one chat around `index` of its `seen` list: the last resume
/// before it and the revs that followed, for a readable failure.
fn context(seen: &[Seen], index: usize) -> String {
    let start = seen[..index]
        .iter()
        .rposition(|s| matches!(s.event, Event::Resumed { .. }))
        .unwrap_or(0);
    let mut out = String::new();
    if let Event::Resumed { from } = seen[start].event {
        let _ = write!(
            out,
            "after its resume from rev {from} on {} at {:.1} s it got revs [",
            seen[start].relay,
            seen[start].at.as_secs_f64()
        );
    } else {
        out.push_str("from its first frame it got revs [");
    }
    let revs: Vec<String> = seen[start..]
        .iter()
        .filter_map(|s| match &s.event {
            Event::Frame { rev, .. } => Some(rev.to_string()),
            _ => None,
        })
        .take(12)
        .collect();
    out.push_str(&revs.join(", "));
    out.push_str(", …]");
    out
}

/// Where the device's applied frames jump over the first `max` runs of `missing` revs: the
/// frame before each gap and the one after it, with when and on which relay.
fn gaps(seen: &[Seen], missing: &[i64], max: usize) -> String {
    let applied: Vec<(i64, &FrameKind, &Seen)> = seen
        .iter()
        .filter_map(|s| match &s.event {
            Event::Frame {
                rev,
                kind,
                applied: true,
                ..
            } => Some((*rev, kind, s)),
            _ => None,
        })
        .collect();
    let show = |frame: Option<&(i64, &FrameKind, &Seen)>| match frame {
        Some((rev, kind, s)) => format!(
            "{kind} at rev {rev} ({:.1} s on {})",
            s.at.as_secs_f64(),
            s.relay
        ),
        None => "nothing".to_owned(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < missing.len() && out.len() < max {
        let first = missing[i];
        while i + 1 < missing.len()
            && !applied
                .iter()
                .any(|a| a.0 > missing[i] && a.0 < missing[i + 1])
        {
            i += 1;
        }
        let before = applied.iter().rev().find(|a| a.0 < first);
        let after = applied.iter().find(|a| a.0 > missing[i]);
        out.push(format!("applied {} then {}", show(before), show(after)));
        i += 1;
    }
    out.join("; ")
}

/// Every way this device's view of `chat` differs from the log.
#[allow(clippy::too_many_arguments)]
fn check_device_chat(
    device: &Device,
    chat: i64,
    chat_name: &str,
    model: &ChatModel,
    raw: &BTreeMap<i64, RawChange>,
    log: &BTreeMap<i64, Value>,
    intervals: &[Interval],
    problems: &mut Vec<String>,
) {
    let who = format!(
        "device {} (user {}) in chat {chat} ({chat_name}, member {})",
        device.label,
        device.user_id,
        show_intervals(intervals)
    );
    let mut applied: BTreeMap<i64, (&FrameKind, Option<&Value>)> = BTreeMap::new();
    let mut out_of_order = Vec::new();
    for (i, seen) in model.seen.iter().enumerate() {
        let Event::Frame {
            rev,
            kind,
            message,
            applied: in_order,
        } = &seen.event
        else {
            continue;
        };
        if !in_order {
            out_of_order.push(i);
            continue;
        }
        applied.insert(*rev, (kind, message.as_ref()));
        let owed = in_intervals(intervals, *rev);
        match raw.get(rev) {
            None => problems.push(format!(
                "{who}: got {kind} at rev {rev}, which the chat never had ({:.1} s on {})",
                seen.at.as_secs_f64(),
                seen.relay
            )),
            Some(change) if !frame_matches(kind, change, device.user_id) => problems.push(format!(
                "{who}: got {kind} at rev {rev}, but rev {rev} is {} of user {:?} \
                     ({:.1} s on {}; {})",
                change.kind,
                change.user_id,
                seen.at.as_secs_f64(),
                seen.relay,
                context(&model.seen, i)
            )),
            Some(_) if !owed => problems.push(format!(
                "{who}: got {kind} at rev {rev}, outside its membership ({:.1} s on {})",
                seen.at.as_secs_f64(),
                seen.relay
            )),
            Some(_) => {}
        }
    }
    if let Some(&first) = out_of_order.first() {
        let Event::Frame { rev, kind, .. } = &model.seen[first].event else {
            unreachable!()
        };
        let before = model.seen[..first]
            .iter()
            .filter_map(|s| match &s.event {
                Event::Frame {
                    rev, applied: true, ..
                } => Some(*rev),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        problems.push(format!(
            "{who}: {} frames came at or below a rev already applied (duplicates or out of \
             order); the first, {kind} at rev {rev}, after rev {before}, at {:.1} s on {}: {}",
            out_of_order.len(),
            model.seen[first].at.as_secs_f64(),
            model.seen[first].relay,
            context(&model.seen, first)
        ));
    }
    // A chat the device lists but its user left meanwhile ends with `chat_removed` at the
    // leaving, without the changes of that interval the device had not applied yet (the
    // relay's documented answer to such a resume: the client drops the chat anyway).
    let removals: BTreeSet<i64> = applied
        .iter()
        .filter(|(_, (kind, _))| matches!(kind, FrameKind::ChatRemoved))
        .map(|(&rev, _)| rev)
        .collect();
    let excused = |rev: i64| {
        removals
            .range(rev + 1..)
            .next()
            .is_some_and(|&left| applied.range(rev + 1..left).next().is_none())
    };
    let missing: Vec<i64> = log
        .keys()
        .copied()
        .filter(|rev| in_intervals(intervals, *rev) && !applied.contains_key(rev))
        .filter(|&rev| !excused(rev))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{who}: {} changes of the log never applied: revs {}; {}",
            missing.len(),
            ranges(&missing, 8),
            gaps(&model.seen, &missing, 3)
        ));
    }
    for (rev, change) in log {
        let Some(message) = change.get("message").filter(|m| m["rev"] == *rev) else {
            continue;
        };
        let Some((_, Some(got))) = applied.get(rev) else {
            continue;
        };
        if without_read(got) != without_read(message) {
            problems.push(format!(
                "{who}: the message of rev {rev} differs from the log's: expected {}, got {}",
                without_read(message),
                without_read(got)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillRelay(usize),
    KillApi(usize),
    /// The re-joiner's devices go offline; they are removed, then added back; back online.
    RejoinWhileOffline,
    /// Removed and added back while their devices are connected.
    RejoinWhileOnline,
    /// The relay the re-joiner's first device is on dies (this one if it is not connected),
    /// and the re-joiner is removed and added back while its devices move.
    KillRelayDuringRejoin(usize),
    PauseNats,
    KillNats,
    StopPostgres,
}

/// When each fault starts, as a fraction of the load phase.
const SCHEDULE: &[(f64, Fault)] = &[
    (0.08, Fault::KillRelay(2)),
    (0.18, Fault::RejoinWhileOffline),
    (0.28, Fault::KillApi(0)),
    (0.38, Fault::PauseNats),
    (0.47, Fault::RejoinWhileOnline),
    (0.55, Fault::KillNats),
    (0.64, Fault::StopPostgres),
    (0.75, Fault::KillRelayDuringRejoin(3)),
    (0.86, Fault::KillApi(1)),
];

#[derive(Debug)]
struct Run {
    services: Services,
    api: Arc<Api>,
    rec: Arc<Recorder>,
    owner: User,
    rejoiner: User,
    rejoiner_devices: Vec<Arc<Device>>,
    group: i64,
}

impl Run {
    async fn restart_windi(&mut self, i: usize) {
        self.services.spawn_windi(i);
        let w = &self.services.windis[i];
        let url = format!("http://127.0.0.1:{}/ready", w.port);
        wait_ok(&self.api.http, &url, w.name, START_DEADLINE).await;
        let url = format!("http://127.0.0.1:{}/health", w.relay_port);
        wait_ok(&self.api.http, &url, w.name, START_DEADLINE).await;
    }

    async fn kill_and_restart(&mut self, i: usize, during: impl AsyncFnOnce(&mut Self)) {
        let name = self.services.windis[i].name;
        self.services.kill_windi(i);
        self.rec.fault(format!("SIGKILL {name}"));
        during(self).await;
        tokio::time::sleep(DEAD_TIME).await;
        self.restart_windi(i).await;
        self.rec.fault(format!("{name} restarted and ready"));
    }

    async fn remove_and_readd(&self) {
        let path = format!("/chat/group/{}/members/{}", self.group, self.rejoiner.id);
        let who = "the owner removing the re-joiner";
        // 404: an earlier attempt did it but its answer was lost.
        self.api
            .expect(
                0,
                Method::DELETE,
                &path,
                Some(&self.owner.token),
                None,
                &[204, 404],
                who,
            )
            .await;
        self.rec.fault(format!(
            "user {} removed from group {}",
            self.rejoiner.id, self.group
        ));
        tokio::time::sleep(REMOVED_TIME).await;
        let path = format!("/chat/group/{}/members", self.group);
        let body = json!({"user_ids": [self.rejoiner.id]});
        let who = "the owner adding the re-joiner back";
        self.api
            .expect(
                1,
                Method::POST,
                &path,
                Some(&self.owner.token),
                Some(&body),
                &[200],
                who,
            )
            .await;
        self.rec.fault(format!(
            "user {} added back to group {}",
            self.rejoiner.id, self.group
        ));
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillRelay(i) | Fault::KillApi(i) => self.kill_and_restart(i, async |_| {}).await,
            Fault::KillRelayDuringRejoin(i) => {
                let first = &self.rejoiner_devices[0];
                let i = if first.connected.load(Ordering::Relaxed) {
                    first.on_relay.load(Ordering::Relaxed)
                } else {
                    i
                };
                self.kill_and_restart(i, async |run| run.remove_and_readd().await)
                    .await
            }
            Fault::RejoinWhileOnline => self.remove_and_readd().await,
            Fault::RejoinWhileOffline => {
                for d in &self.rejoiner_devices {
                    d.offline.store(true, Ordering::Relaxed);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while self
                    .rejoiner_devices
                    .iter()
                    .any(|d| d.connected.load(Ordering::Relaxed))
                {
                    assert!(Instant::now() < deadline, "the devices did not go offline");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.rec
                    .fault(format!("user {}'s devices offline", self.rejoiner.id));
                self.remove_and_readd().await;
                for d in &self.rejoiner_devices {
                    d.offline.store(false, Ordering::Relaxed);
                }
                self.rec
                    .fault(format!("user {}'s devices back online", self.rejoiner.id));
            }
            Fault::PauseNats => {
                self.services.signal_nats("-STOP");
                self.rec.fault("SIGSTOP nats-server".into());
                tokio::time::sleep(PAUSE_TIME).await;
                self.services.signal_nats("-CONT");
                self.rec.fault("SIGCONT nats-server".into());
            }
            Fault::KillNats => {
                self.services.kill_nats();
                self.rec.fault("SIGKILL nats-server".into());
                tokio::time::sleep(DEAD_TIME).await;
                self.services.spawn_nats();
                wait_port(self.services.nats_port, "nats-server").await;
                self.rec.fault("nats-server restarted".into());
            }
            Fault::StopPostgres => {
                let down = self.rec.now();
                self.rec.fault("pg_ctl stop -m fast".into());
                let cluster = &self.services.cluster;
                tokio::task::block_in_place(|| cluster.stop("fast"))
                    .unwrap_or_else(|e| panic!("{e}"));
                self.rec.fault("Postgres stopped".into());
                tokio::time::sleep(PAUSE_TIME).await;
                let options = &self.services.pg_options;
                tokio::task::block_in_place(|| cluster.start(options))
                    .unwrap_or_else(|e| panic!("{e}"));
                self.rec
                    .pg_down
                    .lock()
                    .unwrap()
                    .push((down, self.rec.now()));
                self.rec.fault("Postgres started".into());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_killed_relays_apis_nats_and_postgres_every_device_converges_on_the_change_log() {
    let load_secs = env_u64("FAULT_RUN_SECS", 60);
    let pacing = Duration::from_millis(env_u64("FAULT_RUN_PACING_MS", 150));
    let seed = env_u64(
        "FAULT_RUN_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!(
        "fault run: FAULT_RUN_SECS={load_secs} FAULT_RUN_PACING_MS={} FAULT_RUN_SEED={seed}",
        pacing.as_millis()
    );
    let rec = Arc::new(Recorder::new());

    // Postgres, NATS, then A1 alone (it creates and migrates the database), then the others.
    let mut services = tokio::task::block_in_place(Services::start);
    wait_port(services.nats_port, "nats-server").await;
    windi_shared::blobs::install_tls_provider();
    let http = reqwest::Client::new();
    for i in 0..4 {
        services.spawn_windi(i);
        if i == 0 || i == 3 {
            for j in 0..=i {
                if let Some(exit) = services.windi_exited(j) {
                    panic!("{exit}; see {}", services.windis[j].log.display());
                }
                let w = &services.windis[j];
                let url = format!("http://127.0.0.1:{}/ready", w.port);
                wait_ok(&http, &url, w.name, START_DEADLINE).await;
            }
        }
    }
    let api = Arc::new(Api {
        http: http.clone(),
        bases: [0, 1].map(|i| {
            let w = &services.windis[i];
            (w.name, format!("http://127.0.0.1:{}", w.port))
        }),
        rec: rec.clone(),
    });
    let relays = [2, 3].map(|i| (services.windis[i].name, services.windis[i].relay_port, i));
    eprintln!(
        "fault run: started at {:.1} s (logs in {})",
        rec.now().as_secs_f64(),
        services.dir.display()
    );

    // Users, their groups and private chats.
    let mut users = Vec::new();
    for i in 0..USERS {
        let email = format!("fault-u{i}@example.com");
        let body = json!({"name": format!("Fault U{i}"), "email": email, "password": PASSWORD});
        let (_, registered) = api
            .expect(
                0,
                Method::POST,
                "/auth/register",
                None,
                Some(&body),
                &[201],
                "set-up",
            )
            .await
            .unwrap();
        let body = json!({"email": email, "password": PASSWORD});
        let (_, login) = api
            .expect(
                1,
                Method::POST,
                "/auth/login",
                None,
                Some(&body),
                &[200],
                "set-up",
            )
            .await
            .unwrap();
        users.push(User {
            id: registered["id"].as_i64().unwrap(),
            token: login["access_token"].as_str().unwrap().to_owned(),
        });
    }
    let load = Arc::new(Load::default());
    let mut chat_names: BTreeMap<i64, String> = BTreeMap::new();
    let mut initial: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let mut writable: Vec<Vec<i64>> = vec![Vec::new(); USERS];
    let mut owners: BTreeMap<i64, usize> = BTreeMap::new();
    for (name, owner, members) in [("G1", 0, &[1, 2, 3, 4, 5][..]), ("G2", 1, &[2, 3, 4])] {
        let ids: Vec<i64> = members.iter().map(|&m| users[m].id).collect();
        let body = json!({"name": name, "participant_ids": ids});
        let (_, group) = api
            .expect(
                0,
                Method::POST,
                "/chat/group",
                Some(&users[owner].token),
                Some(&body),
                &[201],
                "set-up",
            )
            .await
            .unwrap();
        let chat = group["chat_id"].as_i64().unwrap();
        chat_names.insert(chat, name.into());
        owners.insert(chat, owner);
        let mut all = members.to_vec();
        all.push(owner);
        initial.insert(chat, all.iter().map(|&m| users[m].id).collect());
        for m in all {
            // The re-joiner does not write to the group it is removed from.
            if !(name == "G1" && m == REJOINER) {
                writable[m].push(chat);
            }
        }
    }
    let group = *chat_names.iter().find(|(_, n)| *n == "G1").unwrap().0;
    for (a, b) in [(0, 1), (2, 3), (4, 5)] {
        let key = format!("private-{a}-{b}");
        let message = send(&api, &load, 0, &users[a], None, Some(users[b].id), &key)
            .await
            .unwrap();
        let chat = message["chat_id"].as_i64().unwrap();
        chat_names.insert(chat, format!("private u{}–u{}", users[a].id, users[b].id));
        owners.insert(chat, a);
        initial.insert(chat, BTreeSet::from([users[a].id, users[b].id]));
        writable[a].push(chat);
        writable[b].push(chat);
    }

    // The devices, each knowing its user's chats from `/chat/list` and resuming them from 0.
    let control = Arc::new(Control::default());
    let mut devices = Vec::new();
    let mut device_tasks = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let (_, list) = api
            .expect(
                0,
                Method::GET,
                "/chat/list",
                Some(&user.token),
                None,
                &[200],
                "set-up",
            )
            .await
            .unwrap();
        for d in 0..DEVICES_PER_USER {
            let chats = list
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["id"].as_i64().unwrap(), ChatModel::default()))
                .collect();
            let device = Arc::new(Device {
                label: format!("u{}.{d}", user.id),
                user: u,
                user_id: user.id,
                token: user.token.clone(),
                home: (u + d) % 2,
                chats: Mutex::new(chats),
                connected: AtomicBool::new(false),
                on_relay: AtomicUsize::new(0),
                offline: AtomicBool::new(false),
                connects: AtomicU64::new(0),
                resume_errors: AtomicU64::new(0),
                other_errors: Mutex::default(),
            });
            device_tasks.push(tokio::spawn(run_device(
                device.clone(),
                relays,
                control.clone(),
                rec.clone(),
            )));
            devices.push(device);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !devices.iter().all(|d| d.connected.load(Ordering::Relaxed)) {
        assert!(Instant::now() < deadline, "not every device connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The load, and the faults inside it.
    let load_start = Instant::now();
    let until = load_start + Duration::from_secs(load_secs);
    rec.fault(format!(
        "load starts ({USERS} writers, {} devices)",
        devices.len()
    ));
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            tokio::spawn(write_until(
                api.clone(),
                load.clone(),
                i,
                user.clone(),
                writable[i].clone(),
                seed,
                pacing,
                until,
            ))
        })
        .collect();
    let mut run = Run {
        services,
        api: api.clone(),
        rec: rec.clone(),
        owner: users[0].clone(),
        rejoiner: users[REJOINER].clone(),
        rejoiner_devices: devices
            .iter()
            .filter(|d| d.user == REJOINER)
            .cloned()
            .collect(),
        group,
    };
    for &(at, fault) in SCHEDULE {
        let when = load_start + Duration::from_secs_f64(load_secs as f64 * at);
        tokio::time::sleep_until(when.into()).await;
        run.inject(fault).await;
    }
    let last_fault = rec.now();
    for writer in writers {
        writer.await.unwrap();
    }
    let load_end = rec.now();
    rec.fault("load stops".into());

    // Catch-up: every device at its chats' current revs (Postgres's word).
    let pool = sqlx::PgPool::connect(&run.services.database_url)
        .await
        .unwrap();
    let chat_revs: BTreeMap<i64, i64> =
        sqlx::query_as::<_, (i64, i64)>("SELECT id, rev FROM chats")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let members_now: BTreeSet<(i64, i64)> =
        sqlx::query_as::<_, (i64, i64)>("SELECT chat_id, user_id FROM chat_members")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let behind = |devices: &[Arc<Device>]| -> Vec<String> {
        let mut out = Vec::new();
        for d in devices {
            let chats = d.chats.lock().unwrap();
            for (&chat, &rev) in &chat_revs {
                if !members_now.contains(&(chat, d.user_id)) {
                    continue;
                }
                let at = chats.get(&chat).map_or(-1, |m| m.last);
                if at != rev {
                    out.push(format!(
                        "device {} (user {}) in chat {chat} ({}) is at rev {at}, the chat at {rev}",
                        d.label, d.user_id, chat_names[&chat]
                    ));
                }
            }
        }
        out
    };
    let catch_up_deadline = Instant::now() + CATCH_UP_BOUND;
    let mut lagging = behind(&devices);
    while !lagging.is_empty() && Instant::now() < catch_up_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lagging = behind(&devices);
    }
    let caught_up_after = rec.now() - load_end;
    let mut problems: Vec<String> = Vec::new();
    for line in &lagging {
        problems.push(format!(
            "{line} {CATCH_UP_BOUND:?} after the load stopped (its last fault ended at {:.1} s)",
            last_fault.as_secs_f64()
        ));
    }
    control.stop.store(true, Ordering::Relaxed);
    for task in device_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    // Every process healthy.
    for w in &run.services.windis {
        let url = format!("http://127.0.0.1:{}/ready", w.port);
        let answer = http.get(&url).timeout(Duration::from_secs(5)).send().await;
        match answer {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => problems.push(format!(
                "{} /ready answered {} at the end: {}",
                w.name,
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => problems.push(format!("{} /ready did not answer at the end: {e}", w.name)),
        }
    }

    // The record: every acknowledged send stored once, seqs and revs gap-free.
    let messages: Vec<(i64, i64, i64, i64, Option<String>)> =
        sqlx::query_as("SELECT id, chat_id, seq, sender_id, dedup_key FROM messages")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut by_key: HashMap<(i64, String), Vec<i64>> = HashMap::new();
    let mut seqs: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, chat, seq, sender, key) in &messages {
        match key {
            Some(key) => by_key.entry((*sender, key.clone())).or_default().push(*id),
            None => problems.push(format!("message {id} was stored without its dedup_key")),
        }
        seqs.entry(*chat).or_default().push(*seq);
    }
    let acked = load.acked.lock().unwrap().clone();
    for a in &acked {
        match by_key.get(&(a.sender, a.key.clone())).map(Vec::as_slice) {
            Some([id]) if *id == a.id => {}
            Some([id]) => problems.push(format!(
                "send {} by user {} was acknowledged as message {}, but is stored as {id}",
                a.key, a.sender, a.id
            )),
            Some(ids) if ids.len() > 1 => problems.push(format!(
                "send {} by user {} is stored {} times: messages {ids:?}",
                a.key,
                a.sender,
                ids.len()
            )),
            _ => problems.push(format!(
                "send {} by user {} in chat {} was acknowledged as message {} and is lost",
                a.key, a.sender, a.chat, a.id
            )),
        }
    }
    for (chat, mut s) in seqs {
        s.sort_unstable();
        let n = s.len() as i64;
        if s != (1..=n).collect::<Vec<_>>() {
            problems.push(format!(
                "chat {chat}: seqs are not 1..={n}: {}",
                ranges(&s, 8)
            ));
        }
    }
    let raw_rows: Vec<(i64, i64, String, Option<i64>)> = sqlx::query_as(
        "SELECT chat_id, rev, kind, user_id FROM chat_changes ORDER BY chat_id, rev",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut raw: BTreeMap<i64, BTreeMap<i64, RawChange>> = BTreeMap::new();
    for (chat, rev, kind, user_id) in raw_rows {
        raw.entry(chat)
            .or_default()
            .insert(rev, RawChange { kind, user_id });
    }
    for (&chat, &rev) in &chat_revs {
        let revs: Vec<i64> = raw
            .get(&chat)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        if revs != (1..=rev).collect::<Vec<_>>() {
            problems.push(format!(
                "chat {chat}: chat_changes revs are not 1..={rev}: {}",
                ranges(&revs, 8)
            ));
        }
    }

    // The API's change log of each chat, as a member, and each device against it.
    let mut total_changes = 0;
    for (&chat, name) in &chat_names {
        let reader = &users[owners[&chat]];
        let mut log: BTreeMap<i64, Value> = BTreeMap::new();
        let mut after = 0;
        loop {
            let path = format!("/chat/changes/{chat}?after_rev={after}&limit=200");
            let (_, page) = api
                .expect(
                    0,
                    Method::GET,
                    &path,
                    Some(&reader.token),
                    None,
                    &[200],
                    "the check",
                )
                .await
                .unwrap();
            for change in page["changes"].as_array().unwrap() {
                log.insert(change["rev"].as_i64().unwrap(), change.clone());
            }
            after = page["rev"].as_i64().unwrap();
            if page["more"] != true {
                break;
            }
        }
        total_changes += chat_revs[&chat];
        let raw = raw.remove(&chat).unwrap_or_default();
        for device in &devices {
            let mut intervals: Vec<Interval> = Vec::new();
            if initial[&chat].contains(&device.user_id) {
                intervals.push((0, None));
            }
            for (&rev, change) in &raw {
                if change.user_id != Some(device.user_id) {
                    continue;
                }
                match change.kind.as_str() {
                    "member_joined" => intervals.push((rev - 1, None)),
                    "member_left" => {
                        if let Some(open) = intervals.last_mut().filter(|i| i.1.is_none()) {
                            open.1 = Some(rev);
                        }
                    }
                    _ => {}
                }
            }
            if intervals.is_empty() {
                continue;
            }
            let chats = device.chats.lock().unwrap();
            let empty = ChatModel::default();
            let model = chats.get(&chat).unwrap_or(&empty);
            check_device_chat(
                device,
                chat,
                name,
                model,
                &raw,
                &log,
                &intervals,
                &mut problems,
            );
        }
    }

    // Answers: no 500, 503 only with Retry-After and while Postgres was down.
    let pg_down = rec.pg_down.lock().unwrap().clone();
    let server_errors = std::mem::take(&mut *rec.server_errors.lock().unwrap());
    let mut bad_5xx = 0;
    for e in &server_errors {
        let during_outage = pg_down
            .iter()
            .any(|&(down, up)| e.answered >= down && e.asked <= up + PG_503_GRACE);
        let why = if e.status != 503 {
            Some("a 5xx other than 503")
        } else if !e.retry_after {
            Some("a 503 without Retry-After")
        } else if !during_outage {
            Some("a 503 while Postgres was up")
        } else {
            None
        };
        if let Some(why) = why {
            bad_5xx += 1;
            if bad_5xx <= 10 {
                problems.push(format!(
                    "{why}: {} {} on {} (asked at {:.1} s, answered at {:.1} s; Postgres down {})",
                    e.status,
                    e.what,
                    e.api,
                    e.asked.as_secs_f64(),
                    e.answered.as_secs_f64(),
                    pg_down
                        .iter()
                        .map(|(d, u)| format!("{:.1}–{:.1} s", d.as_secs_f64(), u.as_secs_f64()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    if bad_5xx > 10 {
        problems.push(format!("… and {} more such answers", bad_5xx - 10));
    }
    problems.extend(rec.problems.lock().unwrap().iter().cloned());
    for d in &devices {
        for e in d.other_errors.lock().unwrap().iter().take(3) {
            problems.push(format!("device {} got an error frame: {e}", d.label));
        }
    }

    // The summary, then the verdict.
    let connects: u64 = devices
        .iter()
        .map(|d| d.connects.load(Ordering::Relaxed))
        .sum();
    let frames: usize = devices
        .iter()
        .map(|d| {
            d.chats
                .lock()
                .unwrap()
                .values()
                .map(|m| {
                    m.seen
                        .iter()
                        .filter(|s| matches!(s.event, Event::Frame { .. }))
                        .count()
                })
                .sum::<usize>()
        })
        .sum();
    let resume_errors: u64 = devices
        .iter()
        .map(|d| d.resume_errors.load(Ordering::Relaxed))
        .sum();
    let status_503 = server_errors.iter().filter(|e| e.status == 503).count();
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "fault run summary (seed {seed}, {load_secs} s of load, {:.1} s in all):",
        rec.now().as_secs_f64()
    );
    let _ = writeln!(
        summary,
        "  changes: {total_changes} in {} chats; sends acknowledged: {} (given up: {}); \
         edits {}, deletions {}, reactions {}",
        chat_names.len(),
        acked.len(),
        load.unacked_sends.load(Ordering::Relaxed),
        load.edits.load(Ordering::Relaxed),
        load.deletes.load(Ordering::Relaxed),
        load.reactions.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        summary,
        "  HTTP: {} requests, {} retried on the other API, {} transport errors, {} 503s, \
         {} other 5xx",
        rec.requests.load(Ordering::Relaxed),
        rec.retries.load(Ordering::Relaxed),
        rec.transport_errors.load(Ordering::Relaxed),
        status_503,
        server_errors.len() - status_503,
    );
    let _ = writeln!(
        summary,
        "  devices: {}, connections {} ({} reconnects), change frames {frames}, resumes \
         refused as unavailable {resume_errors}",
        devices.len(),
        connects,
        connects.saturating_sub(devices.len() as u64),
    );
    let _ = writeln!(
        summary,
        "  caught up {:.1} s after the load stopped (bound {CATCH_UP_BOUND:?}){}",
        caught_up_after.as_secs_f64(),
        if lagging.is_empty() { "" } else { ": NOT ALL" }
    );
    let _ = writeln!(summary, "  faults:");
    for f in rec.faults.lock().unwrap().iter() {
        let _ = writeln!(summary, "    {f}");
    }
    eprintln!("{summary}");
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(40).collect();
        let mut text = String::new();
        for p in &shown {
            let _ = writeln!(text, "- {p}");
        }
        if problems.len() > shown.len() {
            let _ = writeln!(text, "- … and {} more", problems.len() - shown.len());
        }
        // Keeps the processes' logs (Services' Drop sees the panic).
        panic!("the fault run found {} problems:\n{text}", problems.len());
    }
    drop(run);
}
