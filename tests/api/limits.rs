//! Per-user rate limits, on by default: sends (HTTP and WebSocket together), group changes and
//! typing answer 429 `rate_limited` with `Retry-After`, and nothing is written for them; failed
//! logins lock the account and the address.
//!
//! The tests of a limit run on a clock they hold ([`spawn_counting_on`]): nothing refills unless
//! the test moves the clock, so a refusal the test expects cannot be let through by a cell that
//! came back while a slow machine ran the requests before it.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_shared::{
    AppState,
    config::LimitSettings,
    service::limits::{FakeRelativeClock, LimitClock, Limits, LoginGuard},
};
use windi_tests::{TestApp, relay_settings, ws::WsClient};

const WAIT: Duration = Duration::from_secs(10);

/// windi with the production limits and login guard, counting time on `clock` alone.
async fn spawn_counting_on(clock: &FakeRelativeClock) -> TestApp {
    let clock = LimitClock::from(clock.clone());
    TestApp::spawn_adjusted(|state| AppState {
        limits: Limits::counting_on(clock.clone(), windi_tests::test_limits()),
        logins: Arc::new(LoginGuard::counting_on(clock)),
        ..state
    })
    .await
}

/// Sends `text` over the relay; answers its ack or its error.
async fn ws_send(ws: &mut WsClient, chat: i64, text: &str) -> Value {
    ws.send(
        json!({"type": "send", "chat_id": chat, "text": text, "dedup_key": format!("w{text}")}),
    )
    .await;
    ws.frames(&["ack", "error"], 1, WAIT).await.remove(0)
}

