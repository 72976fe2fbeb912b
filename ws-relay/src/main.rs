//! `ws-relay`: the standalone relay. Needs `DATABASE_URL`, `JWT_SECRET_KEY` and `NATS_URL`
//! (several relays share events only through NATS); listens on `RELAY_PORT` (default 8001).
//! Its pool has `RELAY_DATABASE_POOL_SIZE` connections, as the relay inside `windi` does.

use std::{net::SocketAddr, process::ExitCode};

use windi_shared::{
    AppState,
    config::Config,
    http::runtime::{init_tracing, shutdown_signal},
    service::state::Broker,
};
use ws_relay::RelaySettings;

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    windi_shared::blobs::install_tls_provider();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            windi_shared::http::runtime::report_error("ws-relay", &e);
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let settings = RelaySettings::from_env().map_err(|e| e.to_string())?;
    // The process is the relay: its one pool is the relay's.
    let config = Config {
        db_max_connections: settings.database_pool_size,
        ..config
    };
    let state = AppState::connect(&config, Broker::Required, "ws-relay").await?;
    windi_shared::http::metrics::watch_pool(&state.db, "relay");
    let subscriber = ws_relay::subscriber_for(
        &state,
        config.nats_url.as_deref(),
        &config.nats_prefix,
        &settings,
    )
    .await?;
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on RELAY_PORT {}: {e}", settings.port))?;
    let relay = ws_relay::start(state, subscriber, settings, listener).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: closing connections with 1012 so clients resume elsewhere");
    relay.stop().await;
    Ok(())
}
