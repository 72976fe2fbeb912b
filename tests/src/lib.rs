//! Test support: a real windi on `127.0.0.1:0`, on its own fresh Postgres database, driven over
//! real HTTP.
//!
//! Each [`TestApp`] creates a database `windi_test_*`, migrates it, and drops it again when the
//! test ends (pass or fail). Tests therefore run in parallel without seeing each other's rows.

#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use windi_shared::{
    AppState,
    config::{JwtConfig, LimitSettings},
    events::{Bus, LocalBus},
    store::MIGRATOR,
};
use ws_relay::{RelayHandle, RelaySettings};

pub mod s3;
pub mod ws;

/// Which event carrier a test runs on: the delivery tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Nats,
}

/// Relay settings for tests: the production limits with shorter timings.
pub fn relay_settings() -> RelaySettings {
    RelaySettings {
        port: 0,
        allowed_origins: Some(vec!["http://allowed.example".into()]),
        poll_interval: Duration::from_millis(200),
        ..RelaySettings::default()
    }
}

/// The production limits but one: registrations and email searches per client address are
/// raised, since every test registers its users from 127.0.0.1, which is what that limit is
/// there to stop (`address_limits` tests it, setting it itself).
pub fn test_limits() -> LimitSettings {
    LimitSettings {
        email_lookups_per_minute: 1_000_000,
        email_lookups_burst: 1_000_000,
        // Search tests ask more often than a person types; the limit's own test sets it.
        searches_per_second: 1_000,
        searches_burst: 1_000,
        ..LimitSettings::default()
    }
}

/// The signing secret of test apps (tests forge tokens with it).
pub const TEST_SECRET: &[u8] = b"test-only-secret-0123456789abcdefghijklmnop";
/// A password that passes the rules.
pub const PASSWORD: &str = "correct horse battery";

/// The server that test databases are created on: the run's own Postgres, started on first
/// use and shared by every test process (`TEST_DATABASE_URL` names another).
pub fn admin_database_url() -> String {
    windi_embedded::test_services::shared()
        .postgres_admin_url
        .clone()
}

/// The run's shared NATS, started like the Postgres (`TEST_NATS_URL` names another). Tests
/// never stop it; fault tests start their own.
pub fn nats_url() -> String {
    windi_embedded::test_services::shared().nats_url.clone()
}

/// A unique name for this test's database, NATS prefix, emails...
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, migrated database that is dropped when this value is.
#[derive(Debug)]
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
    /// The server's maintenance database, where this one is dropped.
    admin: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on(&admin_database_url()).await
    }

    /// A fresh database on the server of `admin` (a URL of its `postgres` database).
    pub async fn on(admin: &str) -> Self {
        let admin = admin.to_owned();
        let name = unique("windi_test");
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let url = with_database(&admin, &name);
        let pool = windi_shared::store::connect(&url, 20).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        Self {
            pool,
            url,
            name,
            admin,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = &self.name;
        if name.is_empty() {
            // A second handle on another TestDb's database (see `TestApp::silent_twin`).
            return;
        }
        // WITH (FORCE) closes the connections the pool still holds.
        block_on_aside(async {
            if let Ok(mut conn) = PgConnection::connect(&self.admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        });
    }
}

/// Runs `work` to completion on a thread of its own with its own runtime: for `Drop` (which
/// cannot await) and for code holding a lock, inside a test's runtime that must not be blocked.
pub fn block_on_aside<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work)
            })
            .join()
            .unwrap()
    })
}

fn with_database(url: &str, name: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{name}")
}

/// A running windi serving the whole API.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    pub db: TestDb,
    /// The NATS subject prefix of this app (unique per test).
    pub prefix: String,
    /// The NATS server events go to (`None`: the in-process bus).
    pub nats_url: Option<String>,
    /// Deletes this app's JetStream stream when the test ends.
    stream: Option<StreamGuard>,
    /// Where its files are kept (unless a test gives it S3); removed when the test ends.
    pub files: TempFolder,
}

/// A folder under the system's temporary folder, removed (with what is in it) when dropped.
#[derive(Debug)]
pub struct TempFolder(pub std::path::PathBuf);

impl TempFolder {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deletes a test's JetStream stream when dropped (pass or fail), so test runs leave nothing
/// behind on the machine's shared NATS.
#[derive(Debug)]
pub struct StreamGuard {
    pub url: String,
    pub prefix: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let name = windi_shared::events::stream_name(&self.prefix);
        block_on_aside(async {
            let connect = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(self.url.as_str());
            if let Ok(client) = connect.await {
                let js = async_nats::jetstream::new(client);
                let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(name)).await;
            }
        });
    }
}

