//! Revisions over HTTP: edits, deletions, reactions and replies as changes of their chat, each
//! with the chat's next rev, and `GET /chat/changes` to catch up by rev.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{TestApp, TestUser};

/// Percent-encodes every byte, as a client must for an emoji in a path.
fn enc(emoji: &str) -> String {
    emoji.bytes().map(|b| format!("%{b:02X}")).collect()
}

async fn react(app: &TestApp, user: &TestUser, id: &Value, emoji: &str) -> (StatusCode, Value) {
    app.put(
        &format!("/chat/message/{id}/reactions/{}", enc(emoji)),
        user,
    )
    .await
}

async fn unreact(app: &TestApp, user: &TestUser, id: &Value, emoji: &str) -> (StatusCode, Value) {
    app.delete(
        &format!("/chat/message/{id}/reactions/{}", enc(emoji)),
        user,
    )
    .await
}

async fn edit(app: &TestApp, user: &TestUser, id: &Value, text: &str) -> (StatusCode, Value) {
    app.patch(&format!("/chat/message/{id}"), user, json!({"text": text}))
        .await
}

#[tokio::test]
async fn every_change_answers_the_message_as_it_is_after_it_and_no_op_takes_no_rev() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let sent = app.send_to_user(&alice, &bob, "helo").await;
    let (id, chat) = (sent["id"].clone(), sent["chat_id"].as_i64().unwrap());
    assert_eq!(sent["rev"], 1);
    assert_eq!(sent["edited_at"], Value::Null);
    assert_eq!(sent["deleted"], false);
    assert_eq!(sent["reply_to"], Value::Null);
    assert_eq!(sent["reactions"], json!([]));

    let (status, edited) = edit(&app, &alice, &id, "hello").await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["text"], "hello");
    assert_eq!(edited["rev"], 2);
    assert_eq!(edited["seq"], 1);
    assert!(edited["edited_at"].is_string());
    // The same text again changes nothing.
    let (status, same) = edit(&app, &alice, &id, "hello").await;
    assert_eq!((status, same["rev"].clone()), (StatusCode::OK, json!(2)));
    assert_eq!(app.chat_rev(chat).await, 2);

    let (status, one) = react(&app, &bob, &id, "👍").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(
        one["reactions"],
        json!([{"emoji": "👍", "count": 1, "user_ids": [bob.id]}])
    );
    assert_eq!(one["rev"], 3);
    let (status, again) = react(&app, &bob, &id, "👍").await;
    assert_eq!((status, again), (StatusCode::OK, one.clone()), "idempotent");
    assert_eq!(
        app.chat_rev(chat).await,
        3,
        "a repeated reaction takes no rev"
    );
    let (_, two) = react(&app, &alice, &id, "👍").await;
    assert_eq!(
        two["reactions"],
        json!([{"emoji": "👍", "count": 2, "user_ids": [bob.id, alice.id]}])
    );
    let (_, heart) = react(&app, &alice, &id, "❤️").await;
    assert_eq!(
        heart["reactions"][1],
        json!({"emoji": "❤️", "count": 1, "user_ids": [alice.id]})
    );
    let (status, fewer) = unreact(&app, &bob, &id, "👍").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fewer["reactions"][0],
        json!({"emoji": "👍", "count": 1, "user_ids": [alice.id]})
    );
    let rev = fewer["rev"].as_i64().unwrap();
    let (_, still) = unreact(&app, &bob, &id, "👍").await;
    assert_eq!(
        still["rev"], rev,
        "taking back a reaction that is not there takes no rev"
    );

    let (status, tombstone) = app.delete(&format!("/chat/message/{id}"), &alice).await;
    assert_eq!(status, StatusCode::OK, "{tombstone}");
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["text"], "");
    assert_eq!(tombstone["seq"], 1);
    assert_eq!(tombstone["id"], id);
    assert_eq!(tombstone["reactions"], json!([]));
    assert_eq!(tombstone["rev"], rev + 1);
    let (status, again) = app.delete(&format!("/chat/message/{id}"), &alice).await;
    assert_eq!((status, again), (StatusCode::OK, tombstone.clone()));
    assert_eq!(app.chat_rev(chat).await, rev + 1);
    // The text is gone from the record, not hidden.
    let stored: String = sqlx::query_scalar("SELECT text FROM messages WHERE id = $1")
        .bind(id.as_i64().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "");

    let (status, body) = edit(&app, &alice, &id, "too late").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::CONFLICT, json!("deleted"))
    );
    let (status, body) = react(&app, &bob, &id, "👍").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::CONFLICT, json!("deleted"))
    );
    assert_eq!(app.history(&bob, chat, "").await, vec![tombstone]);
}

