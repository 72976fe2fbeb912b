//! Fields the server owns (`id`, `sender_id`, `seq`, `rev`, `read`, `timestamp`, `role`,
//! `creator_id` …) sent in a body are ignored, never honoured.

use reqwest::StatusCode;
use serde_json::json;
use windi_tests::TestApp;

#[tokio::test]
async fn server_owned_fields_in_a_body_are_ignored() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let first = app.send_to_user(&alice, &bob, "first").await;
    let chat = first["chat_id"].as_i64().unwrap();
    let (status, sent) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "mine", "id": 999, "sender_id": bob.id, "seq": 77,
                   "rev": 77, "read": true, "deleted": true, "edited_at": "2020-01-01T00:00:00Z",
                   "timestamp": "2020-01-01T00:00:00Z",
                   "reactions": [{"emoji": "👍", "count": 9, "user_ids": [bob.id]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_ne!(sent["id"], 999);
    assert_eq!(sent["sender_id"], alice.id);
    assert_eq!(
        (sent["seq"].clone(), sent["rev"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(sent["read"], false);
    assert_eq!(sent["deleted"], false);
    assert_eq!(sent["edited_at"], serde_json::Value::Null);
    assert_eq!(sent["reactions"], json!([]));
    assert_ne!(sent["timestamp"], "2020-01-01T00:00:00Z");

    let (status, group) = app
        .post(
            "/chat/group",
            &bob,
            json!({"name": "g", "participant_ids": [carol.id], "creator_id": carol.id,
                   "id": 5, "chat_id": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["creator_id"], bob.id);
    let (_, list) = app.get("/chat/list", &carol).await;
    let theirs = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == group["chat_id"])
        .unwrap();
    assert_eq!(theirs["role"], "member");

    let (status, edited) = app
        .patch(
            &format!("/chat/message/{}", sent["id"]),
            &alice,
            json!({"text": "mine, edited", "sender_id": bob.id, "chat_id": 1, "seq": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        (edited["sender_id"].clone(), edited["seq"].clone()),
        (json!(alice.id), json!(2))
    );
}
