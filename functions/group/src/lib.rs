//! Group chats and their membership: `POST /chat/group`, `POST /chat/group/{chat_id}/members`
//! and `DELETE /chat/group/{chat_id}/members/{user_id}`.
//!
//! The creator is the owner and always a member. The owner adds and removes members; any member
//! may remove themself (leave). When the owner leaves, the longest-standing member takes over.
//!
//! Each member added to or removed from an existing group is a change of the chat with its own
//! rev, taken under the chat's row lock: concurrent changes of one group serialise there, so the
//! member cap and the owner hand-over hold under races. Every change publishes
//! `member.joined`/`member.left` on the chat and `chat.added`/`chat.removed` to the user, so
//! relays start or stop delivering without a reconnect; a lost event is found by rev.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::{
        model::{AddMembers, CreateGroup, GroupOut, MAX_GROUP_MEMBERS},
        validate,
    },
    events::Event,
    http::{
        error::ErrorBody,
        extract::{AuthUser, Json, Path},
    },
    service::write,
    store::{blocks, chats, members, users},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_group))
        .routes(routes!(add_members))
        .routes(routes!(remove_member))
}

/// Create a group; the caller is its owner and a member.
#[utoipa::path(
    post, path = "/chat/group", tag = "group",
    security(("oauth2" = [])),
    request_body = CreateGroup,
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 201, description = "The group", body = GroupOut),
        (status = 404, description = "A participant does not exist; `detail` lists them", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `detail` names it", body = ErrorBody),
    )
)]
async fn create_group(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<CreateGroup>,
) -> Result<(StatusCode, axum::Json<GroupOut>)> {
    let name = validate::name("name", &body.name)?;
    let mut ids = member_ids("participant_ids", &body.participant_ids)?;
    state.limits.groups.check(user.id)?;
    ids.retain(|&id| id != user.id);
    if ids.len() + 1 > MAX_GROUP_MEMBERS {
        return Err(too_many());
    }
    check_users_exist(&state.db, &ids).await?;
    check_not_blocked(&state, user.id, &ids).await?;

    let mut tx = state.db.begin().await?;
    let chat = chats::insert_group(&mut *tx, &name, user.id).await?;
    // The members a group starts with are its initial state: no revs.
    let mut added = members::add(&mut *tx, chat.id, &[user.id], "owner", false).await?;
    added.extend(members::add(&mut *tx, chat.id, &ids, "member", false).await?);
    let participant_ids = members::ids(&mut *tx, chat.id).await?;
    let member_revs = users::bump_member_revs(&mut *tx, &participant_ids).await?;
    check_users_exist(&mut *tx, &participant_ids).await?;
    let events = added_events(chat.id, &added, &member_revs, false);
    write::commit(&state, tx, events).await?;
    Ok((StatusCode::CREATED, group_out(chat, participant_ids)))
}

/// Add members to a group (owner only). Users already in it are left as they are.
#[utoipa::path(
    post, path = "/chat/group/{chat_id}/members", tag = "group",
    security(("oauth2" = [])),
    params(("chat_id" = i64, Path, description = "Group chat id")),
    request_body = AddMembers,
    responses(
        (status = 429, description = "`rate_limited`: over the per-user limit; wait `Retry-After` seconds", body = ErrorBody),
        (status = 200, description = "The group with its members", body = GroupOut),
        (status = 403, description = "The caller is not the owner", body = ErrorBody),
        (status = 404, description = "No such group among the caller's, or no such user", body = ErrorBody),
        (status = 422, description = "Not a group, or a field breaks a rule", body = ErrorBody),
    )
)]
async fn add_members(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<i64>,
    Json(body): Json<AddMembers>,
) -> Result<axum::Json<GroupOut>> {
    let ids = member_ids("user_ids", &body.user_ids)?;
    if ids.is_empty() {
        return Err(Error::invalid("user_ids", "must not be empty"));
    }
    let chat = group_of_member(&state, chat_id, user.id).await?;
    require_owner(&state.db, chat_id, user.id).await?;
    state.limits.groups.check(user.id)?;
    check_users_exist(&state.db, &ids).await?;
    check_not_blocked(&state, user.id, &ids).await?;

    let _turn = state.gates.enter(chat_id).await?;
    let mut tx = state.db.begin().await?;
    chats::lock(&mut *tx, chat_id).await?;
    // Again under the lock: the caller may have lost the group meanwhile.
    require_owner(&mut *tx, chat_id, user.id).await?;
    let added = members::add(&mut *tx, chat_id, &ids, "member", true).await?;
    let participant_ids = members::ids(&mut *tx, chat_id).await?;
    if participant_ids.len() > MAX_GROUP_MEMBERS {
        return Err(too_many());
    }
    let added_ids: Vec<i64> = added.iter().map(|a| a.user_id).collect();
    let member_revs = users::bump_member_revs(&mut *tx, &added_ids).await?;
    // Their rows are locked now: an account deleted meanwhile is seen (see `users::lock`).
    check_users_exist(&mut *tx, &added_ids).await?;
    let events = added_events(chat_id, &added, &member_revs, true);
    write::commit(&state, tx, events).await?;
    Ok(group_out(chat, participant_ids))
}

