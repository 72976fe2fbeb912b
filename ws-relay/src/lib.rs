//! ws-relay: real-time delivery of committed chat events over WebSockets.
//!
//! A long-running service (ECS/Fargate or a VM in production; a task inside the local `windi`
//! binary in development). It authenticates a client with the same JWT as the API, subscribes
//! to the events of that user's chats, and delivers them with three promises:
//!
//! - **No loss.** Postgres is the record; an event is only news. Every change of a chat (a
//!   message, an edit, a deletion, a reaction, a member joining or leaving) has the chat's next
//!   rev, so a connection always knows what it should receive next and fills any gap from the
//!   change log, whether the event was dropped by a full buffer, a broker restart, or a handler
//!   that died between commit and publish (a poller reading what was committed since its
//!   last look finds those within [`RelaySettings::poll_interval`]; see [`hub`] for the bound).
//! - **No duplicates, in order.** Per connection and chat ([`delivery`]), a change below the next
//!   expected rev is dropped and one above it waits for the gap to be filled.
//! - **Bounded memory.** Each connection has a bounded queue; a client that cannot keep up is
//!   told so and disconnected, and resumes later from its last rev.
//!
//! - **Its own pool.** The relay reads Postgres through a pool of its own
//!   ([`RelaySettings::database_pool_size`], [`with_own_pool`]), so a storm of catch-ups
//!   after a restart waits for the relay's connections, never the API's.
//!
//! See docs/relay-protocol.md for the protocol; [`protocol`] has the frames.

pub mod connection;
pub mod delivery;
pub mod hub;
pub mod keeper;
pub mod presence;
pub mod protocol;
pub mod receipts;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use windi_shared::{
    AppState, Error,
    config::{ConfigError, optional, parsed_or},
    events::{Bus, NatsBus},
    http::extract::bearer_token,
    store::sessions,
};

use crate::hub::{Hub, Stats, StatsSnapshot};

/// The relay's limits and timings. Every one is explicit; `from_env` reads the `RELAY_*`
/// variables, and tests shorten the timings.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub port: u16,
    /// Browser origins allowed to connect; `None` allows any. Requests without an `Origin`
    /// header (non-browser clients) are always allowed: only browsers carry ambient credentials
    /// worth protecting, and they always send it.
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections_per_user: usize,
    /// Events waiting for one connection before it counts as too slow.
    pub queue_capacity: usize,
    /// Largest client frame; bigger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// What each socket reads into at once. tungstenite allocates 128 KiB per socket by
    /// default, which is most of an idle connection's memory; client frames are small (a send
    /// is at most 16 KiB of text), and a bigger one just takes more reads.
    pub read_buffer_bytes: usize,
    pub ping_interval: Duration,
    /// A client not heard from (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// A write the client does not take within this long marks it too slow.
    pub write_timeout: Duration,
    /// How often Postgres is compared with what was delivered: the bound on how late a message
    /// whose event was lost can be.
    pub poll_interval: Duration,
    /// Buffer of each NATS subscription. The client drops messages when it is full (counted in
    /// the stats; the seq gap-fill recovers them), so it is sized for bursts.
    pub subscription_capacity: usize,
    /// Who may read the relay's `GET /metrics` (`METRICS_TOKEN`).
    pub metrics: windi_shared::http::metrics::MetricsAccess,
    /// The delivery machine's timings: how long a new connection holds live changes for the
    /// client's `resume`, the reorder window, retries, how often a client may resume.
    pub delivery: delivery::Timing,
    /// Connections of the relay's own pool (`RELAY_DATABASE_POOL_SIZE`): the poller takes one
    /// at a time; connects, resumes and catch-ups (one per chat, however many sockets ask)
    /// share the rest, and wait for one rather than take the API's.
    pub database_pool_size: u32,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            port: 8001,
            allowed_origins: Some(vec![
                "http://localhost:8000".into(),
                "http://127.0.0.1:8000".into(),
            ]),
            max_connections_per_user: 8,
            queue_capacity: 512,
            max_frame_bytes: 32 * 1024,
            read_buffer_bytes: 4 * 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            subscription_capacity: 65_536,
            metrics: windi_shared::http::metrics::MetricsAccess::default(),
            delivery: delivery::Timing::default(),
            database_pool_size: 10,
        }
    }
}

