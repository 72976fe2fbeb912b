//! Serving a router: under `lambda_http` when the Lambda runtime is present, under `axum::serve`
//! otherwise. Also the layers every router gets (body limit, panic guard, tracing, fallback).

use std::{net::SocketAddr, process::ExitCode};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    response::{IntoResponse, Response},
};
use tower_http::{
    LatencyUnit,
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    config::{Config, ConfigError, in_lambda, optional},
    domain::{error::Error, model::MAX_BODY_BYTES},
    http::{deadline, lambda, metrics, metrics::MetricsAccess, request_id},
    service::state::{AppState, Broker},
};

/// How log lines are written: `LOG_FORMAT=json` (one JSON object a line) or `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` if set; on Lambda otherwise `AWS_LAMBDA_LOG_FORMAT` (the function's logging
    /// config), and JSON where neither says, since CloudWatch Logs Insights queries JSON fields;
    /// text elsewhere.
    pub fn from_env() -> Result<Self, ConfigError> {
        let lambda_default = || match std::env::var("AWS_LAMBDA_LOG_FORMAT") {
            Ok(v) if v.eq_ignore_ascii_case("text") => Self::Text,
            _ => Self::Json,
        };
        match optional("LOG_FORMAT")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None if in_lambda() => Ok(lambda_default()),
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ConfigError::Invalid {
                var: "LOG_FORMAT",
                reason: format!("{other:?}: use json or text"),
            }),
        }
    }
}

/// Logs to stderr (Lambda ships it to CloudWatch), filtered by `RUST_LOG` (default `info`; on
/// Lambda `AWS_LAMBDA_LOG_LEVEL` wins, as in the runtime's own subscriber), in the
/// [`LogFormat`] of the environment. Colour codes only when stderr is a terminal, so none end
/// up in CloudWatch, `docker logs` or a file. Returns the format in use.
///
/// This mirrors `lambda_http::tracing::init_default_subscriber` (level and format from the
/// `AWS_LAMBDA_LOG_*` variables, no timestamps on Lambda since CloudWatch stamps each line)
/// instead of calling it, because that one writes ANSI codes in text mode and to stdout.
pub fn init_tracing() -> LogFormat {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let format = LogFormat::from_env().unwrap_or_else(|e| {
        eprintln!("warning: {e}; logging as text");
        LogFormat::Text
    });
    let directives = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .filter(|_| in_lambda())
        .or_else(|| std::env::var("RUST_LOG").ok())
        // sqlx reports Postgres's NOTICEs ("relation already exists, skipping") at info.
        .unwrap_or_else(|| "info,sqlx::postgres::notice=warn".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match (format, in_lambda()) {
        (LogFormat::Json, _) => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
    format
}

/// Settings of the HTTP surface that are not about any one route.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// `CORS_ALLOWED_ORIGINS`: `None` answers no CORS headers (same-origin browsers only).
    pub cors: Option<CorsOrigins>,
    /// Who may read `/metrics` (`METRICS_TOKEN`).
    pub metrics: MetricsAccess,
}

/// The origins allowed to call the API from a browser page of another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl HttpSettings {
    /// `CORS_ALLOWED_ORIGINS` (comma-separated origins such as `https://chat.example.com`, or
    /// `*`) and `METRICS_TOKEN`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cors = match optional("CORS_ALLOWED_ORIGINS").as_deref().map(str::trim) {
            None => None,
            Some("*") => Some(CorsOrigins::Any),
            Some(list) => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect();
                if let Some(bad) = origins.iter().find(|o| {
                    !(o.starts_with("http://") || o.starts_with("https://"))
                        || axum::http::HeaderValue::from_str(o).is_err()
                }) {
                    return Err(ConfigError::Invalid {
                        var: "CORS_ALLOWED_ORIGINS",
                        reason: format!(
                            "{bad:?} is not an origin; write scheme://host[:port], e.g. https://chat.example.com"
                        ),
                    });
                }
                Some(CorsOrigins::List(origins))
            }
        };
        Ok(Self {
            cors,
            metrics: MetricsAccess::from_env(),
        })
    }

    fn cors_layer(&self) -> Option<CorsLayer> {
        use axum::http::{HeaderName, HeaderValue, header};
        let origins = match self.cors.as_ref()? {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(
                list.iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            ),
        };
        // Bearer tokens, not cookies: no credentials mode, so `*` is safe to offer.
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    request_id::HEADER.clone(),
                ])
                .expose_headers([request_id::HEADER.clone(), header::RETRY_AFTER])
                .max_age(std::time::Duration::from_secs(3600)),
        )
    }
}

/// [`with_http_settings`] with the defaults: no CORS, `/metrics` not mounted by this call.
pub fn with_http_layers(router: Router) -> Router {
    with_http_settings(router, &HttpSettings::default())
}