impl TestApp {
    /// windi with the in-process event bus.
    pub async fn spawn() -> Self {
        let db = TestDb::new().await;
        let prefix = unique("t");
        let events: Bus = Arc::new(LocalBus::default());
        Self::start(db, events, prefix).await
    }

    /// windi publishing to the machine's NATS, under a prefix no other test uses.
    pub async fn spawn_with_nats() -> Self {
        Self::spawn_on_nats(&nats_url()).await
    }

    /// windi publishing to the NATS at `url` (e.g. a [`PrivateNats`]).
    pub async fn spawn_on_nats(url: &str) -> Self {
        Self::on_nats(url, test_limits()).await
    }

    /// [`TestApp::spawn_on_nats`] with rate limits that never apply (for load on purpose).
    pub async fn spawn_on_nats_unlimited(url: &str) -> Self {
        Self::on_nats(url, LimitSettings::unlimited()).await
    }

    async fn on_nats(url: &str, limits: LimitSettings) -> Self {
        let prefix = unique("t");
        let publisher = windi_shared::events::connect_nats(url, &prefix, "windi-test")
            .await
            .unwrap();
        let mut app =
            Self::start_with(TestDb::new().await, Arc::new(publisher), prefix, limits).await;
        app.nats_url = Some(url.to_owned());
        app.stream = Some(StreamGuard {
            url: url.to_owned(),
            prefix: app.prefix.clone(),
        });
        app
    }

    /// windi with rate limits that never apply, for tests that load it on purpose (each says
    /// so); every other test runs with the production limits ([`test_limits`]).
    pub async fn spawn_unlimited(mode: Mode) -> Self {
        let prefix = unique("t");
        match mode {
            Mode::Local => {
                let events: Bus = Arc::new(LocalBus::default());
                Self::start_with(
                    TestDb::new().await,
                    events,
                    prefix,
                    LimitSettings::unlimited(),
                )
                .await
            }
            Mode::Nats => Self::on_nats(&nats_url(), LimitSettings::unlimited()).await,
        }
    }

    /// windi with the in-process bus, or on the shared NATS.
    pub async fn spawn_in(mode: Mode) -> Self {
        match mode {
            Mode::Local => Self::spawn().await,
            Mode::Nats => Self::spawn_with_nats().await,
        }
    }

    /// windi with the in-process bus and its state changed by `adjust` before it serves: for
    /// the settings an operator can choose (each test says which).
    pub async fn spawn_adjusted(adjust: impl FnOnce(AppState) -> AppState) -> Self {
        let events: Bus = Arc::new(LocalBus::default());
        let (mut app, listener) = Self::bind(TestDb::new().await, events, unique("t")).await;
        app.state = adjust(app.state);
        app.serve(listener, windi::ClientConfig::default());
        app
    }

    /// windi on an existing database and publisher, with its state changed by `adjust` before
    /// it serves (each test says what it changes and why).
    pub async fn start_adjusted(
        db: TestDb,
        events: Bus,
        prefix: String,
        adjust: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        let (mut app, listener) = Self::bind(db, events, prefix).await;
        app.state = adjust(app.state);
        app.serve(listener, windi::ClientConfig::default());
        app
    }