impl RelaySettings {
    /// `RELAY_PORT`, `RELAY_ALLOWED_ORIGINS` (comma-separated, or `*`),
    /// `RELAY_MAX_CONNECTIONS_PER_USER`, `RELAY_QUEUE_CAPACITY`, `RELAY_IDLE_TIMEOUT_SECS`,
    /// `RELAY_POLL_INTERVAL_MS`, `RELAY_DATABASE_POOL_SIZE`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let allowed_origins = match optional("RELAY_ALLOWED_ORIGINS").as_deref() {
            None => d.allowed_origins,
            Some("*") => None,
            Some(list) => Some(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
        };
        let idle = parsed_or("RELAY_IDLE_TIMEOUT_SECS", d.idle_timeout.as_secs())?;
        let poll = parsed_or("RELAY_POLL_INTERVAL_MS", 1000u64)?;
        if idle < 2 {
            return Err(ConfigError::Invalid {
                var: "RELAY_IDLE_TIMEOUT_SECS",
                reason: "must be at least 2".into(),
            });
        }
        let database_pool_size = parsed_or("RELAY_DATABASE_POOL_SIZE", d.database_pool_size)?;
        if database_pool_size < 1 {
            return Err(ConfigError::Invalid {
                var: "RELAY_DATABASE_POOL_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            port: parsed_or("RELAY_PORT", d.port)?,
            allowed_origins,
            max_connections_per_user: parsed_or(
                "RELAY_MAX_CONNECTIONS_PER_USER",
                d.max_connections_per_user,
            )?,
            queue_capacity: parsed_or("RELAY_QUEUE_CAPACITY", d.queue_capacity)?.max(16),
            idle_timeout: Duration::from_secs(idle),
            // Pings well inside the idle timeout, so a live client always answers in time.
            ping_interval: Duration::from_secs((idle / 3).max(1)),
            poll_interval: Duration::from_millis(poll.max(100)),
            metrics: windi_shared::http::metrics::MetricsAccess::from_env(),
            database_pool_size,
            ..d
        })
    }
}

/// Where a relay's events come from: the bus, and with NATS a connection on which the relay
/// subscribes once to every user's topic (`<prefix>.user.*`) instead of once per connected
/// user. A per-user subscription costs ~6 KiB of client buffer per connection (async-nats
/// gives each subscription its own channel, whose first block holds 32 messages) and a
/// SUB + flush round trip per connect; user events (joins, removals, ended sessions) are
/// few, and the hub drops those of users it does not have.
#[derive(Clone)]
pub struct Subscriber {
    pub bus: Bus,
    users: Option<UserFeed>,
}

#[derive(Clone)]
struct UserFeed {
    client: async_nats::Client,
    prefix: String,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("bus", &self.bus.describe())
            .field("one_subscription_for_all_users", &self.users.is_some())
            .finish()
    }
}

impl From<Bus> for Subscriber {
    /// A bus alone: the relay subscribes to each connected user's topic on it.
    fn from(bus: Bus) -> Self {
        Self { bus, users: None }
    }
}

/// Connects the relay's own NATS subscriber: its subscription buffers hold `capacity` events,
/// and what NATS drops for a full one is counted (and recovered by rev).
pub async fn connect_nats(url: &str, prefix: &str, capacity: usize) -> Result<Subscriber, String> {
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let options = async_nats::ConnectOptions::new()
        .name("ws-relay")
        .subscription_capacity(capacity)
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("NATS dropped events for a full subscription; the relay catches up by rev");
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
    let bus = NatsBus::connect(url, prefix, options, dropped).await?;
    let users = UserFeed {
        client: bus.client.clone(),
        prefix: prefix.to_owned(),
    };
    Ok(Subscriber {
        bus: Arc::new(bus),
        users: Some(users),
    })
}

