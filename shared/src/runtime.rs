//! Serving a router: under `lambda_http` when the Lambda runtime is present, under `axum::serve`
//! otherwise. Also the layers every router gets (body limit, panic guard, tracing, fallback).

use std::{net::SocketAddr, process::ExitCode};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    response::{IntoResponse, Response},
};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    config::Config,
    error::Error,
    model::MAX_BODY_BYTES,
    state::{AppState, Broker},
};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Lambda ships stderr to CloudWatch.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Wraps a finished router in what every windi HTTP surface needs.
pub fn with_http_layers(router: Router) -> Router {
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            crate::deadline::run_to_completion,
        ))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                Error::Internal("handler panicked".into()).into_response()
            },
        ))
        .layer(TraceLayer::new_for_http())
}

async fn no_route(method: Method, uri: Uri) -> Response {
    Error::Rejected {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "no_route",
        detail: format!("no route for {method} {}", uri.path()),
    }
    .into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    Error::Rejected {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        detail: format!("{method} is not allowed on {}", uri.path()),
    }
    .into_response()
}

/// True inside AWS Lambda (the runtime API address is set by the platform).
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The `main` of every function crate: builds the state once, then serves `routes` as a Lambda
/// handler or as a local HTTP server on `PORT`.
pub async fn run_function(name: &str, routes: OpenApiRouter<AppState>) -> ExitCode {
    init_tracing();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => return fail(name, &e),
    };
    let state = match AppState::connect(&config, Broker::Required, name).await {
        Ok(state) => state,
        Err(e) => return fail(name, &e),
    };
    let app = function_app(routes, state);
    if in_lambda() {
        match crate::lambda::run(app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(name, &e),
        }
    } else {
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
    let (router, _api) = routes.split_for_parts();
    with_http_layers(router.with_state(state))
}

/// Serves until Ctrl-C or SIGTERM, finishing requests in flight.
pub async fn serve(app: Router, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Resolves on Ctrl-C or SIGTERM (what ECS, systemd and compose send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn fail(name: &str, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{name} cannot start: {error}");
    eprintln!("{name}: {error}");
    ExitCode::FAILURE
}