    /// A relay sharing this app's state and event carrier, on 127.0.0.1:0.
    pub async fn relay(&self, settings: RelaySettings) -> RelayHandle {
        let subscriber = ws_relay::subscriber_for(
            &self.state,
            self.nats_url.as_deref(),
            &self.prefix,
            &settings,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ws_relay::start(self.state.clone(), subscriber, settings, listener)
            .await
            .unwrap()
    }

    /// windi on an existing database and publisher (e.g. a second instance, or a private NATS).
    pub async fn start(db: TestDb, events: Bus, prefix: String) -> Self {
        Self::start_with(db, events, prefix, test_limits()).await
    }

    /// [`TestApp::start`] with other rate limits.
    pub async fn start_with(
        db: TestDb,
        events: Bus,
        prefix: String,
        limits: LimitSettings,
    ) -> Self {
        let (mut app, listener) = Self::bind(db, events, prefix).await;
        app.state = app.state.with_limits(limits);
        app.serve(listener, windi::ClientConfig::default());
        app
    }

    /// windi with the in-process bus as a browser sees it: the page at `/` is told the port of
    /// the relay started with it (in `/client-config.json`), and that relay accepts the page's
    /// origin. The relay starts first, so the page never points at a port nobody listens on.
    pub async fn spawn_for_browser() -> (Self, RelayHandle) {
        let prefix = unique("t");
        let events: Bus = Arc::new(LocalBus::default());
        let (app, listener) = Self::bind(TestDb::new().await, events, prefix).await;
        let relay = app
            .relay(RelaySettings {
                allowed_origins: Some(vec![app.base.clone()]),
                ..relay_settings()
            })
            .await;
        let client = windi::ClientConfig {
            relay_port: relay.addr.port(),
            relay_url: None,
            files_source: None,
        };
        app.serve(listener, client);
        (app, relay)
    }

    /// The app's state on a bound listener, not serving yet.
    async fn bind(db: TestDb, events: Bus, prefix: String) -> (Self, tokio::net::TcpListener) {
        let jwt = JwtConfig::new(
            TEST_SECRET.to_vec(),
            Algorithm::HS256,
            Duration::from_secs(1800),
        )
        .unwrap();
        // Files in a folder of the test's own, as the local binary keeps them by default.
        let files = TempFolder::new("files");
        let blobs = windi_shared::blobs::Blobs::folder(files.0.clone(), TEST_SECRET).unwrap();
        let state = AppState::new(db.pool.clone(), &jwt, events)
            .with_limits(test_limits())
            .with_files(blobs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Self {
            base: format!("http://{addr}"),
            addr,
            state,
            http: http_client(),
            db,
            prefix,
            nats_url: None,
            stream: None,
            files,
        };
        (app, listener)
    }

    fn serve(&self, listener: tokio::net::TcpListener, client: windi::ClientConfig) {
        // As `windi serve` does: sessions checked lately are trusted while the sync runs.
        self.state.sync_sessions();
        let router = windi::app_with_client(self.state.clone(), client);
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
    }

    /// A second windi on this app's database whose events reach no relay: an in-process bus
    /// that nothing subscribes to. Whatever it commits is what a handler that died between
    /// commit and publish leaves behind.
    pub async fn silent_twin(&self) -> TestApp {
        let pool = windi_shared::store::connect(&self.db.url, 5).await.unwrap();
        let db = TestDb {
            pool,
            url: self.db.url.clone(),
            name: String::new(),
            admin: self.db.admin.clone(),
        };
        let events: Bus = Arc::new(LocalBus::default());
        TestApp::start(db, events, unique("silent")).await
    }

    /// A second windi process on this app's database and NATS subject prefix (a NATS app's
    /// only): what a deployment with several API processes behind one load balancer has.
    pub async fn twin_on_nats(&self) -> TestApp {
        let url = self.nats_url.clone().expect("a NATS app");
        let pool = windi_shared::store::connect(&self.db.url, 10)
            .await
            .unwrap();
        let db = TestDb {
            pool,
            url: self.db.url.clone(),
            name: String::new(),
            admin: self.db.admin.clone(),
        };
        let publisher = windi_shared::events::connect_nats(&url, &self.prefix, "windi-twin")
            .await
            .unwrap();
        let mut twin = TestApp::start(db, Arc::new(publisher), self.prefix.clone()).await;
        twin.nats_url = Some(url);
        twin
    }

    /// Registers and logs in a new user with a unique email.
    pub async fn user(&self, name: &str) -> TestUser {
        let email = format!("{}@example.com", unique(&name.to_lowercase()));
        let (status, body) = self
            .call(
                Method::POST,
                "/auth/register",
                None,
                Some(json!({"name": name, "email": email, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_i64().unwrap();
        let token = self.login(&email, PASSWORD).await;
        TestUser { id, email, token }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/auth/login"))
            .form(&[("username", email), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One JSON request; answers the status and the JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&user.token), None).await
    }

    pub async fn delete(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&user.token), None)
            .await
    }

    pub async fn patch(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(&user.token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(&user.token), None).await
    }

    /// The chat's changes after `after_rev` (asserting 200).
    pub async fn changes(&self, user: &TestUser, chat_id: i64, after_rev: i64) -> Value {
        let (status, body) = self
            .get(
                &format!("/chat/changes/{chat_id}?after_rev={after_rev}&limit=200"),
                user,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The chat's rev now, from Postgres.
    pub async fn chat_rev(&self, chat_id: i64) -> i64 {
        sqlx::query_scalar("SELECT rev FROM chats WHERE id = $1")
            .bind(chat_id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&user.token), Some(body))
            .await
    }

    /// Sends `text` to a user (private chat); asserts success and answers the message.
    pub async fn send_to_user(&self, from: &TestUser, to: &TestUser, text: &str) -> Value {
        let (status, body) = self
            .post(
                "/chat/message",
                from,
                json!({"recipient_id": to.id, "text": text}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Sends `text` to a chat; asserts success and answers the message.
    pub async fn send_to_chat(&self, from: &TestUser, chat_id: i64, text: &str) -> Value {
        let (status, body) = self
            .post(
                "/chat/message",
                from,
                json!({"chat_id": chat_id, "text": text}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a group owned by `owner`; answers its chat id.
    pub async fn group(&self, owner: &TestUser, members: &[&TestUser]) -> i64 {
        let ids: Vec<i64> = members.iter().map(|u| u.id).collect();
        let (status, body) = self
            .post(
                "/chat/group",
                owner,
                json!({"name": "Project Team", "participant_ids": ids}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["chat_id"].as_i64().unwrap()
    }

    pub async fn history(&self, user: &TestUser, chat_id: i64, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/chat/history/{chat_id}?{query}"), user)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    pub async fn mark_read(&self, user: &TestUser, message_id: i64) -> (StatusCode, Value) {
        self.call(
            Method::PATCH,
            &format!("/chat/message/{message_id}/read"),
            Some(&user.token),
            None,
        )
        .await
    }
}

/// Status and JSON body of a response (`Null` for an empty body; a non-JSON body fails).
pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let mut body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"));
    // An error body quotes its request's id, different for every request by design; tests
    // that compare two answers compare the rest (tests/api/ops.rs checks the id itself).
    if let Some(error) = body.as_object_mut()
        && error.contains_key("code")
    {
        error.remove("request_id");
    }
    (status, body)
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub email: String,
    pub token: String,
}

/// Waits for `condition` to hold, polling, up to `timeout`; panics with `what` otherwise.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private `nats-server` on a free port, for tests that stop or break the broker. Killed on
/// drop. The shared NATS on 4222 is never touched.
#[derive(Debug)]
pub struct PrivateNats {
    pub url: String,
    pub port: u16,
    child: Option<std::process::Child>,
    store: std::path::PathBuf,
}

impl PrivateNats {
    pub async fn start() -> Self {
        let mut nats = Self::not_started();
        nats.restart().await;
        nats
    }

    /// A free port where a server will run once [`PrivateNats::restart`] is called.
    pub fn not_started() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(unique("windi-nats"));
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            store,
        }
    }

    /// Starts the server (again, on the same port and store) and waits until it accepts.
    pub async fn restart(&mut self) {
        self.stop();
        let bin = windi_embedded::nats::find_server().unwrap_or_else(|| {
            panic!(
                "no nats-server: {} (or set NATS_SERVER_BIN)",
                windi_embedded::nats::install_hint()
            )
        });
        let child = windi_embedded::nats::spawn(&bin, self.port, &self.store)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(10),
            "private nats-server accepts",
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server: connections stay open, what clients send waits in the socket, and
    /// nothing answers until [`PrivateNats::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        run(std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string()));
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A private Postgres cluster on a free port, for tests that crash, pause and restart the
/// database: the embedded cluster code `windi` and the test harness use
/// ([`windi_embedded::postgres::Cluster`]), run as the `postgres` user when the tests run as
/// root (Postgres refuses root). Removed on drop; the run's shared server is never touched.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    cluster: windi_embedded::postgres::Cluster,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let port = windi_embedded::platform::free_port().unwrap();
        let dir = std::env::temp_dir().join(unique("windi-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = windi_embedded::postgres::Cluster::new(dir.join("data"))
            .unwrap_or_else(|e| panic!("{e}"));
        cluster.init(false).unwrap_or_else(|e| panic!("{e}"));
        let pg = Self { port, dir, cluster };
        pg.restart().await;
        pg
    }

    /// The URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    pub async fn restart(&self) {
        self.cluster
            .start(&self.cluster.loopback_options(self.port))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the cluster the hard way: what a crash or an OOM kill leaves behind.
    pub fn crash(&self) {
        self.cluster
            .stop("immediate")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Freezes every process of the cluster: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.cluster.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &pid])
            .output()
            .unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(pid);
        run(std::process::Command::new("kill").arg(signal).args(&pids));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.resume_quietly();
        let _ = self.cluster.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivatePostgres {
    fn resume_quietly(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.cluster.data.join("postmaster.pid"))
            && let Some(pid) = pid.lines().next()
        {
            let _ = std::process::Command::new("pkill")
                .args(["-CONT", "-P", pid.trim()])
                .status();
            let _ = std::process::Command::new("kill")
                .args(["-CONT", pid.trim()])
                .status();
        }
    }
}

/// Runs a command to success, or panics with what it was.
fn run(command: &mut std::process::Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed: {status}");
}

/// A plain HTTP client. windi builds reqwest without a TLS provider of its own (see
/// `windi_shared::blobs::install_tls_provider`): every client in a test is made here, after it.
pub fn http_client() -> reqwest::Client {
    windi_shared::blobs::install_tls_provider();
    reqwest::Client::new()
}
