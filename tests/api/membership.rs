//! Membership is checked on every chat-scoped route: a non-member gets the same 404 as for a
//! chat or message that does not exist, so ids cannot be probed.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{TestApp, TestUser};

/// Every chat-scoped call `who` can make against `chat_id` / `message_id`.
async fn chat_scoped_calls(
    app: &TestApp,
    who: &TestUser,
    chat_id: i64,
    message_id: i64,
) -> Vec<(&'static str, StatusCode, Value)> {
    let token = Some(who.token.as_str());
    let mut out = Vec::new();
    let calls: [(&str, Method, String, Option<Value>); 5] = [
        (
            "history",
            Method::GET,
            format!("/chat/history/{chat_id}"),
            None,
        ),
        (
            "send",
            Method::POST,
            "/chat/message".into(),
            Some(json!({"chat_id": chat_id, "text": "let me in"})),
        ),
        (
            "read",
            Method::PATCH,
            format!("/chat/message/{message_id}/read"),
            None,
        ),
        (
            "add member",
            Method::POST,
            format!("/chat/group/{chat_id}/members"),
            Some(json!({"user_ids": [who.id]})),
        ),
        (
            "remove member",
            Method::DELETE,
            format!("/chat/group/{chat_id}/members/{}", who.id),
            None,
        ),
    ];
    for (name, method, path, body) in calls {
        let (status, body) = app.call(method, &path, token, body).await;
        out.push((name, status, body));
    }
    out
}

#[tokio::test]
async fn a_non_member_gets_the_same_404_as_for_a_chat_that_does_not_exist() {
    let app = TestApp::spawn().await;
    let (alice, bob, mallory) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Mallory").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    let message = app.send_to_chat(&alice, group, "secret plans").await;
    let message_id = message["id"].as_i64().unwrap();

    let existing = chat_scoped_calls(&app, &mallory, group, message_id).await;
    let missing = chat_scoped_calls(&app, &mallory, 987_654, 987_654).await;
    for ((name, status, body), (_, missing_status, missing_body)) in existing.iter().zip(&missing) {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{name}: {body}");
        assert_eq!((status, body), (missing_status, missing_body), "{name}");
    }

    // Nothing leaked into the chat or the list.
    assert_eq!(app.history(&alice, group, "").await.len(), 1);
    let (_, list) = app.get("/chat/list", &mallory).await;
    assert_eq!(list, json!([]));
    // And the private chat of two others is just as closed.
    let private = app.send_to_user(&alice, &bob, "just us").await;
    let (status, _) = app
        .get(&format!("/chat/history/{}", private["chat_id"]), &mallory)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
