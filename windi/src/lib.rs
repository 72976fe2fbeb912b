//! The local stand-in for API Gateway: every function's routes behind one port, plus the
//! OpenAPI document, Swagger UI, and health checks.
//!
//! This is where the routers are merged — the one place that lists every route of windi.
//! The data tools live here too: [`demo`], [`generate`] and [`check`].

pub mod admin;
pub mod check;
pub mod cli;
pub mod demo;
pub mod generate;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use sqlx::{Postgres, migrate::MigrateDatabase};
use tower::util::MapResponseLayer;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Flow, OAuth2, Password, Scopes, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config, SwaggerUi};
use windi_shared::{
    AppState,
    config::{ConfigError, FilesConfig, optional},
    domain::model::{Health, Readiness},
    http::{SECURITY_SCHEME, runtime::HttpSettings},
    store::MIGRATOR,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "windi",
        description = "A chat backend: JWT auth, private and group chats, idempotent messages \
                       with gap-free per-chat seq, history, read marks.\n\n\
                       Press **Authorize** and log in with your email as the username.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&OAuth2Password),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "chat", description = "Messages, history, read marks, chat list"),
        (name = "group", description = "Groups and their members"),
        (name = "ops", description = "Health checks"),
    )
)]
struct ApiDoc;

/// Swagger UI's Authorize button: the OAuth2 password flow against `/auth/login`.
struct OAuth2Password;

impl Modify for OAuth2Password {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/auth/login",
                Scopes::new(),
            ))])),
        );
    }
}

/// Every route of windi with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(windi_auth::routes())
        .merge(windi_message::routes())
        .merge(windi_group::routes())
        .merge(windi_history::routes())
        .merge(windi_read::routes())
        .routes(utoipa_axum::routes!(health))
        .routes(utoipa_axum::routes!(ready));
    document_common_errors(router.get_openapi_mut());
    router
}

/// Adds the error answers that any route can give for the shape of its request (rather than
/// for its logic), so each handler's annotation need only list its own: 400 for an unreadable
/// body, path or query, 401 where a token is required, 413 and 415 where there is a body, and
/// 422 for a well-formed request that breaks a rule.
fn document_common_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        if path == "/health" || path == "/ready" {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            let has_body = operation.request_body.is_some();
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut operation.responses.responses;
            let mut add = |code: &str, description: &str| {
                responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description).into());
            };
            add(
                "400",
                "The body, path or query could not be read; `detail` says where",
            );
            add("422", "A value breaks a rule; `detail` names the field");
            if secured {
                add("401", "Missing, invalid or expired token");
            }
            if has_body {
                add("413", "The body is over the 64 KiB limit");
                add("415", "The body is not of a supported content type");
            }
        }
    }
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The whole HTTP application for this state, with the browser client at `/` pointing at a
/// relay on `relay_port` of the same host.
pub fn app(state: AppState) -> Router {
    app_with_client(state, ClientConfig::default())
}

/// What the browser client needs to know that it cannot see from its own URL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientConfig {
    /// The relay's port on the page's host (`RELAY_PORT`), used when `relay_url` is unset.
    pub relay_port: u16,
    /// The relay's public WebSocket URL (`RELAY_PUBLIC_URL`, e.g. `wss://chat.example.com/ws`),
    /// for a relay behind a TLS proxy or on another host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    /// The origin of an S3 store's presigned links (`https://*.amazonaws.com`, or the origin
    /// of `FILES_S3_ENDPOINT`), which the page uploads to and downloads from; `None` when
    /// files are served by windi itself. Only the page's policy needs it.
    #[serde(skip)]
    pub files_source: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            relay_port: 8001,
            relay_url: None,
            files_source: None,
        }
    }
}

impl ClientConfig {
    /// `RELAY_PUBLIC_URL` (a `ws://` or `wss://` URL), with the relay's port as the fallback.
    pub fn from_env(relay_port: u16) -> Result<Self, ConfigError> {
        let relay_url = optional("RELAY_PUBLIC_URL");
        if let Some(url) = &relay_url
            && relay_source(url).is_none()
        {
            return Err(ConfigError::Invalid {
                var: "RELAY_PUBLIC_URL",
                reason: format!(
                    "{url:?}: write ws://host[:port]/ws or wss://host/ws \
                     (ASCII, no query, no spaces, quotes, ';' or ',')"
                ),
            });
        }
        Ok(Self {
            relay_port,
            relay_url,
            files_source: None,
        })
    }

