//! Accounts and sessions: `POST /auth/register`, `/auth/login`, `/auth/refresh`, `/auth/logout`,
//! `/auth/logout-all`, `/auth/password`; `GET`/`PATCH`/`DELETE /auth/me`; `GET /auth/sessions`,
//! `DELETE /auth/sessions/{id}`; finding and blocking people ([`people`]: `/users/...`); and
//! presence and privacy ([`presence`]: `/users/presence`, `/users/me/privacy`).
//!
//! Login answers unknown emails and wrong passwords identically, in the same time (a dummy
//! hash is verified when the email is unknown), so the route cannot be used to find accounts.
//!
//! A login starts a session (see `windi_shared::service::auth` and docs/api.md, "Sessions and
//! accounts"): a short-lived access token that names it and a single-use refresh token,
//! stored only as its hash. A session starts only while the account is live (the login waits
//! for a disable, deletion or password change in flight, `sessions::insert`), and every
//! transaction here commits through `write::commit`. Every way a session ends publishes
//! `sessions.ended` after commit, so relays close its sockets at once (their poller catches a
//! lost event within a poll interval).

pub mod people;
pub mod presence;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    domain::{
        model::{
            ChangePassword, DeleteMe, LoginForm, MAX_PASSWORD_BYTES, Me, RefreshIn, RegisterUser,
            SessionOut, TokenOut, UpdateMe, UserOut,
        },
        validate,
    },
    events::Event,
    http::{
        error::ErrorBody,
        extract::{AuthUser, ClientAddress, Json, JsonOrForm, Path},
    },
    service::{
        auth::{RefreshToken, hash_refresh_token},
        write,
    },
    store::{
        chats,
        sessions::{self, Rotation},
        users,
    },
};

/// The routes of this function, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me, update_me, delete_me))
        .routes(routes!(change_password))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .merge(people::routes())
        .merge(presence::routes())
}

/// Longest user agent kept for the session list.
const MAX_USER_AGENT_CHARS: usize = 256;

