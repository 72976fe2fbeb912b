//! Sending messages: `POST /chat/message`.
//!
//! The work is in [`windi_shared::send`], shared with the relay's `send` frame; this crate maps
//! HTTP onto it: `201` for a new message, `200` for an idempotent replay.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    error::ErrorBody,
    extract::{AuthUser, Json},
    model::{MessageOut, SendMessage},
    send::{Target, send_message},
};

/// The header that may carry the idempotency key instead of the body's `dedup_key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send))
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
        (status = 201, description = "Stored as a new message", body = MessageOut),
        (status = 200, description = "Replay of an earlier send with the same dedup key", body = MessageOut),
        (status = 404, description = "No such recipient, or a chat the caller is not in", body = ErrorBody),
        (status = 409, description = "dedup_key already used for different content", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `detail` names it", body = ErrorBody),
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
    let sent = send_message(&state, user.id, target, &body.text, dedup_key).await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(sent.message)))
}