    /// The same configuration with the page allowed to reach the file store of `files`.
    pub fn with_files(mut self, files: &FilesConfig) -> Self {
        self.files_source = match files {
            FilesConfig::S3 {
                endpoint: Some(url),
                ..
            } => origin_source(url),
            FilesConfig::S3 { endpoint: None, .. } => Some(AWS_FILES.into()),
            FilesConfig::Folder(_) | FilesConfig::Unset => None,
        };
        self
    }
}

/// Where object_store's AWS links point: `https://<bucket>.s3.<region>.amazonaws.com/…`.
const AWS_FILES: &str = "https://*.amazonaws.com";

/// The origin of an `http(s)://` URL as a CSP source: scheme, host and port, if it is printable
/// ASCII without a quote, `;` or `,` (which would end the source or the directive).
fn origin_source(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"?#;,'\"@".contains(&b))
    };
    (matches!(scheme, "http" | "https") && plain(authority))
        .then(|| format!("{scheme}://{authority}"))
}

/// [`app`] with an explicit client configuration.
pub fn app_with_client(state: AppState, client: ClientConfig) -> Router {
    app_with(state, client, &HttpSettings::default())
}

/// The whole HTTP application with explicit client and HTTP settings (CORS, `/metrics`
/// access): what `windi serve` runs.
pub fn app_with(state: AppState, client: ClientConfig, http: &HttpSettings) -> Router {
    let (router, api) = routes().split_for_parts();
    let api = with_password_minimum(api, state.password_rules.min_chars());
    // No validator badge: it would load an image from swagger.io, which the policy forbids.
    let docs: Router = SwaggerUi::new("/docs")
        .url("/openapi.json", api)
        .config(Config::default().validator_url("none"))
        .into();
    let router = router
        .with_state(state)
        .merge(docs.layer(MapResponseLayer::new(docs_headers)))
        .merge(static_client(client))
        .merge(windi_shared::http::metrics::router(http.metrics.clone()));
    windi_shared::http::runtime::with_http_settings(router, http)
}

/// The contract states the operator's `PASSWORD_MIN_LENGTH`, not the default the schema
/// attributes carry: a client (or a fuzzer) that follows it is never refused for length.
fn with_password_minimum(
    mut api: utoipa::openapi::OpenApi,
    min_chars: usize,
) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{RefOr, Schema};
    let Some(components) = api.components.as_mut() else {
        return api;
    };
    for (schema, field) in [
        ("RegisterUser", "password"),
        ("ChangePassword", "new_password"),
    ] {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
            && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
        {
            property.min_length = Some(min_chars);
        }
    }
    api
}

/// The browser client: plain files compiled into the binary (no build step, no CDN), each
/// answered with the page headers and the client's Content-Security-Policy.
fn static_client(config: ClientConfig) -> Router {
    use axum::response::IntoResponse;
    let csp = ClientCsp::new(&config);
    fn asset(content_type: &'static str, body: &'static str) -> axum::routing::MethodRouter {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        })
    }
    Router::new()
        .route(
            "/",
            asset(
                "text/html; charset=utf-8",
                include_str!("../static/index.html"),
            ),
        )
        .route(
            "/app.js",
            asset(
                "text/javascript; charset=utf-8",
                include_str!("../static/app.js"),
            ),
        )
        .route(
            "/style.css",
            asset(
                "text/css; charset=utf-8",
                include_str!("../static/style.css"),
            ),
        )
        .route(
            "/client-config.json",
            get(move || async move { axum::Json(config) }),
        )
        .layer(middleware::from_fn_with_state(csp, client_headers))
}

// The headers that keep a script from elsewhere out of the pages that hold the tokens (the
// client keeps them in sessionStorage, where any script of the page could read them). A
// reverse proxy in front must pass them on (docs/operations.md).

