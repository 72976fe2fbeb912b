//! Read markers: `PATCH /chat/message/{id}/read`.
//!
//! A marker is per member and per chat, and only moves forward; marking message N read marks
//! everything up to N. A message's `read` flag is true once every other member has read it.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    db::{members, messages},
    error::ErrorBody,
    events::Event,
    extract::{AuthUser, Path},
    model::MessageOut,
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
    let Some((last_read_seq, rev)) =
        members::advance_read(&state.db, message.chat_id, user.id, message.seq).await?
    else {
        // Already read that far: nothing changed, nothing to tell.
        return Ok(axum::Json(message));
    };
    state
        .events
        .publish(vec![Event::MessageRead {
            chat_id: message.chat_id,
            user_id: user.id,
            last_read_seq,
            rev,
        }])
        .await;
    // Re-read so `read` reflects the marker just moved. The marker is committed already: if
    // this read fails, the answer is the message as read before, never an error.
    let message = match messages::for_member(&state.db, id, user.id).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => message,
        Err(e) => {
            tracing::warn!(error = %e, "re-reading a message after marking it read failed");
            message
        }
    };
    Ok(axum::Json(message))
}