/// The bus the relay subscribes to: the process's own when it is in-process, else a NATS
/// connection of the relay's own (its buffers are sized for fan-out, not for publishing).
pub async fn subscriber_for(
    state: &AppState,
    nats_url: Option<&str>,
    prefix: &str,
    settings: &RelaySettings,
) -> Result<Subscriber, String> {
    match nats_url {
        None if state.events.describe() == "in-process" => Ok(state.events.clone().into()),
        None => Err("NATS_URL is needed for the relay".into()),
        Some(url) => connect_nats(url, prefix, settings.subscription_capacity).await,
    }
}

/// `state` with a pool of the relay's own: [`RelaySettings::database_pool_size`] connections
/// to `database_url`, for a relay that runs in the API's process (`windi serve`). Everything
/// else (token keys, the bus) stays shared.
pub async fn with_own_pool(
    state: &AppState,
    database_url: &str,
    settings: &RelaySettings,
) -> Result<AppState, String> {
    let db = windi_shared::store::connect(database_url, settings.database_pool_size)
        .await
        .map_err(|e| {
            format!(
                "cannot connect the relay's pool to DATABASE_URL ({}): {e}",
                windi_shared::config::redact_url(database_url)
            )
        })?;
    Ok(AppState {
        db,
        ..state.clone()
    })
}

/// Subscribes to every user's topic at once and hands what arrives to the hub.
async fn feed_users(hub: &Arc<Hub>, feed: UserFeed) -> Result<(), String> {
    let subject = format!("{}.user.*", feed.prefix);
    let sub = feed
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| format!("subscribe {subject}: {e}"))?;
    // Before any connection registers, so no user event can pass unheard (while NATS is
    // still connecting, the poller covers what passes, as for every subscription).
    if tokio::time::timeout(Duration::from_secs(2), feed.client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS flush timed out; the poller covers user events meanwhile");
    }
    let events = sub
        .filter_map(|msg| async move {
            match serde_json::from_slice::<windi_shared::events::Event>(&msg.payload) {
                Ok(event) => Some(Arc::new(event)),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable event skipped");
                    None
                }
            }
        })
        .boxed();
    hub.feed_users(events);
    Ok(())
}

/// A running relay's shared parts.
#[derive(Debug, Clone)]
struct Relay {
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    shutdown: watch::Receiver<bool>,
}

/// Controls a started relay: where it listens, its counters, and shutting it down.
#[derive(Debug)]
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    hub: Arc<Hub>,
    server: tokio::task::JoinHandle<()>,
    keeper: Arc<keeper::Keeper>,
    keeping: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Closes every connection with 1012 (clients reconnect and resume) and stops serving.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.keeping.abort();
        self.keeper.write_receipts().await;
        self.keeper.goodbye().await;
        self.hub.stop();
    }

    /// Ends the relay as a crash would, for tests: no close frames, no goodbye, no more
    /// heartbeats; its connections drop and its presence rows stay until they expire.
    pub fn crash(self) {
        self.keeping.abort();
        self.server.abort();
        self.hub.stop();
    }

    /// This relay's name in `relays` (presence).
    pub fn relay_id(&self) -> &str {
        &self.keeper.relay_id
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.hub.snapshot()
    }

    /// The relay's hub (tests drive [`Hub::catch_up`] through it).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Resolves when the server task ends (after [`RelayHandle::stop`] or a fatal error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Starts a relay on `listener`, with `state` (pool, token keys, publisher; give it a pool of
