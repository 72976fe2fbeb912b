//! Finding and blocking people: `GET /users/search`, `PUT`/`DELETE /users/{id}/block`,
//! `GET /users/blocked`. Nothing here ever answers an email: search finds a user by their exact
//! email, but answers only id and name, so it confirms an address only to someone who has it.
//! A search that can match an email (a `q` with an `@`) shares the per-address budget of
//! registrations (`LIMIT_EMAIL_LOOKUPS_*`), so neither serves to test a list of emails.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::{
        model::{
            DEFAULT_SEARCH_LIMIT, MAX_SEARCH_CHARS, MAX_SEARCH_LIMIT, MIN_SEARCH_CHARS, PersonOut,
            SearchQuery,
        },
        validate,
    },
    http::{
        error::ErrorBody,
        extract::{AuthUser, ClientAddress, Path, Query},
    },
    store::{blocks, users},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(blocked))
        .routes(routes!(block, unblock))
}

/// Find people to talk to: users with a word of their name starting with `q`
/// (case-insensitive), or the one user whose email is exactly `q`.
#[utoipa::path(
    get, path = "/users/search", tag = "users",
    security(("oauth2" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "Matches, an exact email first, then by name", body = [PersonOut]),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`q` shorter than 2 or longer than 100 characters, or a bad `limit`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a `q` with an `@` past this address's budget of registrations and email searches (20 a minute, bursts of 10, by default); wait `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn search(
    State(state): State<AppState>,
    _user: AuthUser,
    ClientAddress(address): ClientAddress,
    Query(query): Query<SearchQuery>,
) -> Result<axum::Json<Vec<PersonOut>>> {
    let q = query.q.trim();
    let chars = q.chars().count();
    if chars < MIN_SEARCH_CHARS {
        return Err(Error::invalid(
            "q",
            format!("must be at least {MIN_SEARCH_CHARS} characters"),
        ));
    }
    if chars > MAX_SEARCH_CHARS {
        return Err(Error::invalid(
            "q",
            format!("must be at most {MAX_SEARCH_CHARS} characters"),
        ));
    }
    if q.chars().any(char::is_control) {
        return Err(Error::invalid("q", "must not contain control characters"));
    }
    let limit = validate::limit(query.limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)?;
    // Exactly when the query looks the email up (`users::search`): name searches, typed as
    // the user types, stay free.
    if q.contains('@') {
        state.limits.email_lookups.check(&address)?;
    }
    Ok(axum::Json(users::search(&state.db, q, limit).await?))
}

/// The users the caller blocked, most recent first.
#[utoipa::path(
    get, path = "/users/blocked", tag = "users",
    security(("oauth2" = [])),
    responses(
        (status = 200, description = "Blocked users", body = [PersonOut]),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
    )
)]
async fn blocked(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<Vec<PersonOut>>> {
    Ok(axum::Json(blocks::list(&state.db, user.id).await?))
}

/// Block a user: they can no longer start or continue a private chat with the caller (nor the
/// caller with them), nor add the caller to a group. They are told only `403 blocked`.
#[utoipa::path(
    put, path = "/users/{id}/block", tag = "users",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "The user to block")),
    responses(
        (status = 204, description = "Blocked (blocking twice is one block)"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Cannot block yourself", body = ErrorBody),
    )
)]
async fn block(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    if id == user.id {
        return Err(Error::invalid("id", "cannot block yourself"));
    }
    if !users::exists(&state.db, id).await? {
        return Err(Error::NotFound("user"));
    }
    blocks::add(&state.db, user.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblock a user.
#[utoipa::path(
    delete, path = "/users/{id}/block", tag = "users",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "The user to unblock")),
    responses(
        (status = 204, description = "Not blocked (any more)"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
    )
)]
async fn unblock(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    blocks::remove(&state.db, user.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
