//! Who is online: `GET /users/presence`, and the caller's privacy settings, `GET`/`PATCH
//! /users/me/privacy` (who sees their presence, whether they send read receipts). The rules
//! are `domain::presence`'s; how relays keep it: `store::presence`.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::{
        presence::{PresenceList, PresenceQuery, Privacy, PrivacyPatch},
        validate,
    },
    http::{
        error::ErrorBody,
        extract::{AuthUser, Json, Query},
    },
    store,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(presence_of))
        .routes(routes!(privacy, update_privacy))
}

/// Whether these users are online, away or offline, and when each was last seen. Only people
/// the caller shares a chat with (and the caller) are answered, and only those who let their
/// contacts see it; a caller who hides their own sees no one's. Others are left out, never
/// told apart from unknown ids.
#[utoipa::path(
    get, path = "/users/presence", tag = "users",
    security(("oauth2" = [])),
    params(PresenceQuery),
    responses(
        (status = 200, description = "The presence of those of `ids` the caller may see, in the order asked", body = PresenceList),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`ids` is empty, holds something that is not a user id, or more than 200", body = ErrorBody),
    )
)]
async fn presence_of(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<PresenceQuery>,
) -> Result<axum::Json<PresenceList>> {
    let ids = validate::presence_ids(&query.ids)?;
    let presence = store::presence::shown_to(&state.db, user.id, &ids).await?;
    Ok(axum::Json(PresenceList { presence }))
}

/// The caller's privacy settings.
#[utoipa::path(
    get, path = "/users/me/privacy", tag = "users",
    security(("oauth2" = [])),
    responses(
        (status = 200, description = "The caller's privacy settings", body = Privacy),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
    )
)]
async fn privacy(State(state): State<AppState>, user: AuthUser) -> Result<axum::Json<Privacy>> {
    let privacy = store::presence::privacy_of(&state.db, user.id)
        .await?
        .ok_or(Error::Unauthorized("the token's user no longer exists"))?;
    Ok(axum::Json(privacy))
}

/// Change who sees the caller's presence (`contacts` or `nobody`) and whether they send read
/// receipts; a field left out stays as it is.
#[utoipa::path(
    patch, path = "/users/me/privacy", tag = "users",
    security(("oauth2" = [])),
    request_body = PrivacyPatch,
    responses(
        (status = 200, description = "The caller's privacy settings, after the change", body = Privacy),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`presence` is not `contacts` or `nobody`, `read_receipts` not a boolean, or an unknown field", body = ErrorBody),
    )
)]
async fn update_privacy(
    State(state): State<AppState>,
    user: AuthUser,
    Json(patch): Json<PrivacyPatch>,
) -> Result<axum::Json<Privacy>> {
    let privacy = store::presence::privacy(&state.db, user.id, &patch)
        .await?
        .ok_or(Error::Unauthorized("the token's user no longer exists"))?;
    Ok(axum::Json(privacy))
}
