//! Sending and changing messages: `POST /chat/message`, `PATCH` and `DELETE
//! /chat/message/{id}`, `PUT`/`DELETE /chat/message/{id}/reactions/{emoji}` and
//! `PUT`/`DELETE /chat/message/{id}/pin`; and the files
//! they carry (`/chat/attachments`, see [`attachments`]).
//!
//! The work is in [`windi_shared::service::send`] (shared with the relay's `send` frame) and
//! [`windi_shared::service::revise`]; this crate maps HTTP onto it: `201` for a new message, `200`
//! for an idempotent replay and for every change, which answers the message as it is afterwards.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::model::{EditMessage, MessageOut, SendMessage, Target},
    http::{
        error::ErrorBody,
        extract::{AuthUser, Json, Path},
    },
    service::{
        revise,
        send::{Outgoing, send_message},
    },
};

/// The header that may carry the idempotency key instead of the body's `dedup_key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

mod attachments;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(edit, delete))
        .routes(routes!(react, unreact))
        .routes(routes!(pin, unpin))
        .merge(attachments::routes())
}

/// Send a message to a user (`recipient_id`; the private chat is created on the first message)
/// or to a chat (`chat_id`).
#[utoipa::path(
    post, path = "/chat/message", tag = "chat",
    security(("oauth2" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same as the body's `dedup_key`; if both are given they must be equal")),
    request_body = SendMessage,
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 201, description = "Stored as a new message", body = MessageOut),
        (status = 200, description = "Replay of an earlier send with the same dedup key", body = MessageOut),
        (status = 404, description = "No such recipient, or a chat the caller is not in", body = ErrorBody),
        (status = 409, description = "dedup_key already used for different content", body = ErrorBody),
        (status = 422, description = "A field breaks a rule (`reply_to` not in this chat…); `detail` names it", body = ErrorBody),
    )
)]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<SendMessage>,
) -> Result<(StatusCode, axum::Json<MessageOut>)> {
    let target = Target::from_fields(body.recipient_id, body.chat_id)?;
    let header_key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid("Idempotency-Key", "must be visible ASCII"))?,
        ),
        None => None,
    };
    let dedup_key = match (body.dedup_key.as_deref(), header_key) {
        (Some(body_key), Some(header_key)) if body_key != header_key => {
            return Err(Error::invalid(
                "dedup_key",
                "differs from the Idempotency-Key header",
            ));
        }
        (body_key, header_key) => body_key.or(header_key),
    };
    let out = Outgoing {
        text: &body.text,
        dedup_key,
        reply_to: body.reply_to,
        attachments: &body.attachments,
        mentions: &body.mentions,
    };
    let sent = send_message(&state, user.id, target, out).await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(sent.message)))
}

/// Edit your own message. Editing to the same text changes nothing (no rev).
#[utoipa::path(
    patch, path = "/chat/message/{id}", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    request_body = EditMessage,
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The message with its new text and `edited_at`", body = MessageOut),
        (status = 403, description = "`not_sender`: only the sender edits", body = ErrorBody),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
        (status = 409, description = "`deleted`: the message was deleted", body = ErrorBody),
        (status = 422, description = "The text breaks a rule", body = ErrorBody),
    )
)]
async fn edit(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(body): Json<EditMessage>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(
        revise::edit(&state, user.id, id, &body.text).await?,
    ))
}

/// Delete a message: it becomes a tombstone with the same id and seq, no text, no reactions.
/// The sender may delete, and in a group the owner; deleting again answers the same tombstone.
#[utoipa::path(
    delete, path = "/chat/message/{id}", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The tombstone", body = MessageOut),
        (status = 403, description = "`not_allowed`: neither the sender nor the group's owner", body = ErrorBody),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(revise::delete(&state, user.id, id).await?))
}

/// React to a message (idempotent). `emoji`: 1–32 bytes of UTF-8, no whitespace or control
/// characters, percent-encoded in the path.
#[utoipa::path(
    put, path = "/chat/message/{id}/reactions/{emoji}", tag = "chat",
    security(("oauth2" = [])),
    params(
        ("id" = i64, Path, description = "Message id"),
        ("emoji" = String, Path, description = "The reaction, e.g. %F0%9F%91%8D for 👍"),
    ),
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The message with its reactions", body = MessageOut),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
        (status = 409, description = "`deleted`, or `too_many_reactions`: 20 different ones already", body = ErrorBody),
        (status = 422, description = "Not a valid reaction", body = ErrorBody),
    )
)]
async fn react(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, emoji)): Path<(i64, String)>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(
        revise::react(&state, user.id, id, &emoji).await?,
    ))
}

/// Take your reaction back (idempotent).
#[utoipa::path(
    delete, path = "/chat/message/{id}/reactions/{emoji}", tag = "chat",
    security(("oauth2" = [])),
    params(
        ("id" = i64, Path, description = "Message id"),
        ("emoji" = String, Path, description = "The reaction, percent-encoded"),
    ),
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The message with its reactions", body = MessageOut),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
        (status = 422, description = "Not a valid reaction", body = ErrorBody),
    )
)]
async fn unreact(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, emoji)): Path<(i64, String)>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(
        revise::unreact(&state, user.id, id, &emoji).await?,
    ))
}

/// Pin a message in its chat (idempotent): in a group the owner may, in a private chat either
/// member; at most 50 pins per chat. Every member's devices learn it as a `message_updated`
/// change (`pinned`) whose message carries `pinned_at`.
#[utoipa::path(
    put, path = "/chat/message/{id}/pin", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The message, pinned", body = MessageOut),
        (status = 403, description = "`not_allowed`: a group's member who is not its owner", body = ErrorBody),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
        (status = 409, description = "`deleted`, or `too_many_pins`: 50 pinned already", body = ErrorBody),
    )
)]
async fn pin(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(revise::pin(&state, user.id, id, true).await?))
}

/// Unpin a message (idempotent); who may is as for pinning.
#[utoipa::path(
    delete, path = "/chat/message/{id}/pin", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The message, not pinned", body = MessageOut),
        (status = 403, description = "`not_allowed`: a group's member who is not its owner", body = ErrorBody),
        (status = 404, description = "No such message in a chat of the caller's", body = ErrorBody),
    )
)]
async fn unpin(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<MessageOut>> {
    Ok(axum::Json(revise::pin(&state, user.id, id, false).await?))
}
