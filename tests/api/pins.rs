//! Pinned messages: `PUT`/`DELETE /chat/message/{id}/pin` and `GET /chat/{chat_id}/pins`; who
//! may pin, the cap under concurrency, a deletion unpinning, and each pin a change with a rev.
//! (Over a real socket across a reconnect: `ws_convergence::pins_converge_across_a_reconnect`.)

use reqwest::StatusCode;
use serde_json::Value;
use windi_shared::domain::model::MAX_PINS;
use windi_tests::{TestApp, TestUser};

async fn pins(app: &TestApp, viewer: &TestUser, chat: i64) -> Vec<i64> {
    let (status, body) = app.get(&format!("/chat/{chat}/pins"), viewer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["pinned_at"].is_string(), "{m}");
            m["id"].as_i64().unwrap()
        })
        .collect()
}

fn id(message: &Value) -> i64 {
    message["id"].as_i64().unwrap()
}

#[tokio::test]
async fn the_owner_pins_any_member_reads_the_pins_and_a_deletion_unpins() {
    let app = TestApp::spawn().await;
    let (alice, bob, eve) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Eve").await,
    );
    let chat = app.group(&alice, &[&bob]).await;
    let (m1, m2) = (
        id(&app.send_to_chat(&bob, chat, "one").await),
        id(&app.send_to_chat(&bob, chat, "two").await),
    );

    // A member who is not the group's owner may not; a stranger learns nothing.
    let (status, body) = app.put(&format!("/chat/message/{m1}/pin"), &bob).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "not_allowed");
    let (status, _) = app.put(&format!("/chat/message/{m1}/pin"), &eve).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("/chat/{chat}/pins"), &eve).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The owner pins: a change with the chat's next rev; again, nothing changes.
    let rev = app.chat_rev(chat).await;
    let (status, pinned) = app.put(&format!("/chat/message/{m1}/pin"), &alice).await;
    assert_eq!(status, StatusCode::OK, "{pinned}");
    assert!(pinned["pinned_at"].is_string(), "{pinned}");
    assert_eq!(pinned["rev"], rev + 1);
    let (_, again) = app.put(&format!("/chat/message/{m1}/pin"), &alice).await;
    assert_eq!(again, pinned);
    assert_eq!(app.chat_rev(chat).await, rev + 1);
    let changes = app.changes(&bob, chat, rev).await;
    assert_eq!(
        changes["changes"][0]["type"], "message_updated",
        "{changes}"
    );
    assert_eq!(changes["changes"][0]["change"], "pinned", "{changes}");

    // Newest pin first; every member reads them.
    app.put(&format!("/chat/message/{m2}/pin"), &alice).await;
    assert_eq!(pins(&app, &bob, chat).await, [m2, m1]);

    // A deleted message leaves the pins and cannot be pinned again.
    let (status, _) = app.delete(&format!("/chat/message/{m2}"), &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pins(&app, &alice, chat).await, [m1]);
    let (status, body) = app.put(&format!("/chat/message/{m2}/pin"), &alice).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "deleted");

    // Unpinned: out of the list, `pinned_at` null again.
    let (status, unpinned) = app.delete(&format!("/chat/message/{m1}/pin"), &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert!(unpinned["pinned_at"].is_null(), "{unpinned}");
    assert_eq!(pins(&app, &bob, chat).await, Vec::<i64>::new());

    // In a private chat either member may.
    let private = app.send_to_user(&bob, &alice, "hi").await;
    let (status, body) = app
        .put(&format!("/chat/message/{}/pin", id(&private)), &bob)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The cap holds when pins race: 60 concurrent pins in a chat with room for 50 leave exactly
/// 50 pinned, the rest refused with 409 `too_many_pins`.
#[tokio::test]
async fn concurrent_pins_never_pass_the_cap() {
    // Loads one user on purpose: 60 sends and 60 pins in a burst.
    let app = TestApp::spawn_unlimited(windi_tests::Mode::Local).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.group(&alice, &[&bob]).await;
    let mut ids = Vec::new();
    for i in 0..MAX_PINS + 10 {
        ids.push(id(&app.send_to_chat(&alice, chat, &format!("m{i}")).await));
    }
    let answers = futures::future::join_all(ids.iter().map(|m| {
        let (app, alice) = (&app, &alice);
        async move { app.put(&format!("/chat/message/{m}/pin"), alice).await }
    }))
    .await;
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .map(|(_, b)| b)
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(ok, MAX_PINS, "{statuses:?}");
    assert_eq!(refused.len(), 10, "{statuses:?}");
    assert!(refused.iter().all(|b| b["code"] == "too_many_pins"));
    assert_eq!(pins(&app, &bob, chat).await.len(), MAX_PINS);
}