#[tokio::test]
async fn only_the_sender_edits_and_only_the_sender_or_a_group_owner_deletes() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let group = app.group(&alice, &[&bob, &carol]).await;
    let bobs = app.send_to_chat(&bob, group, "bob's").await;
    let id = bobs["id"].clone();

    let (status, body) = edit(&app, &alice, &id, "not yours").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::FORBIDDEN, json!("not_sender"))
    );
    let (status, body) = app.delete(&format!("/chat/message/{id}"), &carol).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Text rules are a send's.
    for bad in ["", "   ", &"x".repeat(4097)] {
        let (status, body) = edit(&app, &bob, &id, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("text"),
            "{body}"
        );
    }

    // A stranger learns nothing: the same 404 as for a message that does not exist.
    let (_, missing) = edit(&app, &dave, &json!(999_999), "x").await;
    for (status, body) in [
        edit(&app, &dave, &id, "x").await,
        app.delete(&format!("/chat/message/{id}"), &dave).await,
        react(&app, &dave, &id, "👍").await,
        unreact(&app, &dave, &id, "👍").await,
    ] {
        assert_eq!((status, &body), (StatusCode::NOT_FOUND, &missing));
    }

    // The group's owner may delete anyone's message.
    let (status, body) = app.delete(&format!("/chat/message/{id}"), &alice).await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );

    // In a private chat there is no owner: only the sender deletes.
    let private = app.send_to_user(&bob, &alice, "private").await;
    let (status, _) = app
        .delete(&format!("/chat/message/{}", private["id"]), &alice)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .delete(&format!("/chat/message/{}", private["id"]), &bob)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn reactions_are_short_printable_and_at_most_twenty_kinds() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let id = app.send_to_user(&alice, &bob, "react to me").await["id"].clone();
    for bad in ["a b", "a\u{7}", &"x".repeat(33)] {
        let (status, body) = react(&app, &bob, &id, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("emoji"),
            "{body}"
        );
    }
    let kinds: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    for emoji in &kinds {
        assert_eq!(react(&app, &bob, &id, emoji).await.0, StatusCode::OK);
    }
    let (status, body) = react(&app, &bob, &id, "e20").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "too_many_reactions");
    // Joining an existing one is fine.
    let (status, body) = react(&app, &alice, &id, "e3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["reactions"].as_array().unwrap().len(), 20);
    assert_eq!(body["reactions"][3]["count"], 2);
}

