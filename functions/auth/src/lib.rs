//! Sign-up, login and the caller's profile: `POST /auth/register`, `POST /auth/login`,
//! `GET /auth/me`.
//!
//! Login answers unknown emails and wrong passwords identically, in the same time (a dummy
//! hash is verified when the email is unknown), so the route cannot be used to find accounts.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    db::users,
    error::ErrorBody,
    extract::{AuthUser, Json, JsonOrForm},
    model::{LoginForm, Me, RegisterUser, TokenOut, UserOut},
    validate,
};

/// The routes of this function, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(me))
}

/// Create an account.
#[utoipa::path(
    post, path = "/auth/register", tag = "auth",
    request_body = RegisterUser,
    responses(
        (status = 201, description = "Account created", body = UserOut),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `detail` names it", body = ErrorBody),
    )
)]
async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterUser>,
) -> Result<(StatusCode, axum::Json<UserOut>)> {
    let name = validate::name("name", &body.name)?;
    let email = validate::email(&body.email)?;
    validate::password(&body.password)?;
    let hash = state.passwords.hash(body.password).await?;
    let user = users::insert(&state.db, &name, &email, &hash).await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// Log in with email and password (OAuth2 password form; JSON accepted too).
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body(
        content(
            (LoginForm = "application/x-www-form-urlencoded"),
            (LoginForm = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "An access token", body = TokenOut),
        (status = 401, description = "Incorrect email or password", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    JsonOrForm(form): JsonOrForm<LoginForm>,
) -> Result<axum::Json<TokenOut>> {
    let bad_credentials = Error::Unauthorized("incorrect email or password");
    if form.password.len() > windi_shared::model::MAX_PASSWORD_BYTES || form.username.contains('\0')
    {
        return Err(bad_credentials);
    }
    let found = users::credentials(&state.db, form.username.trim()).await?;
    let (user_id, hash) = match found {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let valid = state.passwords.verify(form.password, hash).await?;
    let user_id = user_id.filter(|_| valid).ok_or(bad_credentials)?;
    let issued = state.tokens.issue(user_id)?;
    Ok(axum::Json(TokenOut {
        access_token: issued.token,
        token_type: "bearer".into(),
        expires_in: issued.expires_in,
    }))
}

/// The caller's profile.
#[utoipa::path(
    get, path = "/auth/me", tag = "auth",
    security(("oauth2" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
    )
)]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<axum::Json<Me>> {
    let me = users::me(&state.db, user.id)
        .await?
        .ok_or(Error::Unauthorized("the token's user no longer exists"))?;
    Ok(axum::Json(me))
}
