//! Profiles, finding people, blocking them, and deleting one's account.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{PASSWORD, TestApp, TestUser, relay_settings, ws::WsClient};

async fn search(app: &TestApp, user: &TestUser, q: &str) -> (StatusCode, Value) {
    let q: String = q.bytes().map(|b| format!("%{b:02X}")).collect();
    app.get(&format!("/users/search?q={q}"), user).await
}

fn ids(found: &Value) -> Vec<i64> {
    found
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

/// A new user whose name has spaces (`TestApp::user` makes the email from the name).
async fn named(app: &TestApp, name: &str) -> TestUser {
    let user = app.user("Someone").await;
    let (status, body) = app.patch("/auth/me", &user, json!({"name": name})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    user
}

/// The chat as `user`'s chat list shows it.
async fn listed(app: &TestApp, user: &TestUser, chat_id: i64) -> Value {
    let (status, list) = app.get("/chat/list", user).await;
    assert_eq!(status, StatusCode::OK);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == chat_id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_new_name_shows_in_chat_lists_and_reaches_connected_members() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat_id = app.send_to_user(&alice, &bob, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut bobs_socket = WsClient::connect(relay.addr, &bob.token).await;

    let (status, me) = app
        .patch("/auth/me", &alice, json!({"name": "  Alice Smith "}))
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["name"], "Alice Smith");
    assert_eq!(me["id"], alice.id);
    assert_eq!(me["email"], alice.email.as_str());

    let frame = bobs_socket
        .expect("user_updated", Duration::from_secs(5))
        .await;
    assert_eq!(frame["user_id"], alice.id);
    assert_eq!(frame["name"], "Alice Smith");
    assert_eq!(frame["chat_id"], chat_id);

    let chat = listed(&app, &bob, chat_id).await;
    assert_eq!(chat["name"], "Alice Smith", "{chat}");
    assert!(
        chat["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "Alice Smith")
    );

    let (status, body) = app.patch("/auth/me", &alice, json!({"name": "   "})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(app.get("/auth/me", &alice).await.1["name"], "Alice Smith");
    relay.stop().await;
}

#[tokio::test]
async fn search_finds_any_word_of_a_name_by_its_start_or_an_exact_email_and_never_shows_emails() {
    let app = TestApp::spawn().await;
    let me = app.user("Searcher").await;
    let ann = named(&app, "Ann Marie Lee").await;
    let anna = app.user("anna").await;
    let _bob = named(&app, "Bob Annex").await;
    let zed = app.user("Zed").await;

    let (status, found) = search(&app, &me, "AN").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let found_ids = ids(&found);
    assert_eq!(found_ids.len(), 3, "Ann, anna and Annex: {found}");
    assert!(found_ids.contains(&ann.id) && found_ids.contains(&anna.id));
    assert!(!found_ids.contains(&zed.id));
    assert!(found.to_string().find('@').is_none(), "no emails: {found}");
    for person in found.as_array().unwrap() {
        let keys: Vec<&String> = person.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "name"]);
    }

    assert_eq!(
        ids(&search(&app, &me, "mar").await.1),
        [ann.id],
        "a later word"
    );
    assert_eq!(
        ids(&search(&app, &me, "marie l").await.1),
        [ann.id],
        "several words"
    );
    assert!(
        ids(&search(&app, &me, "nn").await.1).is_empty(),
        "starts, not contains"
    );

    let (status, by_email) = search(&app, &me, &zed.email.to_uppercase()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&by_email), [zed.id]);
    assert_eq!(by_email[0]["name"], "Zed");
    assert!(!by_email.to_string().contains('@'));
    let partial = &zed.email[..zed.email.len() - 1];
    assert!(
        ids(&search(&app, &me, partial).await.1).is_empty(),
        "emails match exactly"
    );

    let (_, limited) = app.get("/users/search?q=an&limit=2", &me).await;
    assert_eq!(ids(&limited).len(), 2);

    for bad in [
        "/users/search?q=a",
        "/users/search?q=%20a%20",
        "/users/search",
        "/users/search?q=an&limit=0",
        "/users/search?q=an&limit=51",
    ] {
        let (status, body) = app.get(bad, &me).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(
            body["detail"].is_string() && body["code"].is_string(),
            "{body}"
        );
    }
    let (status, _) = app
        .call(Method::GET, "/users/search?q=an", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_blocked_user_cannot_start_or_continue_a_private_chat_nor_add_the_blocker() {
    let app = TestApp::spawn().await;
    let (alice, mallory, carol) = (
        app.user("Alice").await,
        app.user("Mallory").await,
        app.user("Carol").await,
    );
    let chat_id = app.send_to_user(&mallory, &alice, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let (status, _) = app
        .put(&format!("/users/{}/block", mallory.id), &alice)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .put(&format!("/users/{}/block", mallory.id), &alice)
        .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "blocking twice is one block"
    );

    let attempts = [
        json!({"chat_id": chat_id, "text": "continue"}),
        json!({"recipient_id": alice.id, "text": "start"}),
    ];
    for body in attempts {
        let (status, answer) = app.post("/chat/message", &mallory, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {answer}");
        assert_eq!(answer, json!({"detail": "blocked", "code": "blocked"}));
    }
    let (status, _) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat_id, "text": "me neither"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "closed both ways");

    let (status, body) = app
        .post(
            "/chat/group",
            &mallory,
            json!({"name": "g", "participant_ids": [carol.id, alice.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "blocked");
    let group = app.group(&mallory, &[&carol]).await;
    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &mallory,
            json!({"user_ids": [alice.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.group(&alice, &[&mallory]).await;

    let (status, blocked) = app.get("/users/blocked", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(blocked, json!([{"id": mallory.id, "name": "Mallory"}]));
    assert_eq!(app.get("/users/blocked", &mallory).await.1, json!([]));

    let (status, _) = app
        .delete(&format!("/users/{}/block", mallory.id), &alice)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.send_to_chat(&mallory, chat_id, "friends again").await;

    let (status, _) = app.put(&format!("/users/{}/block", alice.id), &alice).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app.put("/users/999999/block", &alice).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_deleted_account_ends_its_sessions_frees_its_email_and_leaves_its_messages() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        named(&app, "Alice Gone").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let private = app.send_to_user(&alice, &bob, "remember me").await["chat_id"]
        .as_i64()
        .unwrap();
    let group = app.group(&alice, &[&bob, &carol]).await;
    let phone = app.login(&alice.email, PASSWORD).await;

    let (status, body) = app
        .call(
            Method::DELETE,
            "/auth/me",
            Some(&alice.token),
            Some(json!({"password": "wrong password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = app
        .call(
            Method::DELETE,
            "/auth/me",
            Some(&alice.token),
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    for token in [&alice.token, &phone] {
        let (status, _) = app.call(Method::GET, "/chat/list", Some(token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": alice.email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let history = app.history(&bob, private, "").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["text"], "remember me");
    assert_eq!(listed(&app, &bob, private).await["name"], "Deleted user");
    let team = listed(&app, &bob, group).await;
    assert!(
        !ids(&team["members"]).contains(&alice.id),
        "left the group: {team}"
    );
    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &bob,
            json!({"user_ids": [alice.id]}),
        )
        .await;
    assert_eq!(
        status.as_u16() / 100,
        4,
        "a deleted user cannot be added back"
    );
    assert_eq!(
        listed(&app, &bob, group).await["role"],
        "owner",
        "the eldest member took over"
    );
    assert_eq!(listed(&app, &carol, group).await["role"], "member");
    let (status, _) = app
        .post(
            "/chat/message",
            &carol,
            json!({"recipient_id": alice.id, "text": "hello?"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no new chats with a deleted user"
    );
    assert!(ids(&search(&app, &bob, "alice").await.1).is_empty());
    assert!(ids(&search(&app, &bob, "deleted").await.1).is_empty());

    let (status, again) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"name": "Alice Again", "email": alice.email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "the email is free: {again}");
    assert_ne!(again["id"], alice.id);
}