/// Wraps a finished router in what every windi HTTP surface needs: body limit, panic guard,
/// request metrics, the request id (in the span, the response header and error bodies), a
/// request line at `info`, and CORS when configured. Outermost first: CORS, request id, trace,
/// metrics, routes.
pub fn with_http_settings(router: Router, settings: &HttpSettings) -> Router {
    metrics::handle();
    let router = router
        .route_layer(axum::middleware::from_fn(metrics::track_http))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // The deadline layer runs the handler on a task of its own, where the outer request-id
        // scope is not visible: scope it again inside.
        .layer(axum::middleware::from_fn(request_id::scope))
        .layer(axum::middleware::from_fn(deadline::run_to_completion))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                Error::Internal("handler panicked".into()).into_response()
            },
        ))
        .layer(axum::middleware::from_fn(request_id::scope))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %request.uri().path(),
                        request_id = request_id::of(request).unwrap_or_default(),
                    )
                })
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                )
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(PropagateRequestIdLayer::new(request_id::HEADER.clone()))
        .layer(SetRequestIdLayer::new(
            request_id::HEADER.clone(),
            MakeRequestUuid,
        ))
        .layer(axum::middleware::from_fn(request_id::sanitise));
    let router = match settings.cors_layer() {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost, so CORS preflights, 404s and caught panics carry it too: no browser takes a
    // JSON answer (local or Lambda) for a script or a stylesheet. A static value.
    router.layer(SetResponseHeaderLayer::if_not_present(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    ))
}

async fn no_route(method: Method, uri: Uri) -> Response {
    unmatched(&method, axum::http::StatusCode::NOT_FOUND);
    Error::Rejected {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "no_route",
        detail: format!("no route for {method} {}", uri.path()),
    }
    .into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    unmatched(&method, axum::http::StatusCode::METHOD_NOT_ALLOWED);
    Error::Rejected {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        detail: format!("{method} is not allowed on {}", uri.path()),
    }
    .into_response()
}

/// Answers outside every route are counted under one label, never under their raw path.
fn unmatched(method: &Method, status: axum::http::StatusCode) {
    metrics::record_http(
        method.as_str().to_owned(),
        "unmatched".into(),
        status,
        std::time::Duration::ZERO,
    );
}

/// The `main` of every function crate: builds the state once, then serves `routes` as a Lambda
/// handler or as a local HTTP server on `PORT`.
pub async fn run_function(name: &str, routes: OpenApiRouter<AppState>) -> ExitCode {
    init_tracing();
    crate::blobs::install_tls_provider();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => return fail(name, &e),
    };
    let settings = match HttpSettings::from_env() {
        Ok(settings) => settings,
        Err(e) => return fail(name, &e),
    };
    let state = match AppState::connect(&config, Broker::Required, name).await {
        Ok(state) => state,
        Err(e) => return fail(name, &e),
    };
    let app = function_app_with(routes, state.clone(), &settings);
    if in_lambda() {
        match lambda::run(app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(name, &e),
        }
    } else {
        if config.session_cache {
            state.sync_sessions();
        }
        let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
        match serve(app, addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(name, &e),
        }
    }
}

/// A function's whole HTTP application: its routes on `state`, with [`with_http_layers`]. The
/// same value is served locally and under Lambda (and driven by the Lambda parity tests).
pub fn function_app(routes: OpenApiRouter<AppState>, state: AppState) -> Router {
    function_app_with(routes, state, &HttpSettings::default())
}

/// [`function_app`] with explicit [`HttpSettings`] (CORS). A function serves no `/metrics`:
/// on Lambda each instance would answer for itself only; use CloudWatch's metrics there.
fn function_app_with(
    routes: OpenApiRouter<AppState>,
    state: AppState,
    settings: &HttpSettings,
) -> Router {
    let (router, _api) = routes.split_for_parts();
    with_http_settings(router.with_state(state), settings)
}

/// Serves until Ctrl-C, SIGTERM or SIGHUP, finishing requests in flight.
pub async fn serve(app: Router, addr: SocketAddr) -> std::io::Result<()> {
    serve_until(app, addr, shutdown_signal()).await
}

/// Serves until `stop` resolves, finishing requests in flight.
pub async fn serve_until(
    app: Router,
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    // The peer address feeds the per-address login limit (`extract::ClientAddress`).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

/// Resolves on Ctrl-C, SIGTERM (what ECS, systemd and compose send) or SIGHUP (the terminal
/// closed).
pub async fn shutdown_signal() {
    StopSignals::register().recv().await;
}

/// The signals that stop a process, registered when this is made: a process that makes it
/// first thing keeps a signal that arrives while it is still starting (its default action
/// would end the process on the spot, leaving behind what it had started) and acts on it once
/// it is ready to stop cleanly.
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Registers SIGINT, SIGTERM and SIGHUP (Ctrl-C elsewhere). Needs a Tokio runtime.
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|kind| signal(kind).ok())
            .collect();
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves when one of the signals arrives (or arrived since registering).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.signals.is_empty() {
                return std::future::pending().await;
            }
            let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
            futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn fail(name: &str, error: &dyn std::fmt::Display) -> ExitCode {
    report_error(name, error);
    ExitCode::FAILURE
}

/// Prints a fatal error exactly once: as a log line where logs are JSON (so it reaches the log
/// pipeline with the rest), else as one plain line on stderr, without a log prefix.
pub fn report_error(name: &str, error: &dyn std::fmt::Display) {
    if matches!(LogFormat::from_env(), Ok(LogFormat::Json)) {
        tracing::error!(error = %error, "{name} failed");
    } else {
        eprintln!("{name}: error: {error}");
    }
}
