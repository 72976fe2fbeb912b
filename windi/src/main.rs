//! `windi`: the whole system in one process for development, compose and tests. Creates and
//! migrates its database, then serves every route on `PORT` (default 8000) and the WebSocket
//! relay on `RELAY_PORT` (default 8001).

use std::{net::SocketAddr, process::ExitCode};

use windi_shared::{
    AppState,
    config::{Config, redact_url},
    runtime::{init_tracing, serve},
    state::Broker,
};
use ws_relay::{RelaySettings, RelaySource};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("windi cannot start: {e}");
            eprintln!("windi: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    windi::prepare_database(&config.database_url)
        .await
        .map_err(|e| {
            format!(
                "cannot prepare the database at DATABASE_URL ({}): {e}",
                redact_url(&config.database_url)
            )
        })?;
    let relay_settings = RelaySettings::from_env().map_err(|e| e.to_string())?;
    let state = AppState::connect(&config, Broker::LocalFallback, "windi").await?;
    match &config.nats_url {
        Some(url) => tracing::info!(%url, "events go to NATS"),
        None => tracing::info!(
            "NATS_URL is not set: events stay in this process (fine for one local windi; \
             set NATS_URL to run Lambda functions or several relays)"
        ),
    }

    // WINDI_RELAY=off leaves the relay to a separate ws-relay service (as compose does).
    let embedded_relay = !matches!(
        windi_shared::config::optional("WINDI_RELAY").as_deref(),
        Some("off")
    );
    if !embedded_relay {
        tracing::info!("WINDI_RELAY=off: no embedded WebSocket relay");
        let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
        return serve(windi::app(state), addr)
            .await
            .map_err(|e| format!("cannot serve on PORT {}: {e}", config.port));
    }
    let relay_port = relay_settings.port;
    let relay_listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], relay_port)))
            .await
            .map_err(|e| format!("cannot listen on RELAY_PORT {relay_port}: {e}"))?;
    let source = RelaySource::for_publisher(&state.events, config.nats_url.as_deref())?;
    let relay = ws_relay::start(state.clone(), source, relay_settings, relay_listener).await?;
    tracing::info!("WebSocket relay at ws://localhost:{relay_port}/ws");

    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    tracing::info!("Swagger UI at http://localhost:{}/docs", config.port);
    let client = windi::ClientConfig { relay_port };
    let served = serve(windi::app_with_client(state, client), addr)
        .await
        .map_err(|e| format!("cannot serve on PORT {}: {e}", config.port));
    // The API stopped (a signal): close WebSockets with 1012 so clients reconnect and resume.
    relay.stop().await;
    served
}
