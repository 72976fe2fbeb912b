//! Read markers move only forward, and `read` means "read by every other member".

use reqwest::StatusCode;
use windi_tests::TestApp;

#[tokio::test]
async fn a_marker_never_moves_back() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let m1 = app.send_to_user(&alice, &bob, "1").await;
    let chat = m1["chat_id"].as_i64().unwrap();
    let _m2 = app.send_to_chat(&alice, chat, "2").await;
    let m3 = app.send_to_chat(&alice, chat, "3").await;

    let (status, read3) = app.mark_read(&bob, m3["id"].as_i64().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read3["read"], true);
    // Marking an older message read again is a no-op, not a step back.
    let (status, read1) = app.mark_read(&bob, m1["id"].as_i64().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read1["read"], true);
    let marker: i64 = sqlx::query_scalar(
        "SELECT last_read_seq FROM chat_members WHERE chat_id = $1 AND user_id = $2",
    )
    .bind(chat)
    .bind(bob.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(marker, 3);
    assert!(
        app.history(&alice, chat, "")
            .await
            .iter()
            .all(|m| m["read"] == true)
    );
}

#[tokio::test]
async fn in_a_group_of_three_a_message_is_read_once_both_others_have_read_it() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob, &carol]).await;
    let message = app.send_to_chat(&alice, group, "team update").await;
    let id = message["id"].as_i64().unwrap();
    assert_eq!(message["read"], false);

    let (_, after_bob) = app.mark_read(&bob, id).await;
    assert_eq!(after_bob["read"], false, "Carol has not read it yet");
    // The sender marking their own message changes nothing.
    let (_, after_alice) = app.mark_read(&alice, id).await;
    assert_eq!(after_alice["read"], false);
    let (_, after_carol) = app.mark_read(&carol, id).await;
    assert_eq!(after_carol["read"], true);
    assert_eq!(app.history(&alice, group, "").await[0]["read"], true);

    // Bob's reply implies he read everything before it, and is unread for the others.
    let reply = app.send_to_chat(&bob, group, "ack").await;
    assert_eq!(reply["read"], false);
    let (_, list) = app.get("/chat/list", &carol).await;
    assert_eq!(list[0]["unread_count"], 1);
}
