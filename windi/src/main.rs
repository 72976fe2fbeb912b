//! `windi`: the whole system in one process for development, compose and tests. Creates and
//! migrates its database (its own embedded Postgres when `DATABASE_URL` is unset), then serves
//! every route on `PORT` (default 8000) and the WebSocket relay on `RELAY_PORT` (default 8001).
//! Also the operator's tools: `migrate`, `healthcheck`, `admin`, and the data tools `demo`,
//! `generate`, `check`. See `windi --help`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;
use windi::cli::{AdminCommand, Cli, Command, GenerateArgs, HealthcheckArgs};
use windi_embedded::postgres::EmbeddedPostgres;
use windi_shared::{
    AppState,
    config::{Config, load_dotenv, optional},
    http::runtime::{HttpSettings, StopSignals, init_tracing, report_error, serve_until},
    service::state::Broker,
};
use ws_relay::RelaySettings;

#[tokio::main]
async fn main() -> ExitCode {
    // First thing: a Ctrl-C, SIGTERM or SIGHUP from here on stops windi cleanly, stopping the
    // Postgres it started, instead of ending the process with that server left running.
    let mut signals = StopSignals::register();
    // clap prints --help, --version and usage errors itself (once, exit 0 or 2).
    let cli = Cli::parse();
    windi_shared::blobs::install_tls_provider();
    load_dotenv();
    init_tracing();
    let command = cli.command.unwrap_or(Command::Serve);
    let name = format!("windi {}", command_name(&command));
    let result = match command {
        Command::Serve => serve_all(signals).await,
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Demo => until_signal(&mut signals, demo()).await,
        Command::Generate(args) => until_signal(&mut signals, generate(args)).await,
        Command::Check => until_signal(&mut signals, check()).await,
        Command::Migrate => until_signal(&mut signals, migrate()).await,
        Command::Admin(admin) => until_signal(&mut signals, admin_command(admin)).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&name, &e);
            ExitCode::FAILURE
        }
    }
}

/// Runs a command to its end, or until a signal drops it where it stands: its transaction
/// rolls back, and the embedded Postgres it started (if it did) stops with it.
async fn until_signal(
    signals: &mut StopSignals,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::select! {
        result = work => result,
        () = signals.recv() => Err("stopped by a signal (a transaction in flight was rolled back)".into()),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Serve => "serve",
        Command::Demo => "demo",
        Command::Generate(_) => "generate",
        Command::Check => "check",
        Command::Migrate => "migrate",
        Command::Healthcheck(_) => "healthcheck",
        Command::Admin(_) => "admin",
    }
}

/// The configuration, with the database it names, or windi's own Postgres when
/// `DATABASE_URL` is unset. The embedded server lives as long as the returned guard.
fn config_and_database() -> Result<(Config, Option<EmbeddedPostgres>), String> {
    if optional("DATABASE_URL").is_some() {
        return Ok((Config::from_env().map_err(|e| e.to_string())?, None));
    }
    // Everything else is checked before a server is started for it.
    Config::from_env_with_database(String::new()).map_err(|e| e.to_string())?;
    let data_dir = PathBuf::from(optional("WINDI_DATA_DIR").unwrap_or_else(|| ".windi".into()));
    let embedded = EmbeddedPostgres::start(&data_dir)?;
    let config = Config::from_env_with_database(embedded.url.clone()).map_err(|e| e.to_string())?;
    Ok((config, Some(embedded)))
}

/// Loads the configuration and makes sure the database exists and is migrated.
async fn prepared_config() -> Result<(Config, Option<EmbeddedPostgres>), String> {
    let (config, embedded) = config_and_database()?;
    windi::prepare_database(&config.database_url)
        .await
        .map_err(|e| windi::explain_database_error(&e, &config.database_url))?;
    Ok((config, embedded))
}

async fn serve_all(mut signals: StopSignals) -> Result<(), String> {
    let relay_settings = RelaySettings::from_env().map_err(|e| e.to_string())?;
    let http = HttpSettings::from_env().map_err(|e| e.to_string())?;
    let client = windi::ClientConfig::from_env(relay_settings.port).map_err(|e| e.to_string())?;
    let (config, _embedded) = prepared_config().await?;
    let client = client.with_files(&config.files);
    let state = AppState::connect(&config, Broker::LocalFallback, "windi").await?;
    if config.session_cache {
        state.sync_sessions();
    }
    windi::admin::spawn_pruning(state.db.clone(), state.files.clone());
    windi_shared::http::metrics::watch_pool(&state.db, "api");
    match &config.nats_url {
        Some(url) => tracing::info!(%url, "events go to NATS"),
        None => tracing::info!(
            "NATS_URL is not set: events stay in this process (fine for one local windi; \
             set NATS_URL to run Lambda functions or several relays)"
        ),
    }
    if http.metrics.is_open() {
        tracing::info!("GET /metrics is open; set METRICS_TOKEN to require a bearer token");
    }

    // WINDI_RELAY=off leaves the relay to a separate ws-relay service (as compose does); the
    // browser client is still pointed at RELAY_PORT (or RELAY_PUBLIC_URL).
    let relay_port = relay_settings.port;
    let relay = if matches!(optional("WINDI_RELAY").as_deref(), Some("off")) {
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
        // Its own pool: a storm of catch-ups (a relay restart, a lost event in a big group)
        // waits for the relay's connections and never turns into 503s on the API.
        let relay_state =
            ws_relay::with_own_pool(&state, &config.database_url, &relay_settings).await?;
        windi_shared::http::metrics::watch_pool(&relay_state.db, "relay");
        let relay_db = relay_state.db.clone();
        let relay = ws_relay::start(relay_state, subscriber, relay_settings, listener).await?;
        tracing::info!("WebSocket relay at ws://localhost:{relay_port}/ws");
        Some((relay, relay_db))
    };

    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    tracing::info!("Swagger UI at http://localhost:{}/docs", config.port);
    let stop = async move { signals.recv().await };
    let served = serve_until(windi::app_with(state.clone(), client, &http), addr, stop)
        .await
        .map_err(|e| format!("cannot serve on PORT {}: {e}", config.port));
    // The API stopped (a signal): close WebSockets with 1012 so clients reconnect and resume.
    if let Some((relay, relay_db)) = relay {
        relay.stop().await;
        relay_db.close().await;
    }
    // Close the pool before the embedded Postgres (dropped after this) is stopped.
    state.db.close().await;
    served
}

