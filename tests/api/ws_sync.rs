//! The delivery promise at its edges, over real sockets: a resume that comes late is not
//! overtaken by live changes; a member removed and added back while offline gets the chat back
//! on resume; a client's Close frame is answered. (The rules themselves are unit- and
//! model-tested in `ws-relay/src/delivery.rs`.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use windi_tests::{
    TestApp, relay_settings,
    ws::{Received, WsClient},
};

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(600);
/// Frames that are changes of a chat.
const CHANGES: &[&str] = &[
    "message",
    "message_updated",
    "member",
    "chat",
    "chat_removed",
];
/// How long a slow client takes to send its resume after `ready`: longer than the 500 ms the
/// relay used to wait before going live, within the 2 s it holds live changes now. This is
/// the scenario (a slow network), not a wait for the relay.
const SLOW_CLIENT: Duration = Duration::from_millis(1200);

fn revs(frames: &[Value]) -> Vec<i64> {
    frames.iter().map(|f| f["rev"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn a_change_committed_before_a_slow_resume_follows_the_replay() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let first = app.send_to_user(&alice, &bob, "one").await;
    let chat = first["chat_id"].as_i64().unwrap();
    app.send_to_chat(&alice, chat, "two").await;
    app.send_to_chat(&alice, chat, "three").await;

    // Bob's device has rev 1 and reconnects; a message is committed before its resume.
    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    app.send_to_chat(&alice, chat, "four").await;
    tokio::time::sleep(SLOW_CLIENT).await;
    ws.send(json!({"type": "resume", "revs": {chat.to_string(): 1}}))
        .await;

    let frames = ws.frames(CHANGES, 3, WAIT).await;
    assert_eq!(revs(&frames), vec![2, 3, 4], "{frames:?}");
    ws.none_within("message", QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_member_removed_and_added_back_while_offline_gets_the_chat_back_on_resume() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let group = app.group(&alice, &[&bob, &carol]).await;
    app.send_to_chat(&alice, group, "before").await;
    let seen = app.chat_rev(group).await;

    // Offline: Bob is removed, the group goes on, Bob is added back, the group goes on.
    let (status, _) = app
        .delete(&format!("/chat/group/{group}/members/{}", bob.id), &alice)
        .await;
    assert!(status.is_success(), "{status}");
    let removed_at = app.chat_rev(group).await;
    app.send_to_chat(&carol, group, "while bob was out").await;
    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &alice,
            json!({"user_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let joined_at = app.chat_rev(group).await;
    let back = app.send_to_chat(&carol, group, "welcome back").await;

    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    ws.send(json!({"type": "resume", "revs": {group.to_string(): seen}}))
        .await;
    let frames = ws.frames(CHANGES, 3, WAIT).await;
    assert_eq!(frames[0]["type"], "chat_removed", "{frames:?}");
    assert_eq!(frames[0]["rev"], removed_at);
    assert_eq!(frames[1]["type"], "chat", "{frames:?}");
    assert_eq!(frames[1]["rev"], joined_at);
    assert_eq!(frames[2]["type"], "message", "{frames:?}");
    assert_eq!(frames[2]["message"]["id"], back["id"]);

    // And the chat is live again.
    let live = app.send_to_chat(&alice, group, "live").await;
    let message = ws.expect("message", WAIT).await;
    assert_eq!(message["message"]["id"], live["id"]);
    relay.stop().await;
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_with_a_normal_close() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let bob = app.user("bob").await;
    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    ws.send_raw(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    assert_eq!(ws.next(WAIT).await, Received::Closed(1000));
    relay.stop().await;
}
