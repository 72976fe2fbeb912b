//! Reading chats: `GET /chat/history/{chat_id}`, `GET /chat/list`, catching up with
//! `GET /chat/changes/{chat_id}`, finding messages with `GET /chat/search`, and a chat's pinned
//! messages with `GET /chat/{chat_id}/pins`.
//!
//! History is ordered by seq, never by time. Two ways to page: the seed's `limit`/`offset` from
//! the oldest message, and seq cursors (`before_seq` to scroll back, `after_seq` to catch up),
//! which stay correct while new messages arrive.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::{
        model::{
            ChangesPage, ChangesQuery, ChatSummary, HistoryQuery, ListQuery, MessageOut,
            MessageSearchQuery, SearchPage,
        },
        search, validate,
    },
    http::{
        error::ErrorBody,
        extract::{AuthUser, Path, Query},
    },
    store::{self, changes, chats, messages, presence},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(list))
        .routes(routes!(changes))
        .routes(routes!(search_messages))
        .routes(routes!(pins))
}

/// The chat's pinned messages, newest pin first (at most 50, the most a chat may have).
#[utoipa::path(
    get, path = "/chat/{chat_id}/pins", tag = "chat",
    security(("oauth2" = [])),
    params(("chat_id" = i64, Path, description = "Chat id")),
    responses(
        (status = 200, description = "Pinned messages, newest pin first", body = [MessageOut]),
        (status = 404, description = "No such chat among the caller's", body = ErrorBody),
    )
)]
async fn pins(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<i64>,
) -> Result<axum::Json<Vec<MessageOut>>> {
    chats::for_member(&state.db, chat_id, user.id)
        .await?
        .ok_or(Error::NotFound("chat"))?;
    Ok(axum::Json(messages::pinned(&state.db, chat_id).await?))
}