async fn migrate() -> Result<(), String> {
    let (config, _embedded) = config_and_database()?;
    let applied = windi::prepare_database(&config.database_url)
        .await
        .map_err(|e| windi::explain_database_error(&e, &config.database_url))?;
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for migration in applied {
        println!("applied {migration}");
    }
    Ok(())
}

async fn demo() -> Result<(), String> {
    let (config, _embedded) = prepared_config().await?;
    let state = AppState::connect(&config, Broker::LocalFallback, "windi-demo").await?;
    let outcome = windi::demo::run(windi::app(state.clone())).await?;
    state.db.close().await;
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

async fn generate(args: GenerateArgs) -> Result<(), String> {
    let options = windi::generate::Options {
        users: args.users,
        chats: args.chats,
        messages: args.messages,
        group_share: args.group_share,
        min_group: args.min_group,
        max_group: args.max_group,
        seed: args.seed,
        tail_chats: args.tail_chats,
        tail_messages: args.tail_messages,
        ..windi::generate::Options::default()
    };
    let (config, _embedded) = prepared_config().await?;
    let pool = windi_shared::store::connect_unbounded(&config.database_url, 2)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "generating {} users, {} chats, {} messages (seed {})",
        options.users, options.chats, options.messages, options.seed
    );
    if options.tail_chats > 0 {
        eprintln!(
            "and the long tail: {} chats of {} messages each",
            options.tail_chats, options.tail_messages
        );
    }
    let report = windi::generate::run(&pool, &options).await?;
    pool.close().await;
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

async fn check() -> Result<(), String> {
    let (config, _embedded) = config_and_database()?;
    let pool = windi_shared::store::connect_unbounded(&config.database_url, 2)
        .await
        .map_err(|e| windi::explain_database_error(&e, &config.database_url))?;
    let started = Instant::now();
    let violations = windi::check::run(&pool).await.map_err(|e| e.to_string())?;
    pool.close().await;
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

async fn admin_command(command: AdminCommand) -> Result<(), String> {
    let (config, _embedded) = config_and_database()?;
    let pool = windi_shared::store::connect_unbounded(&config.database_url, 1)
        .await
        .map_err(|e| windi::explain_database_error(&e, &config.database_url))?;
    let result = match command {
        AdminCommand::Users { limit, search } => windi::admin::list_users(&pool, limit, search)
            .await
            .map(|users| {
                println!("{:>8}  {:<24} {:<32} created", "id", "name", "email");
                for u in users {
                    println!(
                        "{:>8}  {:<24} {:<32} {}",
                        u.id,
                        u.name,
                        u.email,
                        u.created_at.format("%Y-%m-%d %H:%M")
                    );
                }
            })
            .map_err(|e| e.to_string()),
        AdminCommand::EndSessions { user_id } => windi::admin::end_sessions(&pool, user_id)
            .await
            .map(|n| println!("ended {n} session(s) of user {user_id}"))
            .map_err(|e| e.to_string()),
        AdminCommand::Disable { user_id } => match windi::admin::disable(&pool, user_id).await {
            Ok(true) => {
                println!("user {user_id} is disabled; their sessions have ended");
                Ok(())
            }
            Ok(false) => Err(format!("no user {user_id}")),
            Err(e) => Err(e.to_string()),
        },
        AdminCommand::Prune => {
            let files = windi_shared::service::state::open_files(&config)?
                .map(windi_shared::service::files::Files::new);
            windi::admin::prune(&pool, files.as_ref())
                .await
                .map(|p| {
                    println!(
                        "deleted {} used refresh token(s), {} ended session(s), {} upload(s) \
                         never sent, and the bytes of {} unreachable file(s)",
                        p.sessions.used_tokens,
                        p.sessions.sessions,
                        p.files.expired,
                        p.files.removed
                    );
                })
                .map_err(|e| e.to_string())
        }
        AdminCommand::Enable { user_id } => match windi::admin::enable(&pool, user_id).await {
            Ok(true) => {
                println!("user {user_id} can log in again");
                Ok(())
            }
            Ok(false) => Err(format!("no user {user_id}")),
            Err(e) => Err(e.to_string()),
        },
    };
    pool.close().await;
    result
}

/// `GET /ready` on 127.0.0.1:PORT with a bare TCP request (the image has no curl).
fn healthcheck(args: &HealthcheckArgs) -> Result<(), String> {
    use std::io::{Read, Write};
    let port = match args.port {
        Some(port) => port,
        None => windi_shared::config::parsed_or("PORT", 8000u16).map_err(|e| e.to_string())?,
    };
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("nothing answers on 127.0.0.1:{port}: {e}"))?;
    let timeout = Some(std::time::Duration::from_secs(3));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        args.path
    )
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
