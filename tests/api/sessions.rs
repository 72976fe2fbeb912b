//! Sessions: rotation of refresh tokens, the grace of a retried refresh, reuse detection, logout
//! and logout-all on every route and on the relay, the session list, and a password change
//! ending the other sessions.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{PASSWORD, TestApp, TestUser, relay_settings, ws::WsClient};

/// A second login of `user`: another session, with its whole answer.
async fn login(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": user.email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn access(body: &Value) -> &str {
    body["access_token"].as_str().unwrap()
}

async fn refresh(app: &TestApp, refresh_token: &Value) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await
}

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.call(Method::GET, "/auth/me", Some(token), None).await.0
}

#[tokio::test]
async fn login_answers_a_refresh_token_that_is_stored_only_as_its_hash() {
    let app = TestApp::spawn().await;
    let user = app.user("Alice").await;
    let body = login(&app, &user).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 30 * 60);
    let refresh_token = body["refresh_token"].as_str().unwrap();
    assert!(
        refresh_token.len() >= 43,
        "256 bits of randomness: {refresh_token}"
    );
    assert_ne!(refresh_token, login(&app, &user).await["refresh_token"]);

    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT refresh_hash FROM sessions WHERE user_id = $1")
            .bind(user.id)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 3, "one session per login");
    assert!(
        stored
            .iter()
            .all(|hash| hash.len() == 32 && hash.as_slice() != refresh_token.as_bytes()),
        "only sha256 hashes are stored"
    );
}