/// The browser client's policy, around the relay's address and the file store's (see
/// [`ClientCsp`]): only its own files (no inline script or style, no `eval`; images from
/// itself, `data:` (its empty favicon) and `blob:` (attachments, which it fetches with its
/// token and shows from memory)), its own API, that one WebSocket URL and the store its file
/// links point at, no `<base>`, no plugin, no framing, and no native form submission (app.js
/// handles every form, so a form that posted before app.js ran would put a password in the
/// URL).
fn client_csp(relay: &str, files: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         connect-src 'self'{relay}{files}; object-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// Swagger UI's policy (`/docs`): the client's, less the relay, plus one exception. Its
/// vendored page and initializer are files, its element styles are set through the DOM (which
/// `style-src 'self'` allows) and its icons are `data:` images in its CSS; but its logo is an
/// SVG with a `<style>` element, `.logo_small_svg__cls-2{fill:#fff}.logo_small_svg__cls-3{fill:
/// #85ea2d}`, allowed by its hash (that text alone, never `'unsafe-inline'`). A Swagger UI
/// whose logo changes fails the browser test, which names the new hash.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers of a page and its assets: `csp`, no framing for browsers that predate
/// `frame-ancestors`, no `Referer` to anywhere, no MIME sniffing.
fn set_page_headers(headers: &mut HeaderMap, csp: HeaderValue) {
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn docs_headers(mut response: Response) -> Response {
    set_page_headers(response.headers_mut(), HeaderValue::from_static(DOCS_CSP));
    response
}

async fn client_headers(State(csp): State<ClientCsp>, request: Request, next: Next) -> Response {
    let policy = csp.for_request(&request);
    let mut response = next.run(request).await;
    set_page_headers(response.headers_mut(), policy);
    response
}

/// Where the client's WebSocket may go, as app.js decides it: the relay's public URL when one
/// is set (one policy for every request), else the relay's port on the host the page was
/// asked from, which only the request tells.
#[derive(Debug, Clone)]
enum ClientCsp {
    Fixed(HeaderValue),
    SameHost { relay_port: u16, files: String },
}

impl ClientCsp {
    fn new(config: &ClientConfig) -> Self {
        // Checked like the relay's: one that cannot be a source is left out.
        let files = config
            .files_source
            .as_deref()
            .filter(|s| *s == AWS_FILES || origin_source(s).as_deref() == Some(*s))
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        match &config.relay_url {
            Some(url) => {
                // from_env refused a URL that cannot be a source; one set in code is left out
                // (the client then cannot connect) rather than let it widen the policy.
                let relay = relay_source(url).map(|url| format!(" {url}"));
                let csp = client_csp(relay.as_deref().unwrap_or_default(), &files);
                Self::Fixed(HeaderValue::try_from(csp).expect("a relay source is ASCII"))
            }
            None => Self::SameHost {
                relay_port: config.relay_port,
                files,
            },
        }
    }

    fn for_request(&self, request: &Request) -> HeaderValue {
        let (relay_port, files) = match self {
            Self::Fixed(csp) => return csp.clone(),
            Self::SameHost { relay_port, files } => (relay_port, files),
        };
        // ws://… also admits wss://… in CSP 3; both are named for browsers that predate it.
        let relay = request_host(request)
            .map(|host| format!(" ws://{host}:{relay_port}/ws wss://{host}:{relay_port}/ws"));
        HeaderValue::try_from(client_csp(relay.as_deref().unwrap_or_default(), files))
            .expect("a checked host is ASCII")
    }
}

/// `url` as a CSP source expression, if it can be one and app.js can append `?token=` to it:
/// a `ws://` or `wss://` URL of printable ASCII without a query, a fragment, a quote, `;` or
/// `,` (which would end the source or the directive).
fn relay_source(url: &str) -> Option<&str> {
    let scheme = url.starts_with("ws://") || url.starts_with("wss://");
    let plain = url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"?#;,'\"".contains(&b));
    (scheme && plain).then_some(url)
}

/// The host name (without the port) a request was addressed to, if it is a DNS name or an IP
/// address: it goes into the policy, so nothing else may.
fn request_host(request: &Request) -> Option<&str> {
    let authority = match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?,
        None => request.uri().authority()?.as_str(),
    };
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.split(':').next()?
    };
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    (!host.is_empty() && plain).then_some(host)
}