/// Remove a member (owner), or leave (any member removing themself).
#[utoipa::path(
    delete, path = "/chat/group/{chat_id}/members/{user_id}", tag = "group",
    security(("oauth2" = [])),
    params(
        ("chat_id" = i64, Path, description = "Group chat id"),
        ("user_id" = i64, Path, description = "The member to remove; the caller's own id to leave"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Only the owner removes others", body = ErrorBody),
        (status = 404, description = "No such group among the caller's, or not a member", body = ErrorBody),
        (status = 422, description = "Not a group", body = ErrorBody),
    )
)]
async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path((chat_id, member_id)): Path<(i64, i64)>,
) -> Result<StatusCode> {
    group_of_member(&state, chat_id, user.id).await?;
    if member_id != user.id {
        require_owner(&state.db, chat_id, user.id).await?;
    }

    let _turn = state.gates.enter(chat_id).await?;
    let mut tx = state.db.begin().await?;
    // The member's row first, then the chat's (`users::lock` says why).
    let member_rev = users::bump_member_revs(&mut *tx, &[member_id])
        .await?
        .first()
        .map_or(0, |&(_, r)| r);
    let rev = chats::take_revs(&mut *tx, chat_id, 1).await?;
    // Again under the chat's lock, which every membership change takes: an owner and the eldest
    // member leaving at once are ordered here, so the second sees who the first promoted.
    let Some(caller_role) = members::role(&mut *tx, chat_id, user.id).await? else {
        return Err(Error::NotFound("chat"));
    };
    if member_id != user.id && caller_role != "owner" {
        return Err(not_owner());
    }
    let mut events = write::remove_member(&mut tx, chat_id, member_id, rev)
        .await?
        .ok_or(Error::NotFound("member"))?;
    events.push(Event::ChatRemoved {
        user_id: member_id,
        chat_id,
        rev,
        member_rev,
    });
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The seed's group shape, in which `id` and `chat_id` are the same.
fn group_out(chat: chats::Chat, participant_ids: Vec<i64>) -> axum::Json<GroupOut> {
    axum::Json(GroupOut {
        id: chat.id,
        name: chat.name.unwrap_or_default(),
        creator_id: chat.creator_id,
        chat_id: chat.id,
        participant_ids,
    })
}

/// Deduplicated ids, each a positive number, at most a group's worth.
fn member_ids(field: &str, raw: &[i64]) -> Result<Vec<i64>> {
    if raw.len() > MAX_GROUP_MEMBERS {
        return Err(too_many());
    }
    if let Some(bad) = raw.iter().find(|&&id| id <= 0) {
        return Err(Error::invalid(field, format!("{bad} is not a user id")));
    }
    let mut ids = raw.to_vec();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn too_many() -> Error {
    Error::invalid(
        "participant_ids",
        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
    )
}

/// 422 `unknown_user` naming the ids with no live account. Asked before the transaction (to
/// refuse early) and again once their rows are locked (to refuse an account deleted meanwhile).
async fn check_users_exist(db: impl sqlx::PgExecutor<'_>, ids: &[i64]) -> Result<()> {
    let missing = users::missing(db, ids).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation {
            code: "unknown_user",
            detail: format!("no user with id {missing:?}"),
        })
    }
}

/// 403 `blocked` if any of `ids` blocked the adder (without saying which).
async fn check_not_blocked(state: &AppState, adder: i64, ids: &[i64]) -> Result<()> {
    if blocks::who_blocked(&state.db, adder, ids).await?.is_empty() {
        Ok(())
    } else {
        Err(Error::blocked())
    }
}

/// The group, if the caller is in it: 404 for strangers, 422 for a private chat.
async fn group_of_member(state: &AppState, chat_id: i64, user_id: i64) -> Result<chats::Chat> {
    let chat = chats::for_member(&state.db, chat_id, user_id)
        .await?
        .ok_or(Error::NotFound("chat"))?;
    if !chat.is_group() {
        return Err(Error::Validation {
            code: "not_a_group",
            detail: "chat_id: is a private chat; members change only in groups".into(),
        });
    }
    Ok(chat)
}

async fn require_owner(db: impl sqlx::PgExecutor<'_>, chat_id: i64, user_id: i64) -> Result<()> {
    match members::role(db, chat_id, user_id).await?.as_deref() {
        Some("owner") => Ok(()),
        _ => Err(not_owner()),
    }
}

fn not_owner() -> Error {
    Error::Forbidden("only the group's owner can change its members".into())
}

/// `chat.added` to each new member, and `member.joined` on the chat for each member added to
/// an existing group (`as_changes`); a new group's members joined at rev 0.
fn added_events(
    chat_id: i64,
    added: &[members::Added],
    member_revs: &[(i64, i64)],
    as_changes: bool,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(added.len() * 2);
    if as_changes {
        events.extend(added.iter().map(|a| Event::MemberJoined {
            chat_id,
            rev: a.joined_rev,
            user_id: a.user_id,
            name: Some(a.name.clone()),
        }));
    }
    let member_revs: std::collections::HashMap<i64, i64> = member_revs.iter().copied().collect();
    let member_rev = |user: i64| member_revs.get(&user).copied().unwrap_or(0);
    events.extend(added.iter().map(|a| Event::ChatAdded {
        user_id: a.user_id,
        chat_id,
        rev: a.joined_rev,
        member_rev: member_rev(a.user_id),
    }));
    events
}