#[tokio::test]
async fn a_refresh_gives_new_tokens_and_uses_up_the_old_refresh_token() {
    let app = TestApp::spawn().await;
    let user = app.user("Alice").await;
    let first = login(&app, &user).await;

    let (status, second) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["token_type"], "bearer");
    assert_eq!(me_status(&app, access(&second)).await, StatusCode::OK);

    let (status, third) = refresh(&app, &second["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "the new one works in turn: {third}");

    let (status, body) = refresh(&app, &json!("never-issued")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
}

/// Moves every used refresh token's use back by the grace and a second: what waiting out the
/// window would do, without the wait.
async fn past_the_grace(app: &TestApp) {
    let grace = app.state.tokens.refresh_grace().as_secs_f64() + 1.0;
    sqlx::query("UPDATE used_refresh_tokens SET used_at = used_at - make_interval(secs => $1)")
        .bind(grace)
        .execute(&app.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refresh_token_presented_again_after_the_grace_window_ends_the_whole_session() {
    let app = TestApp::spawn().await;
    let user = app.user("Alice").await;
    let stolen = login(&app, &user).await;
    let (status, rotated) = refresh(&app, &stolen["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK);
    past_the_grace(&app).await;

    // The copy is presented again: by the thief or by the owner, nobody can tell.
    let (status, body) = refresh(&app, &stolen["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    assert_eq!(
        me_status(&app, access(&rotated)).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = refresh(&app, &rotated["refresh_token"]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the current refresh token died too"
    );
    assert_eq!(
        me_status(&app, &user.token).await,
        StatusCode::OK,
        "the user's other sessions go on"
    );
}

#[tokio::test]
async fn a_refresh_retried_within_the_grace_window_answers_the_same_tokens_and_the_session_lives() {
    let app = TestApp::spawn().await;
    let user = app.user("Alice").await;
    let first = login(&app, &user).await;
    let (status, lost) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{lost}");

    // The answer never reached the client, which asks again with the same token.
    let (status, retried) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "a retry is no reuse: {retried}");
    assert_eq!(retried["refresh_token"], lost["refresh_token"]);
    assert_eq!(me_status(&app, access(&retried)).await, StatusCode::OK);
    assert_eq!(me_status(&app, access(&lost)).await, StatusCode::OK);

    // The session lives on: the one refresh token it has now works in turn, and two tabs
    // refreshing with it at once both get the same next one.
    let (status, next) = refresh(&app, &retried["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_ne!(next["refresh_token"], retried["refresh_token"]);
    let ((status_a, a), (status_b, b)) = tokio::join!(
        refresh(&app, &next["refresh_token"]),
        refresh(&app, &next["refresh_token"])
    );
    assert_eq!(
        (status_a, status_b),
        (StatusCode::OK, StatusCode::OK),
        "{a} {b}"
    );
    assert_eq!(a["refresh_token"], b["refresh_token"]);
    assert_eq!(me_status(&app, access(&b)).await, StatusCode::OK);
    let (status, _) = refresh(&app, &a["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = app.get("/auth/sessions", &user).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "no session ended: {list}"
    );
}

#[tokio::test]
async fn a_token_older_than_the_immediate_predecessor_is_reuse_even_within_the_grace_window() {
    let app = TestApp::spawn().await;
    let user = app.user("Alice").await;
    let first = login(&app, &user).await;
    let (_, second) = refresh(&app, &first["refresh_token"]).await;
    let (status, third) = refresh(&app, &second["refresh_token"]).await;
    assert_eq!(status, StatusCode::OK, "{third}");

    // Seconds later: `second` would be a retry, `first` is two refreshes old.
    let (status, body) = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        me_status(&app, access(&third)).await,
        StatusCode::UNAUTHORIZED,
        "the session ended"
    );
    let (status, _) = refresh(&app, &third["refresh_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(&app, &second["refresh_token"]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no retry of an ended session"
    );
    assert_eq!(me_status(&app, &user.token).await, StatusCode::OK);
}

#[tokio::test]
async fn after_logout_the_access_token_is_refused_on_every_route() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "hello").await;
    let chat_id = chat["chat_id"].as_i64().unwrap();
    let message_id = chat["id"].as_i64().unwrap();
    let session = login(&app, &alice).await;
    let token = access(&session);
    assert_eq!(me_status(&app, token).await, StatusCode::OK);

    let (status, body) = app
        .call(Method::POST, "/auth/logout", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/auth/me".into(), None),
        (Method::PATCH, "/auth/me".into(), Some(json!({"name": "x"}))),
        (Method::GET, "/auth/sessions".into(), None),
        (Method::POST, "/auth/logout".into(), None),
        (Method::POST, "/auth/logout-all".into(), None),
        (Method::GET, "/chat/list".into(), None),
        (Method::GET, format!("/chat/history/{chat_id}"), None),
        (Method::GET, format!("/chat/changes/{chat_id}"), None),
        (
            Method::POST,
            "/chat/message".into(),
            Some(json!({"chat_id": chat_id, "text": "after logout"})),
        ),
        (
            Method::PATCH,
            format!("/chat/message/{message_id}/read"),
            None,
        ),
        (
            Method::POST,
            "/chat/group".into(),
            Some(json!({"name": "g", "participant_ids": []})),
        ),
        (Method::GET, "/users/search?q=bo".into(), None),
        (Method::GET, "/users/blocked".into(), None),
    ];
    for (method, path, body) in routes {
        let (status, answer) = app.call(method.clone(), &path, Some(token), body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
        assert_eq!(answer["code"], "unauthorized", "{method} {path}");
    }
    let (status, _) = refresh(&app, &session["refresh_token"]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "its refresh token is dead"
    );
    assert_eq!(
        me_status(&app, &alice.token).await,
        StatusCode::OK,
        "only that session ended"
    );
    assert_eq!(
        app.history(&bob, chat_id, "").await.len(),
        1,
        "nothing was sent"
    );
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_user_only() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let phone = login(&app, &alice).await;
    let (status, _) = app
        .call(Method::POST, "/auth/logout-all", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        me_status(&app, &alice.token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me_status(&app, access(&phone)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &phone["refresh_token"]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&app, &bob.token).await, StatusCode::OK);
    assert_eq!(
        me_status(&app, access(&login(&app, &alice).await)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sessions_are_listed_and_one_can_be_ended_by_its_id() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let response = app
        .http
        .post(app.url("/auth/login"))
        .header("user-agent", "windi-test-phone/1.0")
        .form(&[("username", alice.email.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let phone: Value = response.json().await.unwrap();

    let (status, list) = app.get("/auth/sessions", &alice).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for session in list {
        for field in ["id", "created_at", "last_used_at", "user_agent", "current"] {
            assert!(session.get(field).is_some(), "{field} in {session}");
        }
    }
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_session = list
        .iter()
        .find(|s| s["user_agent"] == "windi-test-phone/1.0")
        .unwrap();
    assert_eq!(phone_session["current"], false);
    let id = phone_session["id"].as_i64().unwrap();

    let (status, _) = app.delete(&format!("/auth/sessions/{id}"), &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not someone else's session");
    assert_eq!(me_status(&app, access(&phone)).await, StatusCode::OK);

    let (status, _) = app.delete(&format!("/auth/sessions/{id}"), &alice).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        me_status(&app, access(&phone)).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app.delete(&format!("/auth/sessions/{id}"), &alice).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already ended");
    let (_, list) = app.get("/auth/sessions", &alice).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_password_change_keeps_this_session_and_ends_the_others() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let laptop = login(&app, &alice).await;

    let (status, body) = app
        .post(
            "/auth/password",
            &alice,
            json!({"current_password": "not it at all", "new_password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(me_status(&app, access(&laptop)).await, StatusCode::OK);

    let (status, body) = app
        .post(
            "/auth/password",
            &alice,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = app
        .post(
            "/auth/password",
            &alice,
            json!({"current_password": PASSWORD, "new_password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        me_status(&app, &alice.token).await,
        StatusCode::OK,
        "this one goes on"
    );
    assert_eq!(
        me_status(&app, access(&laptop)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &laptop["refresh_token"]).await.0,
        StatusCode::UNAUTHORIZED
    );

    let old = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": alice.email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(old.0, StatusCode::UNAUTHORIZED);
    let new = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": alice.email, "password": "a brand new password"})),
        )
        .await;
    assert_eq!(new.0, StatusCode::OK);
}

#[tokio::test]
async fn the_relay_closes_an_ended_sessions_sockets_and_refuses_its_token() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let alice = app.user("Alice").await;
    let phone = login(&app, &alice).await;
    let mut ending = WsClient::connect(relay.addr, access(&phone)).await;
    let mut staying = WsClient::connect(relay.addr, &alice.token).await;

    let started = Instant::now();
    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(access(&phone)), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(ending.close_code(Duration::from_secs(2)).await, 4001);
    assert!(started.elapsed() < Duration::from_secs(2));
    staying
        .none_within("error", Duration::from_millis(500))
        .await;

    let refused = WsClient::try_connect(relay.addr, Some(access(&phone)), None).await;
    assert_eq!(refused.err(), Some(401));
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_closes_an_ended_session_whose_event_was_lost_within_its_poll_interval() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let silent = app.silent_twin().await;
    let alice = app.user("Alice").await;
    let phone = login(&app, &alice).await;
    let mut ending = WsClient::connect(relay.addr, access(&phone)).await;

    // Logged out through a windi whose events reach no relay: only the poller can find it.
    let (status, _) = silent
        .call(Method::POST, "/auth/logout", Some(access(&phone)), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let started = Instant::now();
    assert_eq!(ending.close_code(Duration::from_secs(2)).await, 4001);
    // relay_settings() polls every 200 ms; production every second.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    relay.stop().await;
}

/// Waits until this process answers `user`'s token from its session cache (the sync's first
/// poll has run and a request has been checked in Postgres once).
async fn until_cached(app: &TestApp, token: &str) -> (i64, i64) {
    let subject = app.state.tokens.verify(token).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(me_status(app, token).await, StatusCode::OK);
        let cached = app.state.sessions.lookup(
            subject.session_id,
            subject.user_id,
            std::time::Instant::now(),
        );
        if cached.is_ok() {
            return (subject.user_id, subject.session_id);
        }
        assert!(Instant::now() < deadline, "the session was never cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_cached_session_ends_at_once_in_the_process_that_ends_it() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    until_cached(&app, &alice.token).await;

    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        me_status(&app, &alice.token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_cached_session_ended_by_another_process_is_refused_within_about_a_second() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (user_id, session_id) = until_cached(&app, &alice.token).await;

    // `windi admin end-sessions` runs in a process of its own: it writes to Postgres only.
    assert_eq!(
        windi::admin::end_sessions(&app.db.pool, user_id)
            .await
            .unwrap(),
        1
    );
    let started = Instant::now();
    while me_status(&app, &alice.token).await == StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the ended session still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sync polls once a second.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        app.state
            .sessions
            .lookup(session_id, user_id, std::time::Instant::now())
            .is_err()
    );
}
