//! `windi admin`'s account tools, on a real database, as the CLI calls them: ending sessions,
//! disabling (and its race with a login in flight), and pruning.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{PASSWORD, TestApp, eventually};

#[tokio::test]
async fn an_operator_ends_sessions_disables_and_enables_a_user() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let pool = &app.db.pool;

    assert_eq!(windi::admin::end_sessions(pool, alice.id).await.unwrap(), 1);
    assert_eq!(
        app.get("/auth/me", &alice).await.0,
        StatusCode::UNAUTHORIZED
    );
    let token = app.login(&alice.email, PASSWORD).await;
    assert!(!token.is_empty(), "she logs in again");

    assert!(windi::admin::disable(pool, bob.id).await.unwrap());
    assert_eq!(app.get("/auth/me", &bob).await.0, StatusCode::UNAUTHORIZED);
    let response = app
        .http
        .post(app.url("/auth/login"))
        .form(&[("username", bob.email.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a disabled user logs in"
    );
    let listed = windi::admin::list_users(pool, 10, None).await.unwrap();
    assert!(listed.iter().any(|u| u.id == bob.id));

    assert!(windi::admin::enable(pool, bob.id).await.unwrap());
    app.login(&bob.email, PASSWORD).await;
    assert!(!windi::admin::disable(pool, 987_654).await.unwrap());
}

/// A login over JSON: its status and whole answer (tokens included).
async fn login(app: &TestApp, email: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await
}

async fn refresh_status(app: &TestApp, session: &Value) -> StatusCode {
    let body = json!({"refresh_token": session["refresh_token"]});
    app.call(Method::POST, "/auth/refresh", None, Some(body))
        .await
        .0
}

/// The next pair of a session (asserting 200).
async fn refreshed(app: &TestApp, session: &Value) -> Value {
    let body = json!({"refresh_token": session["refresh_token"]});
    let (status, next) = app
        .call(Method::POST, "/auth/refresh", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    next
}

async fn me_status(app: &TestApp, session: &Value) -> StatusCode {
    let token = session["access_token"].as_str().unwrap();
    app.call(Method::GET, "/auth/me", Some(token), None).await.0
}

/// (sessions, live sessions) of the user.
async fn sessions_of(app: &TestApp, user_id: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE ended_at IS NULL) FROM sessions
         WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_login_in_flight_when_its_account_is_disabled_answers_401_and_starts_no_session() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (_, before) = login(&app, &alice.email).await;
    assert_eq!(sessions_of(&app, alice.id).await, (2, 2));

    // The disabling transaction holds the user's row with the lock its `UPDATE` takes (a
    // session's foreign-key check alone does not wait for that one) before it disables.
    let mut disabling = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(alice.id)
        .execute(&mut *disabling)
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let (http, url, email) = (
            app.http.clone(),
            app.url("/auth/login"),
            alice.email.clone(),
        );
        async move {
            let form = [("username", email.as_str()), ("password", PASSWORD)];
            http.post(url).form(&form).send().await.unwrap().status()
        }
    });
    // The race is hit: the login checked the password and waits at its session's insert.
    eventually(
        Duration::from_secs(4),
        "the login waits for the user's row lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'INSERT INTO sessions%'",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            waiting == 1
        },
    )
    .await;
    assert!(
        windi::admin::disable_in(&mut disabling, alice.id)
            .await
            .unwrap()
    );
    disabling.commit().await.unwrap();

    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "answered as a disabled account's login always is"
    );
    assert_eq!(
        sessions_of(&app, alice.id).await,
        (2, 0),
        "no session started, and those before ended"
    );
    assert_eq!(me_status(&app, &before).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh_status(&app, &before).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login(&app, &alice.email).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_disabled_accounts_tokens_are_refused_even_where_its_sessions_did_not_end() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (_, session) = login(&app, &alice.email).await;
    // Disabled by hand (psql), not by `windi admin disable`: no session ends.
    sqlx::query("UPDATE users SET disabled_at = now() WHERE id = $1")
        .bind(alice.id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sessions_of(&app, alice.id).await, (2, 2));

    assert_eq!(me_status(&app, &session).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh_status(&app, &session).await,
        StatusCode::UNAUTHORIZED
    );

    assert!(windi::admin::enable(&app.db.pool, alice.id).await.unwrap());
    assert_eq!(me_status(&app, &session).await, StatusCode::OK);
    assert_eq!(refresh_status(&app, &session).await, StatusCode::OK);
}

#[tokio::test]
async fn pruning_removes_old_used_tokens_and_ended_sessions_and_keeps_the_live_ones() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let db = &app.db.pool;
    let session_id = |session: &Value| {
        let token = session["access_token"].as_str().unwrap();
        app.state.tokens.verify(token).unwrap().session_id
    };
    // Live, refreshed three times; two of its used tokens are past their retention.
    let mut live = login(&app, &alice.email).await.1;
    for _ in 0..3 {
        live = refreshed(&app, &live).await;
    }
    sqlx::query(
        "UPDATE used_refresh_tokens SET used_at = now() - interval '31 days'
         WHERE token_hash IN (SELECT token_hash FROM used_refresh_tokens
                              WHERE session_id = $1 ORDER BY used_at LIMIT 2)",
    )
    .bind(session_id(&live))
    .execute(db)
    .await
    .unwrap();
    // Ended 8 days ago, with a used token of its own; and ended just now.
    let old = refreshed(&app, &login(&app, &alice.email).await.1).await;
    let recent = login(&app, &alice.email).await.1;
    for ended in [&old, &recent] {
        let token = ended["access_token"].as_str().unwrap();
        let (status, _) = app
            .call(Method::POST, "/auth/logout", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    sqlx::query("UPDATE sessions SET ended_at = now() - interval '8 days' WHERE id = $1")
        .bind(session_id(&old))
        .execute(db)
        .await
        .unwrap();

    // Two rows a statement, so every statement runs more than one batch.
    let pruned = windi_shared::store::sessions::prune(db, 2).await.unwrap();
    assert_eq!((pruned.used_tokens, pruned.sessions), (3, 1), "{pruned:?}");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM sessions ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap();
    assert!(!left.contains(&session_id(&old)), "{left:?}");
    assert!(left.contains(&session_id(&live)) && left.contains(&session_id(&recent)));
    assert_eq!(
        left.len(),
        3,
        "the registration's login's session too: {left:?}"
    );
    let used: i64 = sqlx::query_scalar("SELECT count(*) FROM used_refresh_tokens")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(used, 1, "the live session's recent one");

    assert_eq!(me_status(&app, &live).await, StatusCode::OK);
    assert_eq!(app.get("/auth/me", &alice).await.0, StatusCode::OK);
    refreshed(&app, &live).await;
    let again = windi::admin::prune(db, app.state.files.as_ref())
        .await
        .unwrap();
    assert_eq!(
        (again.sessions.used_tokens, again.sessions.sessions),
        (0, 0)
    );
}
