//! Per-user rate limits, on by default: sends (HTTP and WebSocket together), group changes and
//! typing answer 429 `rate_limited` with `Retry-After`, and nothing is written for them.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use windi_shared::{events::LocalBus, limits::LimitSettings};
use windi_tests::{TestApp, TestDb, relay_settings, unique, ws::WsClient};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sends_over_http_and_websocket_share_one_budget_and_the_excess_writes_nothing() {
    // The production burst, refilled slowly so the test can tell refused from refilled.
    let limits = LimitSettings {
        sends_per_second: 1,
        ..LimitSettings::default()
    };
    let app = TestApp::start_with(
        TestDb::new().await,
        Arc::new(LocalBus::default()),
        unique("t"),
        limits,
    )
    .await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let burst = LimitSettings::default().sends_burst as usize;
    let chat = app.send_to_user(&alice, &bob, "0").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut ws = WsClient::connect(relay.addr, &alice.token).await;
    // Half the burst over HTTP, the rest over the relay, as fast as they go.
    for i in 1..burst / 2 {
        app.send_to_chat(&alice, chat, &format!("{i}")).await;
    }
    let (mut refused, mut acked) = (None, 0);
    // The budget refills at 1/s while this runs, so go on until the first refusal.
    for i in burst / 2..burst * 10 {
        ws.send(json!({"type": "send", "chat_id": chat, "text": format!("{i}"), "dedup_key": format!("w{i}")}))
            .await;
        let answer = ws.frames(&["ack", "error"], 1, WAIT).await.remove(0);
        if answer["type"] == "error" {
            refused = Some(answer);
            break;
        }
        acked += 1;
    }
    let refused = refused.expect("the relay let a whole burst and more through");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "over"}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    // The refused sends left nothing behind: every stored message was answered as sent.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1")
        .bind(chat)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let rev = app.chat_rev(chat).await;
    assert_eq!(
        stored as usize,
        burst / 2 + acked,
        "a refused send was stored"
    );
    assert_eq!(rev, stored, "a refused send took a rev");
    // Another user's budget is their own.
    app.send_to_user(&carol, &bob, "unaffected").await;

    // Retry-After says when to come back, and then it works.
    let response = app
        .http
        .post(app.url("/chat/message"))
        .bearer_auth(&alice.token)
        .json(&json!({"chat_id": chat, "text": "over"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    app.send_to_chat(&alice, chat, "later").await;
    relay.stop().await;
}

#[tokio::test]
async fn group_changes_and_typing_are_limited_too() {
    let app = TestApp::spawn().await;
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
    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap();
    // Nothing waits past the request deadline (5 s), with a margin for a loaded machine.
    assert!(
        slowest < Duration::from_secs(6),
        "a login waited {slowest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
