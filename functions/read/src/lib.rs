//! A member's own state of a chat: read markers (`PATCH /chat/message/{id}/read`), what the
//! others received and read of a message (`GET /chat/message/{id}/receipts`) and notification
//! settings (`PATCH /chat/{chat_id}/settings`).
//!
//! A marker is per member and per chat, and only moves forward; marking message N read marks
//! everything up to N. A message's `read` flag is true once every other member has read it.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::model::{ChatSettings, ChatSettingsPatch, MessageOut, MutedUntil, Receipts},
    events::Event,
    http::{
        error::ErrorBody,
        extract::{AuthUser, Json, Path},
    },
    service::write,
    store::{members, messages, receipts},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mark_read))
        .routes(routes!(message_receipts))
        .routes(routes!(update_settings))
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
    let Some(moved) =
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
        last_read_seq: moved.last_read_seq,
        rev: moved.rev,
        hidden: moved.hidden,
    };
    write::commit(&state, tx, vec![moved]).await?;
    Ok(axum::Json(message))
}

/// Who of the chat's other members the message reached (`delivered`: one of their devices was
/// handed it by a relay, or they read it) and who read it (`read`), each with when, oldest
/// first. The sender is left out, and so is anyone who joined after it was sent. Members who
/// turned read receipts off are not in `read`; a caller who turned them off sees `read` empty.
#[utoipa::path(
    get, path = "/chat/message/{id}/receipts", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses(
        (status = 200, description = "The message's receipts", body = Receipts),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
    )
)]
async fn message_receipts(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<Receipts>> {
    // The same rule as reading the message: a member of its chat now, blocked chats as history.
    messages::for_member(&state.db, id, user.id)
        .await?
        .ok_or(Error::NotFound("message"))?;
    Ok(axum::Json(
        receipts::of_message(&state.db, id, user.id).await?,
    ))
}

/// Mute a chat, or choose which of its messages notify the caller. A field left out stays as it
/// is; `"muted_until": null` (or a time already past) unmutes. The settings are the caller's own: other members see
/// nothing of them.
#[utoipa::path(
    patch, path = "/chat/{chat_id}/settings", tag = "chat",
    security(("oauth2" = [])),
    params(("chat_id" = i64, Path, description = "Chat id")),
    request_body = ChatSettingsPatch,
    responses(
        (status = 200, description = "The caller's settings of the chat, after the change", body = ChatSettings),
        (status = 404, description = "No such chat of the caller's", body = ErrorBody),
        (status = 422, description = "`muted_until` is not an RFC 3339 time, \"forever\" or null; `notify` is not `all`, `mentions` or `none`", body = ErrorBody),
    )
)]
async fn update_settings(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<i64>,
    Json(patch): Json<ChatSettingsPatch>,
) -> Result<axum::Json<ChatSettings>> {
    // A time already past is stored as no mute at all (it reads the same, and a year Postgres
    // cannot hold, such as 0000, never reaches it).
    let muted_until = match patch.muted_until {
        Some(Some(MutedUntil::Until(at))) if at <= chrono::Utc::now() => Some(None),
        other => other,
    };
    let settings = members::update_settings(&state.db, chat_id, user.id, muted_until, patch.notify)
        .await?
        .ok_or(Error::NotFound("chat"))?;
    Ok(axum::Json(settings))
}
