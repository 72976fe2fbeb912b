//! The local stand-in for API Gateway: every function's routes behind one port, plus the
//! OpenAPI document, Swagger UI, and health checks.
//!
//! This is where the routers are merged — the one place that lists every route of windi.
//! The data tools live here too: [`demo`], [`generate`] and [`check`].

pub mod check;
pub mod demo;
pub mod generate;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use sqlx::{Postgres, migrate::MigrateDatabase};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Flow, OAuth2, Password, Scopes, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;
use windi_shared::{
    AppState, SECURITY_SCHEME,
    db::MIGRATOR,
    model::{Health, Readiness},
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
    /// The relay's port on the page's host (`RELAY_PORT`).
    pub relay_port: u16,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self { relay_port: 8001 }
    }
}

/// [`app`] with an explicit client configuration.
pub fn app_with_client(state: AppState, client: ClientConfig) -> Router {
    let (router, api) = routes().split_for_parts();
    let router = router
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .merge(static_client(client));
    windi_shared::runtime::with_http_layers(router)
}

/// The browser client: plain files compiled into the binary (no build step, no CDN).
fn static_client(config: ClientConfig) -> Router {
    use axum::{http::header, response::IntoResponse};
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
}

/// Creates the database if it does not exist, then applies pending migrations.
pub async fn prepare_database(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating the database");
        Postgres::create_database(url).await?;
    }
    let pool = windi_shared::db::connect(url, 1).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
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
