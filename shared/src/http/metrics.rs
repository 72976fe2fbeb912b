//! Prometheus metrics: one recorder per process, rendered at `GET /metrics` by the API and by
//! the relay.
//!
//! Counters and histograms are recorded where things happen (`metrics::counter!` in the send
//! path, the event publisher and the HTTP layer). Values that already live elsewhere (the pool's
//! size, the relay's counters) are copied in at scrape time by [`add_collector`] callbacks, so
//! nothing polls in the background and every scrape is current.
//!
//! Protection: with `METRICS_TOKEN` set, `/metrics` answers only `Authorization: Bearer
//! <token>` (401 otherwise); unset, it is open, which suits a private network or a laptop. See
//! docs/operations.md ("Metrics") for every series.

use std::sync::{Mutex, OnceLock};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{config::optional, domain::error::Error, http::extract::bearer_token};

/// Latency buckets for HTTP requests, in seconds: 1 ms to 10 s, dense where a chat API lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Collector = Box<dyn Fn() + Send + Sync>;

/// Scrape-time callbacks: each copies a value that lives elsewhere into the recorder.
static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// The process's recorder, installed on first use. `None` if another recorder was installed
/// first (then windi's series go there and `/metrics` says it cannot render).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Registers a callback run before every render (e.g. the pool's gauges, the relay's counters).
pub fn add_collector(collect: impl Fn() + Send + Sync + 'static) {
    if let Ok(mut collectors) = COLLECTORS.lock() {
        collectors.push(Box::new(collect));
    }
}

/// Exposes a pool as `windi_db_pool_connections{state="idle"|"in_use"}` and
/// `windi_db_pool_max_connections`, read at scrape time. Waits that ran out are
/// `windi_db_pool_timeouts_total`, counted where the error is converted.
pub fn watch_pool(pool: &sqlx::PgPool, name: &'static str) {
    let pool = pool.clone();
    add_collector(move || {
        let size = f64::from(pool.size());
        let idle = pool.num_idle() as f64;
        metrics::gauge!("windi_db_pool_connections", "pool" => name, "state" => "idle").set(idle);
        metrics::gauge!("windi_db_pool_connections", "pool" => name, "state" => "in_use")
            .set((size - idle).max(0.0));
        metrics::gauge!("windi_db_pool_max_connections", "pool" => name)
            .set(f64::from(pool.options().get_max_connections()));
    });
}

/// The Prometheus text exposition of everything recorded in this process.
fn render() -> Option<String> {
    let handle = handle()?;
    if let Ok(collectors) = COLLECTORS.lock() {
        for collect in collectors.iter() {
            collect();
        }
    }
    // Without the exporter's own HTTP listener nothing drains histograms in the background.
    handle.run_upkeep();
    Some(handle.render())
}

/// Who may read `/metrics`: `METRICS_TOKEN`, when set, as a bearer token.
#[derive(Clone, Default)]
pub struct MetricsAccess {
    token: Option<String>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl MetricsAccess {
    pub fn from_env() -> Self {
        Self::with_token(optional("METRICS_TOKEN"))
    }

    pub fn with_token(token: Option<String>) -> Self {
        Self { token }
    }

    pub fn is_open(&self) -> bool {
        self.token.is_none()
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        match &self.token {
            None => true,
            Some(expected) => bearer_token(headers.get(header::AUTHORIZATION))
                .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes())),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /metrics` as an axum handler; mount it with `.route("/metrics", get(endpoint))` on a
/// router whose state is a [`MetricsAccess`] (or with `with_state`).
async fn endpoint(State(access): State<MetricsAccess>, headers: HeaderMap) -> Response {
    if !access.allows(&headers) {
        return Error::Unauthorized("GET /metrics needs Authorization: Bearer <METRICS_TOKEN>")
            .into_response();
    }
    match render() {
        Some(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => Error::Internal("another metrics recorder is installed".into()).into_response(),
    }
}

/// A router serving `GET /metrics` under `access`, to merge into an application.
pub fn router<S: Clone + Send + Sync + 'static>(access: MetricsAccess) -> axum::Router<S> {
    axum::Router::new()
        .route("/metrics", axum::routing::get(endpoint))
        .with_state(access)
}

/// Route layer: `http_requests_total` and `http_request_duration_seconds` by method, matched
/// route (the template, never the raw path, so ids do not explode the label set) and status.
pub(crate) async fn track_http(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    record_http(method, route, response.status(), started.elapsed());
    response
}

/// Records one answered request (also used for answers given outside any route).
pub(crate) fn record_http(
    method: String,
    route: String,
    status: StatusCode,
    elapsed: std::time::Duration,
) {
    let status = status.as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_compared_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