/// Creates the database if it does not exist, then applies pending migrations; returns the
/// versions and descriptions of the migrations this call applied.
///
/// It connects to the target database first and only falls back to the `postgres` maintenance
/// database to create it when Postgres says it does not exist, so a managed Postgres whose role
/// may not connect to `postgres` still works when the database is already there.
pub async fn prepare_database(url: &str) -> Result<Vec<String>, sqlx::Error> {
    let pool = match windi_shared::store::connect_unbounded(url, 1).await {
        Ok(pool) => pool,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            tracing::info!("creating the database");
            Postgres::create_database(url).await?;
            windi_shared::store::connect_unbounded(url, 1).await?
        }
        Err(e) => return Err(e),
    };
    let applied: std::collections::HashSet<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect())
}

/// A database error at start-up, as one line that says what to do about it.
pub fn explain_database_error(e: &sqlx::Error, url: &str) -> String {
    let shown = windi_shared::config::redact_url(url);
    let hint = match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => {
                " -- the password was refused: put the right one in DATABASE_URL                  (postgres://USER:PASSWORD@HOST:5432/windi), or unset DATABASE_URL to let windi                  run its own Postgres"
            }
            Some("28000") if db.message().contains("role") => {
                " -- that role does not exist: name an existing one in DATABASE_URL (Debian's                  packages make `postgres`, Homebrew makes one named after your login,                  postgres://$USER@localhost/windi), or unset DATABASE_URL to let windi run its                  own Postgres"
            }
            Some("28000") => {
                " -- pg_hba.conf refuses this connection: allow it there, or connect another                  way (a Unix socket, another user)"
            }
            Some("42501") => {
                " -- the role may not create the database: create it as an administrator                  (createdb windi), or grant CREATEDB"
            }
            _ => "",
        },
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            " -- nothing listens there: start Postgres, or unset DATABASE_URL to let windi run              its own"
        }
        // The pool reports a refused connection as a timeout: ask the address itself.
        sqlx::Error::PoolTimedOut => {
            return format!(
                "cannot prepare the database at DATABASE_URL ({shown}): {}",
                probe_address(url)
            );
        }
        _ => "",
    };
    format!("cannot prepare the database at DATABASE_URL ({shown}): {e}{hint}")
}

/// Why nothing answered at `url`'s address, found by connecting to it once.
fn probe_address(url: &str) -> String {
    use std::{net::ToSocketAddrs, str::FromStr, time::Duration};
    let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(url) else {
        return "no connection in time".into();
    };
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    let unset_hint = "or unset DATABASE_URL to let windi run its own";
    if host.starts_with('/') {
        let socket = std::path::Path::new(&host).join(format!(".s.PGSQL.{port}"));
        return if socket.exists() {
            format!("the socket {} took no connection in time", socket.display())
        } else {
            format!(
                "nothing listens there: there is no socket {}; start Postgres, {unset_hint}",
                socket.display()
            )
        };
    }
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    let Some(addr) = addrs.first() else {
        return format!("the host name {host} does not resolve: check DATABASE_URL");
    };
    match std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens at {host}:{port}: start Postgres there, {unset_hint}")
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => format!(
            "no answer from {host}:{port} in 2 s: is the host reachable (its address, a firewall)?"
        ),
        Err(e) => format!("cannot reach {host}:{port}: {e}"),
        Ok(_) => format!(
            "{host}:{port} accepts connections but no Postgres session was set up in time \
             (is it Postgres, and is it overloaded?)"
        ),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: Postgres answers a query and the event broker is connected.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is down; the body says which", body = Readiness),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let db_ok = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let broker_ok = state.events.is_connected();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    let status = if db_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            status: word(db_ok && broker_ok),
            database: word(db_ok),
            broker: format!("{} ({})", word(broker_ok), state.events.describe()),
        }),
    )
}
