//! Mentions and per-chat settings (issue 21): a message may mention members of its chat, shown
//! with it and counted in the chat list until read; each member mutes a chat or chooses what
//! notifies them, for themselves only.

use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_tests::{TestApp, TestUser};

/// `user`'s `/chat/list` entry of `chat_id`.
async fn entry(app: &TestApp, user: &TestUser, chat_id: i64) -> Value {
    let (status, list) = app.get("/chat/list", user).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == chat_id)
        .cloned()
        .unwrap_or_else(|| panic!("chat {chat_id} not in {list}"))
}

fn ids(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| m["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn mentions_are_members_only_shown_with_the_message_and_counted_until_read_or_deleted() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let chat = app.group(&alice, &[&bob, &carol]).await;

    // Only members: Dave is not one, and nothing is stored for the refused send.
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "hi @Bob @Dave", "mentions": [bob.id, dave.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("mentions") && detail.contains(&dave.id.to_string()),
        "{detail}"
    );
    assert!(
        !detail.contains(&bob.id.to_string()),
        "only the stranger: {detail}"
    );
    assert!(
        app.history(&bob, chat, "").await.is_empty(),
        "nothing stored"
    );
    for (bad, words) in [(json!([0]), "not a user id"), (json!([1.5]), "mentions")] {
        let (status, body) = app
            .post(
                "/chat/message",
                &alice,
                json!({"chat_id": chat, "text": "x", "mentions": bad}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["detail"].as_str().unwrap().contains(words), "{body}");
    }

    // Shown with the message, each once, the text as written; the sender's own mention is
    // shown but counts for no one.
    let (status, first) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "@Bob look", "mentions": [bob.id, bob.id, alice.id],
                   "dedup_key": "m1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["mentions"], json!([bob.id, alice.id]));
    assert_eq!(first["text"], "@Bob look");
    // A replay is the same message; other mentions under the same key are a conflict.
    let (status, again) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "@Bob look", "mentions": [bob.id, alice.id],
                   "dedup_key": "m1"}),
        )
        .await;
    assert_eq!(
        (status, again["id"].clone()),
        (StatusCode::OK, first["id"].clone())
    );
    let (status, _) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": chat, "text": "@Bob look", "mentions": [carol.id], "dedup_key": "m1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let plain = app.send_to_chat(&alice, chat, "no one named").await;
    assert_eq!(plain["mentions"], json!([]));
    let (status, second) = app
        .post(
            "/chat/message",
            &carol,
            json!({"chat_id": chat, "text": "@Bob @Alice", "mentions": [bob.id, alice.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");

    let bobs = entry(&app, &bob, chat).await;
    assert_eq!(
        (
            bobs["unread_count"].as_i64(),
            bobs["unread_mentions"].as_i64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(
        entry(&app, &alice, chat).await["unread_mentions"],
        1,
        "Carol's, not her own"
    );
    assert_eq!(entry(&app, &carol, chat).await["unread_mentions"], 0);
    let mentioning = app.history(&bob, chat, "mentions=me").await;
    assert_eq!(
        ids(&mentioning),
        [
            first["id"].as_i64().unwrap(),
            second["id"].as_i64().unwrap()
        ]
    );
    assert_eq!(
        mentioning[0]["mentions"],
        json!([bob.id, alice.id]),
        "{mentioning:?}"
    );
    let newest = app
        .history(
            &bob,
            chat,
            &format!("mentions=me&before_seq={}", second["seq"]),
        )
        .await;
    assert_eq!(
        ids(&newest),
        [first["id"].as_i64().unwrap()],
        "paged by the same cursors"
    );
    assert_eq!(
        ids(&app.history(&carol, chat, "mentions=me").await),
        Vec::<i64>::new()
    );
    for (query, field) in [
        ("?mentions=you", "mentions"),
        ("?mentions=me&offset=1", "offset"),
    ] {
        let (status, body) = app.get(&format!("/chat/history/{chat}{query}"), &bob).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
    }
    let (status, _) = app
        .get(&format!("/chat/history/{chat}?mentions=me"), &dave)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a member");

    // Read past the first: one left. Deleted: none left, and the tombstone mentions no one.
    let (status, _) = app
        .patch(
            &format!("/chat/message/{}/read", first["id"]),
            &bob,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry(&app, &bob, chat).await["unread_mentions"], 1);
    let (status, _) = app
        .delete(&format!("/chat/message/{}", second["id"]), &carol)
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(entry(&app, &bob, chat).await["unread_mentions"], 0);
    let all = app.history(&bob, chat, "").await;
    let tomb = all.iter().find(|m| m["id"] == second["id"]).unwrap();
    assert_eq!(
        (tomb["deleted"].clone(), tomb["mentions"].clone()),
        (json!(true), json!([]))
    );
    assert_eq!(
        ids(&app.history(&bob, chat, "mentions=me").await),
        [first["id"].as_i64().unwrap()]
    );
}

#[tokio::test]
async fn chat_settings_are_each_members_own_and_a_patch_changes_only_what_it_names() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let chat = app.group(&alice, &[&bob]).await;
    let path = format!("/chat/{chat}/settings");
    let defaults = json!({"muted_until": null, "notify": "all"});
    assert_eq!(entry(&app, &alice, chat).await["settings"], defaults);

    let (status, body) = app
        .patch(&path, &alice, json!({"muted_until": "forever"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"muted_until": "forever", "notify": "all"}));
    let (_, body) = app
        .patch(&path, &alice, json!({"notify": "mentions"}))
        .await;
    assert_eq!(
        body,
        json!({"muted_until": "forever", "notify": "mentions"}),
        "muting kept"
    );
    assert_eq!(entry(&app, &alice, chat).await["settings"], body);
    assert_eq!(
        entry(&app, &bob, chat).await["settings"],
        defaults,
        "Alice's alone"
    );

    let until = chrono::Utc::now() + chrono::Duration::hours(8);
    let (_, body) = app
        .patch(&path, &alice, json!({"muted_until": until.to_rfc3339()}))
        .await;
    let shown: chrono::DateTime<chrono::Utc> =
        body["muted_until"].as_str().unwrap().parse().unwrap();
    assert!((shown - until).num_milliseconds().abs() < 1, "{body}");
    assert_eq!(body["notify"], "mentions");
    let (_, body) = app.patch(&path, &alice, json!({"muted_until": null})).await;
    assert_eq!(
        body,
        json!({"muted_until": null, "notify": "mentions"}),
        "unmuted"
    );

    // A mute whose time has passed reads as none.
    let (_, _) = app
        .patch(
            &path,
            &bob,
            json!({"muted_until": until.to_rfc3339(), "notify": "none"}),
        )
        .await;
    sqlx::query(
        "UPDATE chat_members SET muted_until = now() - interval '1 second' WHERE user_id = $1",
    )
    .bind(bob.id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        entry(&app, &bob, chat).await["settings"],
        json!({"muted_until": null, "notify": "none"})
    );

    // A time already past, or one Postgres cannot hold, unmutes instead of failing.
    app.patch(&path, &alice, json!({"muted_until": "forever"}))
        .await;
    for past in [
        (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
        "0000-01-01T00:00:00Z".to_owned(),
    ] {
        let (status, body) = app.patch(&path, &alice, json!({"muted_until": past})).await;
        assert_eq!(status, StatusCode::OK, "{past}: {body}");
        assert_eq!(
            body,
            json!({"muted_until": null, "notify": "mentions"}),
            "{past}"
        );
    }

    for (body, field) in [
        (json!({"muted_until": "tomorrow"}), "muted_until"),
        (json!({"muted_until": 5}), "muted_until"),
        (json!([null, null]), "expected a JSON object"),
        (json!({"notify": "sometimes"}), "notify"),
        (json!({"mute": "forever"}), "mute"),
    ] {
        let (status, answer) = app.patch(&path, &alice, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        entry(&app, &alice, chat).await["settings"],
        json!({"muted_until": null, "notify": "mentions"}),
        "nothing half-applied"
    );
    let (status, _) = app.patch(&path, &carol, json!({"notify": "none"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a member");
    let (status, _) = app
        .patch("/chat/999999/settings", &alice, json!({"notify": "none"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Over the relay: a `send` frame's `mentions` are checked as over HTTP (an error frame naming
/// the stranger, nothing stored), and the message every member's socket gets carries them.
#[tokio::test]
async fn mentions_travel_through_the_relay_send_frame_and_its_message_frames() {
    use std::time::Duration;
    use windi_tests::{relay_settings, ws::WsClient};
    const WAIT: Duration = Duration::from_secs(10);

    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let chat = app.group(&alice, &[&bob, &carol]).await;
    let mut alice_ws = WsClient::connect(relay.addr, &alice.token).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    alice_ws
        .send(json!({"type": "send", "chat_id": chat, "text": "@Dave?",
                     "mentions": [dave.id], "dedup_key": "w-stranger"}))
        .await;
    let error = alice_ws.expect("error", WAIT).await;
    assert_eq!(error["dedup_key"], "w-stranger", "{error}");
    let detail = error["detail"].as_str().unwrap();
    assert!(
        detail.contains("mentions") && detail.contains(&dave.id.to_string()),
        "{detail}"
    );

    alice_ws
        .send(
            json!({"type": "send", "chat_id": chat, "text": "@Bob @Carol",
                     "mentions": [bob.id, carol.id], "dedup_key": "w-1"}),
        )
        .await;
    let ack = alice_ws.expect("ack", WAIT).await;
    assert_eq!(
        ack["message"]["mentions"],
        json!([bob.id, carol.id]),
        "{ack}"
    );
    assert_eq!(ack["message"]["seq"], 1, "the refused send took no seq");
    let got = bob_ws.messages(1, WAIT).await;
    assert_eq!(got[0]["message"]["mentions"], json!([bob.id, carol.id]));
    let bobs = entry(&app, &bob, chat).await;
    assert_eq!(bobs["unread_mentions"], 1);
    relay.stop().await;
}