/// Create an account.
#[utoipa::path(
    post, path = "/auth/register", tag = "auth",
    request_body = RegisterUser,
    responses(
        (status = 201, description = "Account created", body = UserOut),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `detail` names it", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many registrations and email searches from this address (20 a minute, bursts of 10, by default); wait `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn register(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<RegisterUser>,
) -> Result<(StatusCode, axum::Json<UserOut>)> {
    // A 409 tells whether an email has an account: counted per address before anything else
    // (and before the hash, which a refused request never costs).
    state.limits.email_lookups.check(&address)?;
    let name = validate::name("name", &body.name)?;
    let email = validate::email(&body.email)?;
    state.password_rules.check("password", &body.password)?;
    let hash = state.passwords.hash(body.password).await?;
    let user = users::insert(&state.db, &name, &email, &hash).await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// Log in with email and password (OAuth2 password form; JSON accepted too). Starts a session.
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body(
        content(
            (LoginForm = "application/x-www-form-urlencoded"),
            (LoginForm = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "An access token and a refresh token", body = TokenOut),
        (status = 401, description = "Incorrect email or password", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: 5 failed logins of this account (or 100 from this address) within 15 minutes; wait `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "`unavailable`: too many logins at once; wait `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientAddress(address): ClientAddress,
    JsonOrForm(form): JsonOrForm<LoginForm>,
) -> Result<axum::Json<TokenOut>> {
    let bad_credentials = Error::Unauthorized("incorrect email or password");
    let account = form.username.trim();
    // Before anything else, and whatever the password: a locked account stays locked.
    state.logins.check(account, &address)?;
    if form.password.len() > MAX_PASSWORD_BYTES || form.username.contains('\0') {
        state.logins.failed(account, &address);
        return Err(bad_credentials);
    }
    let found = users::credentials(&state.db, account).await?;
    let (user_id, hash) = match found {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let valid = state.passwords.verify(form.password, hash.clone()).await?;
    let (Some(user_id), Some(hash)) = (user_id.filter(|_| valid), hash) else {
        state.logins.failed(account, &address);
        return Err(bad_credentials);
    };

    let refresh = RefreshToken::generate()?;
    let agent = user_agent(&headers);
    let mut tx = state.db.begin().await?;
    let started =
        sessions::insert(&mut *tx, user_id, &hash, agent.as_deref(), &refresh.hash).await?;
    write::commit(&state, tx, Vec::new()).await?;
    let Some(session_id) = started else {
        // Disabled, deleted or given another password while the password was being checked:
        // answered as if the account had been so from the start.
        state.logins.failed(account, &address);
        return Err(bad_credentials);
    };
    tokens(&state, user_id, session_id, refresh)
}

/// Exchange a refresh token for a new access token and a new refresh token.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshIn,
    responses(
        (status = 200, description = "A new pair; the presented refresh token is used up. Presented again within the grace (`REFRESH_GRACE_SECONDS`, 30 s by default) while its successor is unused, it answers that same refresh token again (a retry of a lost answer)", body = TokenOut),
        (status = 401, description = "Unknown, expired or already used refresh token, or one of a disabled or deleted account (a used one ends its session)", body = ErrorBody),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshIn>,
) -> Result<axum::Json<TokenOut>> {
    let old_hash = hash_refresh_token(&body.refresh_token);
    // Derived, not random: a retry of this refresh gets the same answer (`Rotation::Retried`).
    let new = state.tokens.successor(&body.refresh_token);
    let grace = state.tokens.refresh_grace();
    let mut tx = state.db.begin().await?;
    match sessions::rotate(&mut tx, &old_hash, &new.hash, grace).await? {
        Rotation::Rotated {
            session_id,
            user_id,
        }
        | Rotation::Retried {
            session_id,
            user_id,
        } => {
            write::commit(&state, tx, Vec::new()).await?;
            tokens(&state, user_id, session_id, new)
        }
        Rotation::Reused {
            session_id,
            user_id,
        } => {
            // Two parties hold this session's tokens; nobody can tell which is the owner, so
            // it ends for both (RFC 6819 §5.2.2.3, OAuth 2.0 Security BCP §4.14).
            let ended = sessions::end(&mut *tx, user_id, &[session_id]).await?;
            let events = ended_event(&state, user_id, ended).into_iter().collect();
            write::commit(&state, tx, events).await?;
            tracing::warn!(user_id, session_id, "refresh token reused; session ended");
            Err(Error::Unauthorized(
                "refresh token already used; the session has ended",
            ))
        }
        Rotation::Invalid => Err(Error::Unauthorized("invalid or expired refresh token")),
    }
}

/// End this session: its access and refresh tokens stop working everywhere.
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    security(("oauth2" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing, invalid or expired token, or an ended session", body = ErrorBody),
    )
)]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode> {
    let mut tx = state.db.begin().await?;
    let ended = sessions::end(&mut *tx, user.id, &[user.session_id]).await?;
    let events = ended_event(&state, user.id, ended).into_iter().collect();
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the caller, this one included.
#[utoipa::path(
    post, path = "/auth/logout-all", tag = "auth",
    security(("oauth2" = [])),
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "Missing, invalid or expired token, or an ended session", body = ErrorBody),
    )
)]
async fn logout_all(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode> {
    let mut tx = state.db.begin().await?;
    let ended = sessions::end_all(&mut *tx, user.id, None).await?;
    let events = ended_event(&state, user.id, ended).into_iter().collect();
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions, most recently used first.
#[utoipa::path(
    get, path = "/auth/sessions", tag = "auth",
    security(("oauth2" = [])),
    responses(
        (status = 200, description = "Live sessions", body = [SessionOut]),
        (status = 401, description = "Missing, invalid or expired token, or an ended session", body = ErrorBody),
    )
)]
async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<Vec<SessionOut>>> {
    let rows = sessions::live(&state.db, user.id).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|s| SessionOut {
                current: s.id == user.session_id,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                user_agent: s.user_agent,
            })
            .collect(),
    ))
}

/// End one of the caller's sessions (e.g. a lost phone's).
#[utoipa::path(
    delete, path = "/auth/sessions/{id}", tag = "auth",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "A session id from `GET /auth/sessions`")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Missing, invalid or expired token, or an ended session", body = ErrorBody),
        (status = 404, description = "No live session of the caller has this id", body = ErrorBody),
    )
)]
async fn end_session(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin().await?;
    let ended = sessions::end(&mut *tx, user.id, &[id]).await?;
    if ended.is_empty() {
        return Err(Error::NotFound("session"));
    }
    let events = ended_event(&state, user.id, ended).into_iter().collect();
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
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

/// Change the caller's name. Members of their chats see it live (`user` frames on the relay)
/// and in every chat list and member list from now on.
#[utoipa::path(
    patch, path = "/auth/me", tag = "auth",
    security(("oauth2" = [])),
    request_body = UpdateMe,
    responses(
        (status = 200, description = "The profile as it is now", body = Me),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `detail` names it", body = ErrorBody),
    )
)]
async fn update_me(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<UpdateMe>,
) -> Result<axum::Json<Me>> {
    let name = validate::name("name", &body.name)?;
    let mut tx = state.db.begin().await?;
    let me = users::rename(&mut *tx, user.id, &name)
        .await?
        .ok_or(Error::Unauthorized("the token's user no longer exists"))?;
    let chat_ids = users::chat_ids(&mut *tx, user.id).await?;
    write::commit(&state, tx, Vec::new()).await?;
    // Not a change of any chat (no rev): every read shows the current name anyway, so this
    // news is ephemeral, one event per chat the user is in.
    let news = chat_ids.into_iter().map(|chat_id| Event::UserUpdated {
        chat_id,
        user_id: user.id,
        name: me.name.clone(),
    });
    write::announce_ephemeral(&state, news.collect()).await;
    Ok(axum::Json(me))
}

