//! A Postgres that crashes, restarts or stops answering: every route answers 503 `unavailable`
//! with `Retry-After` within the deadline, `/health` stays up, and windi heals by itself. On a
//! private cluster the test starts, crashes and pauses (never the shared one).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::json;
use windi_shared::events::LocalBus;
use windi_tests::{PrivatePostgres, TestApp, TestDb, TestUser, eventually, unique};

/// The promised bound on an answer while Postgres is unreachable, plus a margin for a loaded
/// machine.
const BOUND: Duration = Duration::from_millis(5_800);

/// Every kind of route, as one user would call them.
async fn probe_every_route(app: &TestApp, alice: &TestUser, chat: i64, message: i64) {
    let probes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, "/chat/list".into(), None),
        (Method::GET, format!("/chat/history/{chat}"), None),
        (Method::GET, format!("/chat/changes/{chat}"), None),
        (
            Method::POST,
            "/chat/message".into(),
            Some(json!({"chat_id": chat, "text": "down?"})),
        ),
        (Method::PATCH, format!("/chat/message/{message}/read"), None),
        (
            Method::PATCH,
            format!("/chat/message/{message}"),
            Some(json!({"text": "edit"})),
        ),
        (
            Method::POST,
            "/chat/group".into(),
            Some(json!({"name": "g", "participant_ids": []})),
        ),
        (Method::GET, "/auth/me".into(), None),
    ];
    // All at once: each must be answered within the bound on its own.
    futures::future::join_all(probes.into_iter().map(|(method, path, body)| async move {
        let started = Instant::now();
        let mut request = app
            .http
            .request(method.clone(), app.url(&path))
            .bearer_auth(&alice.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = tokio::time::timeout(BOUND * 2, request.send())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer at all"))
            .unwrap();
        let elapsed = started.elapsed();
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = windi_tests::read(response).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {body}"
        );
        assert_eq!(body["code"], "unavailable", "{method} {path}: {body}");
        assert!(retry_after.is_some(), "{method} {path}: no Retry-After");
        assert!(elapsed < BOUND, "{method} {path} took {elapsed:?}");
    }))
    .await;
    let response = app
        .http
        .post(app.url("/auth/login"))
        .form(&[
            ("username", alice.email.as_str()),
            ("password", windi_tests::PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.call(Method::GET, "/health", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/ready", None, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

async fn heals(app: &TestApp, alice: &TestUser) {
    eventually(Duration::from_secs(20), "windi serves again", || async {
        app.get("/chat/list", alice).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        app.call(Method::GET, "/ready", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_crashed_or_frozen_postgres_answers_503_in_time_and_windi_heals_without_a_restart() {
    let pg = PrivatePostgres::start().await;
    let db = TestDb::on(&pg.admin_url()).await;
    let app = TestApp::start(db, Arc::new(LocalBus::default()), unique("t")).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let acknowledged = app
        .send_to_user(&alice, &bob, "acknowledged before the crash")
        .await;
    let chat = acknowledged["chat_id"].as_i64().unwrap();
    let message = acknowledged["id"].as_i64().unwrap();

    // Refused: the server is gone (an immediate-mode stop, as after a crash).
    pg.crash();
    probe_every_route(&app, &alice, chat, message).await;
    pg.restart().await;
    heals(&app, &alice).await;
    // What was acknowledged before the crash survived it.
    let history = app.history(&alice, chat, "").await;
    assert_eq!(history[0]["text"], "acknowledged before the crash");
    let sent = app.send_to_chat(&alice, chat, "after the restart").await;
    assert_eq!(sent["seq"], 2, "no seq lost or repeated across the crash");

    // Timed out: every process of the server frozen, connections open and silent.
    pg.pause();
    probe_every_route(&app, &alice, chat, message).await;
    pg.resume();
    heals(&app, &alice).await;
    let history = app.history(&alice, chat, "").await;
    // The send that was answered 503 while frozen did not commit when the server woke up.
    assert!(history.iter().all(|m| m["text"] != "down?"), "{history:?}");
}

#[tokio::test]
async fn a_request_past_its_deadline_answers_503_and_never_commits_afterwards() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "first").await["chat_id"]
        .as_i64()
        .unwrap();
    // Another session holds the chat's row: the send waits for it past its deadline.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE")
        .bind(chat)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "late", "dedup_key": "late-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
    // The lock goes; the handler, still running, must not commit what was answered 503.
    blocker.rollback().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the late handler finished",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
                == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE text = 'late'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a request answered 503 committed anyway");
    // The retry with the same key goes through, once.
    let (status, _) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "late", "dedup_key": "late-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn clients_that_hang_up_mid_request_leave_every_connection_clean() {
    // Load on purpose: above the per-user limits.
    let app = TestApp::spawn_unlimited(windi_tests::Mode::Local).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "first").await["chat_id"]
        .as_i64()
        .unwrap();
    // 60 sends whose clients give up after a few milliseconds, mid-transaction for many.
    let impatient = windi_tests::http_client();
    let outcomes = futures::future::join_all((0..60).map(|i| {
        let request = impatient
            .post(app.url("/chat/message"))
            .bearer_auth(&alice.token)
            .timeout(Duration::from_millis(3 + 2 * i))
            .json(&json!({"chat_id": chat, "text": format!("impatient {i}"), "dedup_key": format!("k{i}")}));
        async move { request.send().await.is_ok() }
    }))
    .await;
    let hung_up = outcomes.iter().filter(|ok| !**ok).count();
    assert!(hung_up > 0, "every client waited: the race was not hit");

    let succeeded = outcomes.iter().filter(|ok| **ok).count() as i64;
    // Let whatever the server still runs finish: no session of this database busy any more.
    eventually(Duration::from_secs(10), "the server finished", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
            == 0
    })
    .await;
    // What committed is whole: counters, messages and change log agree, no gap, and no session
    // was left inside a transaction.
    let (messages, last_seq, rev, changes): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages WHERE chat_id = c.id), c.last_seq, c.rev,
                (SELECT count(*) FROM chat_changes WHERE chat_id = c.id)
         FROM chats c WHERE c.id = $1",
    )
    .bind(chat)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((last_seq, rev, changes), (messages, messages, messages));
    assert!(
        messages - 1 > succeeded,
        "no send committed after its client hung up ({succeeded} answered, {messages} stored): \
         the race was not hit"
    );
    // And the pool serves the next requests normally.
    for i in 0..20 {
        app.send_to_chat(&alice, chat, &format!("after {i}")).await;
    }
    // The retries of the impatient sends land once each.
    for i in 0..60 {
        let (status, body) = app
            .post(
                "/chat/message",
                &alice,
                json!({"chat_id": chat, "text": format!("impatient {i}"), "dedup_key": format!("k{i}")}),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    assert_eq!(app.chat_rev(chat).await, 81);
}