/// its own with [`with_own_pool`]) and receiving events from `subscriber` (see
/// [`subscriber_for`]). Fails if Postgres does not answer the feed's first read.
pub async fn start(
    state: AppState,
    subscriber: Subscriber,
    settings: RelaySettings,
    listener: tokio::net::TcpListener,
) -> Result<RelayHandle, String> {
    let stats = Arc::new(Stats::default());
    let hub = Hub::new(
        state.db.clone(),
        subscriber.bus,
        settings.queue_capacity,
        stats.clone(),
    );
    if let Some(feed) = subscriber.users {
        feed_users(&hub, feed).await?;
    }
    hub.start(settings.poll_interval)
        .await
        .map_err(|e| format!("cannot read the relay's feed from Postgres: {e}"))?;
    export_metrics(&hub);
    hub.feed_presence().await?;
    let keeper = Arc::new(keeper::Keeper::new(
        hub.clone(),
        state.db.clone(),
        state.events.clone(),
    ));
    let keeping = tokio::spawn(keeper.clone().run());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let relay = Relay {
        hub: hub.clone(),
        state,
        settings: Arc::new(settings),
        shutdown: shutdown_rx.clone(),
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = router(relay);
    let mut stop = shutdown_rx;
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|&stopped| stopped).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "relay server failed");
        }
    });
    tracing::info!(address = %addr, "ws-relay listening (GET /ws)");
    Ok(RelayHandle {
        addr,
        stats,
        shutdown: shutdown_tx,
        hub,
        server,
        keeper,
        keeping,
    })
}

fn router(relay: Relay) -> Router {
    let metrics_access = relay.settings.metrics.clone();
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(health))
        .with_state(relay)
        .merge(windi_shared::http::metrics::router(metrics_access));
    windi_shared::http::runtime::with_http_layers(app)
}

/// The hubs of this process, summed into the `windi_relay_*` series at every scrape (one in
/// production; tests run many).
static HUBS: std::sync::Mutex<Vec<std::sync::Weak<Hub>>> = std::sync::Mutex::new(Vec::new());

fn export_metrics(hub: &Arc<Hub>) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    if let Ok(mut hubs) = HUBS.lock() {
        hubs.push(Arc::downgrade(hub));
    }
    REGISTERED.call_once(|| {
        windi_shared::http::metrics::add_collector(|| {
            let Ok(mut hubs) = HUBS.lock() else { return };
            hubs.retain(|h| h.strong_count() > 0);
            let mut total = [0u64; 18];
            for hub in hubs.iter().filter_map(std::sync::Weak::upgrade) {
                let s = hub.snapshot();
                let values = [
                    s.connections,
                    s.delivered,
                    s.slow_consumers,
                    s.gaps,
                    s.backfilled,
                    s.backfill_failures,
                    s.nudges,
                    s.reconciles,
                    s.poll_failures,
                    s.broker_dropped,
                    s.polls,
                    s.poll_queries,
                    s.feed_rows,
                    s.catch_up_queries,
                    s.catch_up_coalesced,
                    s.markers_recovered,
                    s.delivered_recovered,
                    s.receipts_dropped,
                ];
                for (t, v) in total.iter_mut().zip(values) {
                    *t += v;
                }
            }
            let [
                connections,
                delivered,
                slow,
                gaps,
                backfilled,
                backfill_failures,
                nudges,
                reconciles,
                poll_failures,
                dropped,
                polls,
                poll_queries,
                feed_rows,
                catch_up_queries,
                catch_up_coalesced,
                markers_recovered,
                delivered_recovered,
                receipts_dropped,
            ] = total;
            metrics::gauge!("windi_relay_connections").set(connections as f64);
            metrics::counter!("windi_relay_deliveries_total").absolute(delivered);
            metrics::counter!("windi_relay_slow_consumers_total").absolute(slow);
            metrics::counter!("windi_relay_gaps_total").absolute(gaps);
            metrics::counter!("windi_relay_backfilled_changes_total").absolute(backfilled);
            metrics::counter!("windi_relay_backfill_failures_total").absolute(backfill_failures);
            metrics::counter!("windi_relay_poller_nudges_total").absolute(nudges);
            metrics::counter!("windi_relay_reconciles_total").absolute(reconciles);
            metrics::counter!("windi_relay_poll_failures_total").absolute(poll_failures);
            metrics::counter!("windi_relay_broker_dropped_total").absolute(dropped);
            metrics::counter!("windi_relay_polls_total").absolute(polls);
            metrics::counter!("windi_relay_poll_queries_total").absolute(poll_queries);
            metrics::counter!("windi_relay_feed_rows_total").absolute(feed_rows);
            metrics::counter!("windi_relay_catch_up_queries_total").absolute(catch_up_queries);
            metrics::counter!("windi_relay_catch_up_coalesced_total").absolute(catch_up_coalesced);
            metrics::counter!("windi_relay_markers_recovered_total").absolute(markers_recovered);
            metrics::counter!("windi_relay_delivered_recovered_total")
                .absolute(delivered_recovered);
            metrics::counter!("windi_relay_receipts_dropped_total").absolute(receipts_dropped);
        });
    });
}