/// Change the caller's password. This session goes on; every other one ends.
#[utoipa::path(
    post, path = "/auth/password", tag = "auth",
    security(("oauth2" = [])),
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed; the caller's other sessions have ended"),
        (status = 401, description = "Wrong current password, or a bad token", body = ErrorBody),
        (status = 422, description = "The new password breaks a rule", body = ErrorBody),
    )
)]
async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<ChangePassword>,
) -> Result<StatusCode> {
    reauthenticate(
        &state,
        user.id,
        body.current_password,
        "current password is wrong",
    )
    .await?;
    state
        .password_rules
        .check("new_password", &body.new_password)?;
    let hash = state.passwords.hash(body.new_password).await?;
    let mut tx = state.db.begin().await?;
    users::set_password_hash(&mut *tx, user.id, &hash).await?;
    let ended = sessions::end_all(&mut *tx, user.id, Some(user.session_id)).await?;
    let events = ended_event(&state, user.id, ended).into_iter().collect();
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete the caller's account. Every session ends, the email is free to register again, and
/// the user shows as "Deleted user". Their messages stay in the chats of the others; they
/// leave every group, and a group they owned passes to its longest-standing member.
#[utoipa::path(
    delete, path = "/auth/me", tag = "auth",
    security(("oauth2" = [])),
    request_body = DeleteMe,
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Wrong password, or a bad token", body = ErrorBody),
    )
)]
async fn delete_me(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<DeleteMe>,
) -> Result<StatusCode> {
    reauthenticate(&state, user.id, body.password, "password is wrong").await?;
    let mut tx = state.db.begin().await?;
    // The user's row first, then their chats' (`users::lock` says why): a group that adds
    // them meanwhile either committed before this read of their chats, or waits and then
    // finds them gone.
    if !users::lock(&mut *tx, user.id).await? {
        return Err(Error::Unauthorized("the token's user no longer exists"));
    }
    let mut events = Vec::new();
    let mut left = Vec::new();
    // Chats in id order: each membership change locks its chat, and every writer that locks
    // several takes them in this order, so two deletions cannot deadlock.
    for chat_id in users::chat_ids(&mut *tx, user.id).await? {
        let chat = chats::for_member(&mut *tx, chat_id, user.id).await?;
        if !chat.is_some_and(|c| c.is_group()) {
            // A private chat keeps both members: the other side keeps the history, with the
            // deleted user's name shown as "Deleted user".
            continue;
        }
        let rev = chats::take_revs(&mut *tx, chat_id, 1).await?;
        if let Some(changes) = write::remove_member(&mut tx, chat_id, user.id, rev).await? {
            events.extend(changes);
            left.push((chat_id, rev));
        }
    }
    let member_rev = match left.is_empty() {
        true => 0,
        false => users::bump_member_revs(&mut *tx, &[user.id])
            .await?
            .first()
            .map_or(0, |&(_, r)| r),
    };
    let ended = sessions::end_all(&mut *tx, user.id, None).await?;
    users::tombstone(&mut *tx, user.id).await?;
    events.extend(left.into_iter().map(|(chat_id, rev)| Event::ChatRemoved {
        user_id: user.id,
        chat_id,
        rev,
        member_rev,
    }));
    events.extend(ended_event(&state, user.id, ended));
    write::commit(&state, tx, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new access token for the session, with its refresh token.
fn tokens(
    state: &AppState,
    user_id: i64,
    session_id: i64,
    refresh: RefreshToken,
) -> Result<axum::Json<TokenOut>> {
    let issued = state.tokens.issue(user_id, session_id)?;
    Ok(axum::Json(TokenOut {
        access_token: issued.token,
        token_type: "bearer".into(),
        expires_in: issued.expires_in,
        refresh_token: refresh.token,
    }))
}

/// 401 unless `password` is the user's (the full argon2 work either way).
async fn reauthenticate(
    state: &AppState,
    user_id: i64,
    password: String,
    wrong: &'static str,
) -> Result<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::Unauthorized(wrong));
    }
    let hash = users::password_hash(&state.db, user_id).await?;
    if state.passwords.verify(password, hash).await? {
        Ok(())
    } else {
        Err(Error::Unauthorized(wrong))
    }
}

/// The news that these sessions ended, for the commit that ends them (relays close their
/// sockets; their poller covers a lost event). This process's session cache forgets them at
/// once: a cached check must not let them through even before the commit answers.
fn ended_event(state: &AppState, user_id: i64, session_ids: Vec<i64>) -> Option<Event> {
    if session_ids.is_empty() {
        return None;
    }
    state.sessions_ended(&session_ids);
    Some(Event::SessionsEnded {
        user_id,
        session_ids,
    })
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?.trim();
    (!agent.is_empty()).then(|| agent.chars().take(MAX_USER_AGENT_CHARS).collect())
}