#[tokio::test]
async fn a_reply_points_at_a_message_of_the_same_chat() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let question = app.send_to_user(&alice, &bob, "lunch?").await;
    let chat = question["chat_id"].as_i64().unwrap();
    let elsewhere = app.send_to_user(&alice, &carol, "elsewhere").await;

    let (status, reply) = app
        .post(
            "/chat/message",
            &bob,
            json!({"chat_id": chat, "text": "yes", "reply_to": question["id"], "dedup_key": "r1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["reply_to"], question["id"]);
    // Same key, same text, another reply target: different content.
    let (status, body) = app
        .post(
            "/chat/message",
            &bob,
            json!({"chat_id": chat, "text": "yes", "reply_to": reply["id"], "dedup_key": "r1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    for target in [elsewhere["id"].clone(), json!(987_654)] {
        let (status, body) = app
            .post(
                "/chat/message",
                &bob,
                json!({"chat_id": chat, "text": "no", "reply_to": target}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("reply_to"),
            "{body}"
        );
    }
    assert_eq!(app.chat_rev(chat).await, 2, "refused replies take no rev");
}

#[tokio::test]
async fn changes_list_every_change_after_a_rev_in_rev_order_page_by_page() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    let m1 = app.send_to_chat(&alice, group, "one").await; // rev 1
    let m2 = app.send_to_chat(&bob, group, "two").await; // rev 2
    edit(&app, &alice, &m1["id"], "one, edited").await; // rev 3
    react(&app, &alice, &m2["id"], "👍").await; // rev 4, superseded by rev 7
    app.post(
        &format!("/chat/group/{group}/members"),
        &alice,
        json!({"user_ids": [carol.id]}),
    )
    .await; // rev 5
    app.delete(&format!("/chat/group/{group}/members/{}", carol.id), &carol)
        .await; // rev 6
    let (_, tombstone) = app
        .delete(&format!("/chat/message/{}", m2["id"]), &bob)
        .await; // rev 7

    let all = app.changes(&bob, group, 0).await;
    let summary: Vec<(i64, String, Value)> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let what = c.get("change").cloned().unwrap_or(Value::Null);
            (
                c["rev"].as_i64().unwrap(),
                c["type"].as_str().unwrap().to_owned(),
                what,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "message".into(), Value::Null),
            (2, "message".into(), Value::Null),
            (3, "message_updated".into(), json!("edited")),
            (5, "member".into(), json!("joined")),
            (6, "member".into(), json!("left")),
            (7, "message_updated".into(), json!("deleted")),
        ]
    );
    assert_eq!(
        (all["rev"].clone(), all["more"].clone()),
        (json!(7), json!(false))
    );
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes[0]["chat_id"], group);
    // Messages carry their current state: a client applying the page ends up with the chat as
    // it is now.
    assert_eq!(changes[0]["message"]["text"], "one, edited");
    assert_eq!(changes[5]["message"], tombstone);
    assert_eq!(changes[3]["user_id"], carol.id);

    // Page by page, each page's rev is where the next starts; nothing is lost at the seams.
    let (mut after, mut revs) = (0, Vec::new());
    loop {
        let (status, page) = app
            .get(
                &format!("/chat/changes/{group}?after_rev={after}&limit=2"),
                &bob,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        revs.extend(
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["rev"].as_i64().unwrap()),
        );
        after = page["rev"].as_i64().unwrap();
        if page["more"] == false {
            break;
        }
    }
    assert_eq!((revs, after), (vec![1, 2, 3, 5, 6, 7], 7));
    let none = app.changes(&bob, group, 7).await;
    assert_eq!(none, json!({"changes": [], "rev": 7, "more": false}));

    let (status, _) = app.get(&format!("/chat/changes/{group}"), &dave).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for query in ["after_rev=-1", "limit=0", "limit=201", "after_rev=x"] {
        let (status, body) = app
            .get(&format!("/chat/changes/{group}?{query}"), &bob)
            .await;
        assert!(status.is_client_error(), "{query}: {status} {body}");
        assert!(body["detail"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn revs_stay_gap_free_under_concurrent_sends_edits_and_reactions_in_one_chat() {
    let app = TestApp::spawn().await;
    let users = [
        app.user("A").await,
        app.user("B").await,
        app.user("C").await,
        app.user("D").await,
    ];
    let group = app
        .group(&users[0], &[&users[1], &users[2], &users[3]])
        .await;
    let seeds: Vec<Value> =
        join_all((0..4).map(|i| app.send_to_chat(&users[i], group, "seed"))).await;

    // Sends, edits and reactions of all four members at once.
    let (app_ref, seeds) = (&app, &seeds);
    let calls = (0..10).flat_map(|round| {
        users.iter().enumerate().map(move |(i, user)| async move {
            match round % 3 {
                0 => {
                    app_ref
                        .call(
                            Method::POST,
                            "/chat/message",
                            Some(&user.token),
                            Some(json!({"chat_id": group, "text": format!("s{round}")})),
                        )
                        .await
                }
                1 => edit(app_ref, user, &seeds[i]["id"], &format!("edit {round}")).await,
                _ => {
                    react(
                        app_ref,
                        user,
                        &seeds[(i + 1) % 4]["id"],
                        &format!("r{round}"),
                    )
                    .await
                }
            }
        })
    });
    let answers = join_all(calls).await;
    assert!(answers.iter().all(|(s, _)| s.is_success()), "{answers:?}");

    let rev = app.chat_rev(group).await;
    let (count, min, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), min(rev), max(rev) FROM chat_changes WHERE chat_id = $1")
            .bind(group)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    // 4 seeds + 40 changes, each exactly one rev: 1..=44 with no gap and no repeat.
    assert_eq!((count, min, max, rev), (44, 1, 44, 44));
    // The race was real: the kinds of change interleave in rev order.
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM chat_changes WHERE chat_id = $1 AND rev > 4 ORDER BY rev",
    )
    .bind(group)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let switches = kinds.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 3,
        "changes ran one kind after another: {kinds:?}"
    );
    // Seqs stay the messages' own gap-free order.
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM messages WHERE chat_id = $1 ORDER BY seq")
            .bind(group)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(seqs, (1..=(4 + 16)).collect::<Vec<i64>>());
}

#[tokio::test]
async fn unread_counts_leave_out_deleted_messages_and_chats_carry_their_rev() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let first = app.send_to_user(&alice, &bob, "1").await;
    let chat = first["chat_id"].as_i64().unwrap();
    app.send_to_chat(&alice, chat, "2").await;
    let third = app.send_to_chat(&alice, chat, "3").await;
    app.delete(&format!("/chat/message/{}", first["id"]), &alice)
        .await;

    let (_, list) = app.get("/chat/list", &bob).await;
    assert_eq!(list[0]["unread_count"], 2, "{list}");
    assert_eq!(list[0]["rev"], 4);
    assert_eq!(list[0]["last_message"], third);
    let (_, list) = app.get("/chat/list", &alice).await;
    assert_eq!(list[0]["unread_count"], 0);
    // Deleting the newest one: it is the tombstone the list shows last.
    let (_, tombstone) = app
        .delete(&format!("/chat/message/{}", third["id"]), &alice)
        .await;
    let (_, list) = app.get("/chat/list", &bob).await;
    assert_eq!(list[0]["unread_count"], 1);
    assert_eq!(list[0]["last_message"], tombstone);
    app.mark_read(&bob, third["id"].as_i64().unwrap()).await;
    let (_, list) = app.get("/chat/list", &bob).await;
    assert_eq!(list[0]["unread_count"], 0);
}