async fn health(State(relay): State<Relay>) -> axum::Json<StatsSnapshot> {
    axum::Json(relay.hub.snapshot())
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: checks origin, token and the per-user cap before upgrading, so a refused client
/// gets an ordinary HTTP error it can read.
async fn upgrade(
    State(relay): State<Relay>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Err(e) = check_origin(&relay.settings, &headers) {
        return e.into_response();
    }
    let token = bearer_token(headers.get(header::AUTHORIZATION)).or(query.token.as_deref());
    let Some(token) = token else {
        return Error::Unauthorized("missing token: send Authorization: Bearer or ?token=")
            .into_response();
    };
    let subject = match relay.state.tokens.verify(token) {
        Ok(subject) => subject,
        Err(e) => return e.into_response(),
    };
    match sessions::check(&relay.state.db, subject.session_id, subject.user_id).await {
        Ok(true) => {}
        Ok(false) => {
            return Error::Unauthorized(windi_shared::service::auth::TOKEN_REFUSED).into_response();
        }
        Err(e) => return Error::from(e).into_response(),
    }
    let user_id = subject.user_id;
    let Some(slot) = relay
        .hub
        .reserve(user_id, relay.settings.max_connections_per_user)
    else {
        return Error::Rejected {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_connections",
            detail: format!(
                "at most {} connections per user",
                relay.settings.max_connections_per_user
            ),
        }
        .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return Error::BadRequest {
                code: "not_a_websocket",
                detail: e.body_text(),
            }
            .into_response();
        }
    };
    // tungstenite refuses frames over 4x the limit as it reads their header (and the socket
    // is reset under the unread rest); frames between the two are read whole and refused by
    // the connection with a proper 1009. The small read buffer grows only for such a frame.
    let hard_limit = relay.settings.max_frame_bytes * 4;
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(relay.settings.read_buffer_bytes)
        // Live events queued together are written as one batch and flushed once (see
        // `Session::on_live_batch`); frames go out once this much is buffered, and at the
        // flush. Small, as it stays allocated per socket that has been busy. The cap bounds
        // what a client that stopped reading can make the relay hold.
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(2 * 1024 * 1024)
        .on_upgrade(move |socket| {
            connection::run(
                slot,
                socket,
                relay.hub,
                relay.state,
                relay.settings,
                subject,
                relay.shutdown,
            )
        })
}

fn check_origin(settings: &RelaySettings, headers: &HeaderMap) -> Result<(), Error> {
    let (Some(allowed), Some(origin)) = (&settings.allowed_origins, headers.get(header::ORIGIN))
    else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    if allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "origin {origin:?} is not allowed (RELAY_ALLOWED_ORIGINS)"
        )))
    }
}
