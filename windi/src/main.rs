//! `windi`: the whole system in one process for development, compose and tests. Creates and
//! migrates its database, then serves every route on `PORT` (default 8000) and the WebSocket
//! relay on `RELAY_PORT` (default 8001). Also the data tools: `demo`, `generate`, `check`.

use std::{net::SocketAddr, process::ExitCode, time::Instant};

use windi_shared::{
    AppState,
    config::{Config, redact_url},
    runtime::{init_tracing, serve},
    state::Broker,
};
use ws_relay::RelaySettings;

const USAGE: &str = "\
usage: windi [command]

  serve        (default) the API on PORT and the WebSocket relay on RELAY_PORT
  demo         create the demo scenario (Alice, Bob, Carol, chats, read marks); idempotent
  generate     load data at scale with COPY:
                 --users N (10000) --chats N (5000) --messages N (1000000)
                 --group-share F (0.3) --min-group N (3) --max-group N (30) --seed N (42)
  check        verify the data invariants (gap-free seqs, marker ranges, memberships)
  healthcheck  exit 0 if this host's windi answers GET /ready (for container health checks)

Configuration comes from the environment and .env (see .env.example).";

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map_or("serve", String::as_str);
    let result = match command {
        "serve" => serve_all().await,
        "demo" => demo().await,
        "generate" => generate(&args[1..]).await,
        "check" => check().await,
        "healthcheck" => healthcheck(),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("windi {command}: {e}");
            eprintln!("windi {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration and makes sure the database exists and is migrated.
async fn prepared_config() -> Result<Config, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    windi::prepare_database(&config.database_url)
        .await
        .map_err(|e| {
            format!(
                "cannot prepare the database at DATABASE_URL ({}): {e}",
                redact_url(&config.database_url)
            )
        })?;
    Ok(config)
}

async fn serve_all() -> Result<(), String> {
    let config = prepared_config().await?;
    let relay_settings = RelaySettings::from_env().map_err(|e| e.to_string())?;
    let state = AppState::connect(&config, Broker::LocalFallback, "windi").await?;
    match &config.nats_url {
        Some(url) => tracing::info!(%url, "events go to NATS"),
        None => tracing::info!(
            "NATS_URL is not set: events stay in this process (fine for one local windi; \
             set NATS_URL to run Lambda functions or several relays)"
        ),
    }

    // WINDI_RELAY=off leaves the relay to a separate ws-relay service (as compose does); the
    // browser client is still pointed at RELAY_PORT.
    let relay_port = relay_settings.port;
    let relay = if matches!(
        windi_shared::config::optional("WINDI_RELAY").as_deref(),
        Some("off")
    ) {
        tracing::info!("WINDI_RELAY=off: no embedded WebSocket relay");
        None
    } else {
        let addr = SocketAddr::from(([0, 0, 0, 0], relay_port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on RELAY_PORT {relay_port}: {e}"))?;
        let subscriber = ws_relay::subscriber_for(
            &state,
            config.nats_url.as_deref(),
            &config.nats_prefix,
            &relay_settings,
        )
        .await?;
        let relay = ws_relay::start(state.clone(), subscriber, relay_settings, listener).await?;
        tracing::info!("WebSocket relay at ws://localhost:{relay_port}/ws");
        Some(relay)
    };

    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    tracing::info!("Swagger UI at http://localhost:{}/docs", config.port);
    let client = windi::ClientConfig { relay_port };
    let served = serve(windi::app_with_client(state, client), addr)
        .await
        .map_err(|e| format!("cannot serve on PORT {}: {e}", config.port));
    // The API stopped (a signal): close WebSockets with 1012 so clients reconnect and resume.
    if let Some(relay) = relay {
        relay.stop().await;
    }
    served
}

async fn demo() -> Result<(), String> {
    let config = prepared_config().await?;
    let state = AppState::connect(&config, Broker::LocalFallback, "windi-demo").await?;
    let outcome = windi::demo::run(windi::app(state)).await?;
    println!(
        "demo ready: private chat {}, group \"Project Team\" {} ({} new messages)",
        outcome.private_chat, outcome.group_chat, outcome.new_messages
    );
    println!("log in at http://localhost:{} with:", config.port);
    for login in &outcome.logins {
        println!(
            "  {:<6} {:<20} password: {}  (user id {})",
            login.name, login.email, login.password, login.id
        );
    }
    Ok(())
}

async fn generate(args: &[String]) -> Result<(), String> {
    let options = generate_options(args)?;
    let config = prepared_config().await?;
    let pool = windi_shared::db::connect(&config.database_url, 2)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "generating {} users, {} chats, {} messages (seed {})",
        options.users, options.chats, options.messages, options.seed
    );
    let report = windi::generate::run(&pool, &options).await?;
    println!(
        "generated {} users, {} chats, {} messages in {:.1} s; messages loaded at {:.0}/s",
        report.users,
        report.chats,
        report.messages,
        report.elapsed.as_secs_f64(),
        report.messages_per_second()
    );
    println!(
        "log in as {} (or user<N>.{}@example.com) with password {}",
        report.first_user_email,
        report.tag,
        windi::generate::GENERATED_PASSWORD
    );
    Ok(())
}

fn generate_options(args: &[String]) -> Result<windi::generate::Options, String> {
    let mut options = windi::generate::Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--users" => options.users = value.parse().map_err(|e| bad(&e))?,
            "--chats" => options.chats = value.parse().map_err(|e| bad(&e))?,
            "--messages" => options.messages = value.parse().map_err(|e| bad(&e))?,
            "--group-share" => options.group_share = value.parse().map_err(|e| bad(&e))?,
            "--min-group" => options.min_group = value.parse().map_err(|e| bad(&e))?,
            "--max-group" => options.max_group = value.parse().map_err(|e| bad(&e))?,
            "--seed" => options.seed = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    if !(0.0..=1.0).contains(&options.group_share) {
        return Err("--group-share must be between 0 and 1".into());
    }
    Ok(options)
}

async fn check() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let pool = windi_shared::db::connect(&config.database_url, 2)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let violations = windi::check::run(&pool).await.map_err(|e| e.to_string())?;
    for invariant in windi::check::invariants() {
        let broken = violations.iter().find(|v| v.invariant == invariant);
        match broken {
            None => println!("ok      {invariant}"),
            Some(v) => println!("BROKEN  {invariant}: e.g. {:?}", v.examples),
        }
    }
    println!("checked in {:.1} s", started.elapsed().as_secs_f64());
    if violations.is_empty() {
        Ok(())
    } else {
        Err(format!("{} invariant(s) broken", violations.len()))
    }
}

/// `GET /ready` on 127.0.0.1:PORT with a bare TCP request (the image has no curl).
fn healthcheck() -> Result<(), String> {
    use std::io::{Read, Write};
    let port = windi_shared::config::parsed_or("PORT", 8000u16).map_err(|e| e.to_string())?;
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let timeout = Some(std::time::Duration::from_secs(3));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "not ready: {}",
            response.lines().next().unwrap_or("no answer")
        ))
    }
}
