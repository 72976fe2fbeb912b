//! Groups: creation with the creator included, and membership changes by owner and members.

use reqwest::StatusCode;
use serde_json::json;
use windi_tests::TestApp;

#[tokio::test]
async fn the_creator_is_always_a_member_and_the_owner() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let (status, group) = app
        .post(
            "/chat/group",
            &alice,
            json!({"name": "  Project Team ", "participant_ids": [bob.id, carol.id, bob.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["name"], "Project Team");
    assert_eq!(group["creator_id"], alice.id);
    assert_eq!(group["id"], group["chat_id"]);
    let mut expected = vec![alice.id, bob.id, carol.id];
    expected.sort_unstable();
    assert_eq!(group["participant_ids"], json!(expected));
    let (_, list) = app.get("/chat/list", &alice).await;
    assert_eq!(list[0]["role"], "owner");
    // Members come with their names, in id order, for clients to show senders.
    assert_eq!(
        list[0]["members"],
        json!([
            {"id": alice.id, "name": "Alice"},
            {"id": bob.id, "name": "Bob"},
            {"id": carol.id, "name": "Carol"}
        ])
    );
    let (_, list) = app.get("/chat/list", &bob).await;
    assert_eq!(list[0]["role"], "member");
}

#[tokio::test]
async fn unknown_participants_are_named_and_nothing_is_created() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (status, body) = app
        .post(
            "/chat/group",
            &alice,
            json!({"name": "Ghosts", "participant_ids": [424_242]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "unknown_user");
    assert!(body["detail"].as_str().unwrap().contains("424242"));
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM chats")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(chats, 0);
}

#[tokio::test]
async fn the_owner_adds_and_removes_members_and_members_may_only_leave() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    app.send_to_chat(&alice, group, "before carol").await;

    // A member who is not the owner cannot add or remove others.
    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &bob,
            json!({"user_ids": [carol.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &alice,
            json!({"user_ids": [carol.id, dave.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["participant_ids"].as_array().unwrap().len(), 4);
    // A new member sees history, but it is not unread for them.
    assert_eq!(app.history(&carol, group, "").await.len(), 1);
    let (_, list) = app.get("/chat/list", &carol).await;
    assert_eq!(list[0]["unread_count"], 0);

    let member = |id: i64| format!("/chat/group/{group}/members/{id}");
    assert_eq!(
        app.delete(&member(carol.id), &bob).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete(&member(carol.id), &carol).await.0,
        StatusCode::NO_CONTENT,
        "leaving"
    );
    assert_eq!(
        app.delete(&member(dave.id), &alice).await.0,
        StatusCode::NO_CONTENT,
        "removed"
    );
    assert_eq!(
        app.delete(&member(dave.id), &alice).await.0,
        StatusCode::NOT_FOUND,
        "gone"
    );
    for gone in [&carol, &dave] {
        let (status, _) = app.get(&format!("/chat/history/{group}"), gone).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    // When the owner leaves, the longest-standing member takes over.
    assert_eq!(
        app.delete(&member(alice.id), &alice).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &bob,
            json!({"user_ids": [alice.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn members_of_a_private_chat_cannot_be_changed() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let chat = app.send_to_user(&alice, &bob, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let (status, body) = app
        .post(
            &format!("/chat/group/{chat}/members"),
            &alice,
            json!({"user_ids": [carol.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "not_a_group");
}
