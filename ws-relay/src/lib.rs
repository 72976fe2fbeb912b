//! ws-relay: real-time delivery of committed chat events over WebSockets.
//!
//! A long-running service (ECS/Fargate or a VM in production; a task inside the local `windi`
//! binary in development). It authenticates a client with the same JWT as the API, subscribes
//! to the events of that user's chats, and delivers them with three promises:
//!
//! - **No loss.** Postgres is the record; an event is only news. Every message has a per-chat
//!   seq, so a connection always knows what it should receive next and fills any gap from
//!   Postgres, whether the event was dropped by a full buffer, a broker restart, or a handler
//!   that died between commit and publish (a poller finds those within
//!   [`RelaySettings::poll_interval`]).
//! - **No duplicates, in order.** Per connection and chat, a message below the next expected
//!   seq is dropped and one above it waits for the gap to be filled.
//! - **Bounded memory.** Each connection has a bounded queue; a client that cannot keep up is
//!   told so and disconnected, and resumes later from its last seq.
//!
//! See the README for the protocol; [`protocol`] has the frames.

pub mod connection;
pub mod hub;
pub mod protocol;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::watch;
use windi_shared::{
    AppState, Error,
    config::{ConfigError, optional, parsed_or},
    events::{LocalBus, Publisher},
    extract::bearer_token,
};

use crate::hub::{Hub, Source, Stats, StatsSnapshot};

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
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            subscription_capacity: 65_536,
        }
    }
}

impl RelaySettings {
    /// `RELAY_PORT`, `RELAY_ALLOWED_ORIGINS` (comma-separated, or `*`),
    /// `RELAY_MAX_CONNECTIONS_PER_USER`, `RELAY_QUEUE_CAPACITY`, `RELAY_IDLE_TIMEOUT_SECS`,
    /// `RELAY_POLL_INTERVAL_MS`.
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
            ..d
        })
    }
}

/// Where the relay's events come from.
#[derive(Debug, Clone)]
pub enum RelaySource {
    /// A NATS server (its own connection, with the relay's subscription buffer size), and the
    /// subject prefix the API publishes under.
    Nats { url: String, prefix: String },
    /// The in-process bus of the local binary.
    Local(LocalBus),
}

impl RelaySource {
    /// The source matching how `state` publishes: the same bus, or the same NATS.
    pub fn for_publisher(events: &Publisher, nats_url: Option<&str>) -> Result<Self, String> {
        match (events, nats_url) {
            (Publisher::Local(bus), _) => Ok(Self::Local(bus.clone())),
            (Publisher::Nats(nats), Some(url)) => Ok(Self::Nats {
                url: url.to_owned(),
                prefix: nats.prefix().to_owned(),
            }),
            (Publisher::Nats(_), None) => Err("NATS_URL is needed for the relay".into()),
        }
    }
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
}

impl RelayHandle {
    /// Closes every connection with 1012 (clients reconnect and resume) and stops serving.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.hub.stop();
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Resolves when the server task ends (after [`RelayHandle::stop`] or a fatal error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Starts a relay on `listener`, sharing `state` (pool, token keys, publisher) with the caller.
pub async fn start(
    state: AppState,
    source: RelaySource,
    settings: RelaySettings,
    listener: tokio::net::TcpListener,
) -> Result<RelayHandle, String> {
    let stats = Arc::new(Stats::default());
    let (hub_source, bus) = match source {
        RelaySource::Local(bus) => (Source::Local, Some(bus.subscribe())),
        RelaySource::Nats { url, prefix } => {
            let client = connect_nats(&url, settings.subscription_capacity, stats.clone()).await?;
            (Source::Nats { client, prefix }, None)
        }
    };
    let hub = Hub::new(
        state.db.clone(),
        hub_source,
        settings.queue_capacity,
        stats.clone(),
    );
    hub.start(settings.poll_interval, bus);
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
    })
}

/// A NATS connection for subscribing, counting what a full subscription buffer drops.
async fn connect_nats(
    url: &str,
    capacity: usize,
    stats: Arc<Stats>,
) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .name("ws-relay")
        .subscription_capacity(capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let stats = stats.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        Stats::add(&stats.broker_dropped, 1);
                        tracing::warn!(
                            "NATS dropped events for a full subscription; gap-fill recovers them"
                        );
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))
}

fn router(relay: Relay) -> Router {
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(health))
        .with_state(relay);
    windi_shared::runtime::with_http_layers(app)
}

async fn health(State(relay): State<Relay>) -> axum::Json<StatsSnapshot> {
    axum::Json(relay.hub.stats.snapshot())
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
    let user_id = match relay.state.tokens.verify(token) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if relay.hub.user_connections(user_id) >= relay.settings.max_connections_per_user {
        return Error::Rejected {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_connections",
            detail: format!(
                "at most {} connections per user",
                relay.settings.max_connections_per_user
            ),
        }
        .into_response();
    }
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
    let limit = relay.settings.max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            connection::run(
                socket,
                relay.hub,
                relay.state,
                relay.settings,
                user_id,
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