/// A page of a chat's messages, ascending by seq.
#[utoipa::path(
    get, path = "/chat/history/{chat_id}", tag = "chat",
    security(("oauth2" = [])),
    params(("chat_id" = i64, Path, description = "Chat id"), HistoryQuery),
    responses(
        (status = 200, description = "Messages ascending by seq", body = [MessageOut]),
        (status = 404, description = "No such chat among the caller's", body = ErrorBody),
        (status = 422, description = "A query parameter is out of range; `detail` names it", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<i64>,
    Query(query): Query<HistoryQuery>,
) -> Result<axum::Json<Vec<MessageOut>>> {
    let range = seq_range(&query)?;
    let mentioning = match query.mentions.as_deref() {
        None => None,
        Some("me") if query.offset.is_some_and(|o| o != 0) => {
            return Err(Error::invalid(
                "offset",
                "cannot be combined with mentions (page by before_seq or after_seq)",
            ));
        }
        Some("me") => Some(user.id),
        Some(_) => return Err(Error::invalid("mentions", "must be `me`")),
    };
    chats::for_member(&state.db, chat_id, user.id)
        .await?
        .ok_or(Error::NotFound("chat"))?;
    let page = match mentioning {
        None => messages::page(&state.db, chat_id, range).await?,
        Some(user_id) => messages::mentioning(&state.db, chat_id, user_id, range).await?,
    };
    Ok(axum::Json(page))
}

/// Turns the query into a range, refusing combinations that have no clear meaning.
fn seq_range(q: &HistoryQuery) -> Result<messages::SeqRange> {
    let (limit, offset) = validate::page(q.limit, q.offset)?;
    let cursor = q.before_seq.is_some() || q.after_seq.is_some();
    if cursor && q.offset.is_some_and(|o| o != 0) {
        return Err(Error::invalid(
            "offset",
            "cannot be combined with before_seq or after_seq",
        ));
    }
    for (field, value) in [("before_seq", q.before_seq), ("after_seq", q.after_seq)] {
        if value.is_some_and(|v| v < 0) {
            return Err(Error::invalid(field, "must not be negative"));
        }
    }
    Ok(messages::SeqRange {
        after: q.after_seq.unwrap_or(0),
        before: q.before_seq.unwrap_or(i64::MAX),
        limit,
        offset,
        // Scrolling back: the page nearest the cursor, not the oldest one.
        from_newest: q.before_seq.is_some() && q.after_seq.is_none(),
    })
}

/// The caller's chats, most recently active first, with last message and unread count.
#[utoipa::path(
    get, path = "/chat/list", tag = "chat",
    security(("oauth2" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's chats", body = [ChatSummary]),
        (status = 422, description = "A query parameter is out of range", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Vec<ChatSummary>>> {
    let (limit, offset) = validate::page(query.limit, query.offset)?;
    let mut list = chats::list_for_user(&state.db, user.id, limit, offset).await?;
    // Private chats show the other member's presence: one more query, for the page's peers.
    let peer = |chat: &ChatSummary| {
        (chat.kind == "private")
            .then(|| chat.member_ids.iter().copied().find(|&m| m != user.id))
            .flatten()
    };
    let peers: Vec<i64> = list.iter().filter_map(peer).collect();
    if !peers.is_empty() {
        let shown = presence::shown_to(&state.db, user.id, &peers).await?;
        for chat in &mut list {
            if let Some(other) = peer(chat) {
                chat.presence = shown.iter().find(|p| p.user_id == other).copied();
            }
        }
    }
    Ok(axum::Json(list))
}

/// Every change of a chat after `after_rev`, ascending by rev: how a client without the relay
/// (a Lambda-only deployment) stays in sync. Apply the page, then continue from its `rev`.
#[utoipa::path(
    get, path = "/chat/changes/{chat_id}", tag = "chat",
    security(("oauth2" = [])),
    params(("chat_id" = i64, Path, description = "Chat id"), ChangesQuery),
    responses(
        (status = 200, description = "Changes ascending by rev", body = ChangesPage),
        (status = 404, description = "No such chat among the caller's", body = ErrorBody),
        (status = 422, description = "A query parameter is out of range; `detail` names it", body = ErrorBody),
    )
)]
async fn changes(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<i64>,
    Query(query): Query<ChangesQuery>,
) -> Result<axum::Json<ChangesPage>> {
    let (limit, _) = validate::page(query.limit, None)?;
    let after_rev = query.after_rev.unwrap_or(0);
    if after_rev < 0 {
        return Err(Error::invalid("after_rev", "must not be negative"));
    }
    chats::for_member(&state.db, chat_id, user.id)
        .await?
        .ok_or(Error::NotFound("chat"))?;
    Ok(axum::Json(
        changes::after(&state.db, chat_id, after_rev, limit).await?,
    ))
}

/// Messages of the caller's chats that match `q`, newest first: only chats they are a member of
/// now, never a deleted message, an edited one by its current text. Newest first rather than by
/// relevance: in a chat people look for a recent conversation they half remember, and the
/// highlight shows why each hit matched; a relevance order would also need a cursor that is
/// not a message id.
#[utoipa::path(
    get, path = "/chat/search", tag = "chat",
    security(("oauth2" = [])),
    params(MessageSearchQuery),
    responses(
        (status = 200, description = "Matching messages, newest first", body = SearchPage),
        (status = 404, description = "`chat_id` is not among the caller's chats", body = ErrorBody),
        (status = 422, description = "`q` is empty, too long or has too many terms, or `limit` or `before` is out of range", body = ErrorBody),
        (status = 429, description = "Too many searches; `Retry-After` says when to ask again", body = ErrorBody),
    )
)]
async fn search_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<MessageSearchQuery>,
) -> Result<axum::Json<SearchPage>> {
    let parsed = search::parse(&query.q)?;
    let limit = search::hits(query.limit)?;
    if query.before.is_some_and(|b| b < 1) {
        return Err(Error::invalid(
            "before",
            "must be a message id (at least 1)",
        ));
    }
    state.limits.searches.check(user.id)?;
    if let Some(chat_id) = query.chat_id {
        chats::for_member(&state.db, chat_id, user.id)
            .await?
            .ok_or(Error::NotFound("chat"))?;
    }
    let scope = store::search::Scope {
        user_id: user.id,
        chat_id: query.chat_id,
        before: query.before.unwrap_or(i64::MAX),
        limit,
    };
    let page = state.search.messages(&state.db, &parsed, scope).await?;
    Ok(axum::Json(page))
}
