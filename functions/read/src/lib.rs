//! Read markers: `PATCH /chat/message/{id}/read`.
//!
//! A marker is per member and per chat, and only moves forward; marking message N read marks
//! everything up to N. A message's `read` flag is true once every other member has read it.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::model::MessageOut,
    events::Event,
    http::{
        error::ErrorBody,
        extract::{AuthUser, Path},
    },
    service::write,
    store::{members, messages},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(mark_read))
}

/// Mark a message (and everything before it in its chat) as read by the caller.
#[utoipa::path(
    patch, path = "/chat/message/{id}/read", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses(
        (status = 200, description = "The message, with its current `read` flag", body = MessageOut),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
    )
)]
async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<MessageOut>> {
    let message = messages::for_member(&state.db, id, user.id)
        .await?
        .ok_or(Error::NotFound("message"))?;
    let mut tx = state.db.begin().await?;
    let Some((last_read_seq, rev)) =
        members::advance_read(&mut *tx, message.chat_id, user.id, message.seq).await?
    else {
        // Already read that far: nothing changed, nothing to tell.
        tx.rollback().await?;
        return Ok(axum::Json(message));
    };
    // Read again in the same transaction, so `read` reflects the marker just moved and nothing
    // is left to fail after the commit.
    let message = messages::for_member(&mut *tx, id, user.id)
        .await?
        .ok_or(Error::NotFound("message"))?;
    let moved = Event::MessageRead {
        chat_id: message.chat_id,
        user_id: user.id,
        last_read_seq,
        rev,
    };
    write::commit(&state, tx, vec![moved]).await?;
    Ok(axum::Json(message))
}