#[tokio::test]
async fn sends_over_http_and_websocket_share_one_budget_and_the_excess_writes_nothing() {
    let clock = FakeRelativeClock::default();
    let app = spawn_counting_on(&clock).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let burst = LimitSettings::default().sends_burst as usize;
    // Half the burst over HTTP (the first send opens the chat), the other half over the relay.
    let chat = app.send_to_user(&alice, &bob, "0").await["chat_id"]
        .as_i64()
        .unwrap();
    for i in 1..burst / 2 {
        app.send_to_chat(&alice, chat, &format!("{i}")).await;
    }
    let mut ws = WsClient::connect(relay.addr, &alice.token).await;
    for i in burst / 2..burst {
        let answer = ws_send(&mut ws, chat, &format!("{i}")).await;
        assert_eq!(
            answer["type"], "ack",
            "send {i} of a burst of {burst}: {answer}"
        );
    }
    // The budget is spent and the clock stands still: the next send is refused either way.
    let refused = ws_send(&mut ws, chat, "over").await;
    assert_eq!(
        refused["type"], "error",
        "the relay let more than the burst through: {refused}"
    );
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "over"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "HTTP sends were not limited with the WebSocket's: {body}"
    );
    assert_eq!(body["code"], "rate_limited");
    // The refused sends left nothing behind: the stored messages are the burst answered as sent.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1")
        .bind(chat)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, burst, "a refused send was stored");
    assert_eq!(
        app.chat_rev(chat).await,
        stored,
        "a refused send took a rev"
    );
    // Another user's budget is their own.
    app.send_to_user(&carol, &bob, "unaffected").await;

    // Retry-After says when to come back (one cell's 50 ms, rounded up to the header's whole
    // seconds), and then it works.
    let response = app
        .http
        .post(app.url("/chat/message"))
        .bearer_auth(&alice.token)
        .json(&json!({"chat_id": chat, "text": "over"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    clock.advance(Duration::from_secs(retry_after));
    app.send_to_chat(&alice, chat, "later").await;
    relay.stop().await;
}

#[tokio::test]
async fn group_changes_and_typing_are_limited_too() {
    let app = spawn_counting_on(&FakeRelativeClock::default()).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let burst = LimitSettings::default().groups_burst;
    let mut last = StatusCode::CREATED;
    let mut created = 0;
    for _ in 0..burst + 5 {
        let (status, _) = app
            .post(
                "/chat/group",
                &alice,
                json!({"name": "g", "participant_ids": [bob.id]}),
            )
            .await;
        last = status;
        if status != StatusCode::CREATED {
            break;
        }
        created += 1;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(created, burst);
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM chats WHERE kind = 'group'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(groups, i64::from(burst), "a refused group was created");

    // Typing: many chats at once, so the per-chat one-a-second rule does not hide the limit.
    let chats: Vec<i64> = sqlx::query_scalar("SELECT id FROM chats ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    let mut ws = WsClient::connect(relay.addr, &alice.token).await;
    for chat in &chats {
        ws.send(json!({"type": "typing", "chat_id": chat})).await;
    }
    let error = ws.expect("error", WAIT).await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    relay.stop().await;
}

#[tokio::test]
async fn a_login_flood_is_answered_503_with_retry_after_instead_of_waiting_without_end() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..300).map(|_| {
        let request = app.http.post(app.url("/auth/login")).form(&[
            ("username", alice.email.as_str()),
            ("password", windi_tests::PASSWORD),
        ]);
        async move {
            let sent = std::time::Instant::now();
            let response = request.send().await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            (response.status(), retry_after, sent.elapsed())
        }
    }))
    .await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let ok = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .count();
    assert!(
        !busy.is_empty(),
        "300 logins at once all queued: the queue is not bounded"
    );
    assert!(
        busy.iter().all(|(_, retry, _)| *retry),
        "a 503 without Retry-After"
    );
    assert_eq!(ok + busy.len(), 300, "{answers:?}");
    // A full queue says so at once instead of making the client wait for the deadline.
    let mut waits: Vec<Duration> = busy.iter().map(|(_, _, t)| *t).collect();
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(
        median < Duration::from_secs(3),
        "503s took {median:?} (median)"
    );
    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap();
    // Nothing waits much past the request deadline (5 s): the margin is for a loaded CI
    // machine; without the bound, waits grow with the queue (15 s and more here).
    assert!(
        slowest < Duration::from_secs(9),
        "a login waited {slowest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn login_status(
    app: &TestApp,
    email: &str,
    password: &str,
    from: &str,
) -> (StatusCode, Option<String>) {
    // Lambda's view of the client (no TCP peer there is the proxy's header); the test server
    // has a peer, so the address comes from it: every test login is from 127.0.0.1.
    let response = app
        .http
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", from)
        .form(&[("username", email), ("password", password)])
        .send()
        .await
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry)
}

#[tokio::test]
async fn five_failed_logins_lock_the_account_even_with_the_right_password_but_not_its_neighbours() {
    let app = spawn_counting_on(&FakeRelativeClock::default()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    for _ in 0..5 {
        let (status, _) = login_status(&app, &alice.email, "wrong password!", "198.51.100.7").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, retry) =
        login_status(&app, &alice.email, windi_tests::PASSWORD, "198.51.100.7").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password after 5 failures"
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert_eq!(retry, 15 * 60);
    let (_, body) = app
        .call(
            reqwest::Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": alice.email, "password": windi_tests::PASSWORD})),
        )
        .await;
    assert_eq!(body["code"], "too_many_attempts");
    // The same address, another account: unaffected.
    let (status, _) = login_status(&app, &bob.email, windi_tests::PASSWORD, "198.51.100.7").await;
    assert_eq!(status, StatusCode::OK);
    // Unknown emails are counted like known ones: the lockout reveals nothing.
    for _ in 0..5 {
        login_status(
            &app,
            "nobody@example.com",
            "wrong password!",
            "198.51.100.7",
        )
        .await;
    }
    let (status, _) = login_status(
        &app,
        "nobody@example.com",
        "wrong password!",
        "198.51.100.7",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_address_spraying_many_accounts_is_locked_after_a_hundred_failures() {
    let app = spawn_counting_on(&FakeRelativeClock::default()).await;
    let alice = app.user("Alice").await;
    // 100 failures over 50 made-up accounts (two each: no account reaches its own limit).
    let mut locked_at = None;
    for i in 0..120 {
        let (status, _) = login_status(
            &app,
            &format!("spray{}@example.com", i / 2),
            "wrong password!",
            "x",
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            locked_at = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        locked_at,
        Some(100),
        "the address was locked after {locked_at:?} failures"
    );
    // From that address now even the right password of another account waits.
    let (status, _) = login_status(&app, &alice.email, windi_tests::PASSWORD, "x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn unknown_emails_and_wrong_passwords_look_the_same_in_body_and_time() {
    let app = TestApp::spawn().await;
    let names: Vec<String> = (0..12).map(|i| format!("U{i}")).collect();
    let users = futures::future::join_all(names.iter().map(|name| app.user(name))).await;
    let time = |email: String| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let (status, body) = app
                .call(
                    reqwest::Method::POST,
                    "/auth/login",
                    None,
                    Some(json!({"email": email, "password": "wrong password!"})),
                )
                .await;
            (status, body, started.elapsed())
        }
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved, one at a time, each account failing once.
    for (i, user) in users.iter().enumerate() {
        let a = time(user.email.clone()).await;
        let b = time(format!("nobody{i}@example.com")).await;
        assert_eq!((a.0, &a.1), (b.0, &b.1), "the answers differ");
        known.push(a.2);
        unknown.push(b.2);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[6].as_secs_f64(), unknown[6].as_secs_f64());
    eprintln!(
        "login medians: wrong password {:.1} ms, unknown email {:.1} ms",
        k * 1e3,
        u * 1e3
    );
    assert!(k / u > 0.5 && k / u < 2.0, "medians {k} s vs {u} s");
}
