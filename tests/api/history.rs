//! History paging: the seed's limit/offset and the seq cursors.

use reqwest::StatusCode;
use serde_json::Value;
use windi_tests::TestApp;

fn seqs(page: &[Value]) -> Vec<i64> {
    page.iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn history_pages_ascending_by_seq_with_offsets_and_cursors() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let first = app.send_to_user(&alice, &bob, "m1").await;
    let chat = first["chat_id"].as_i64().unwrap();
    for i in 2..=30 {
        let from = if i % 2 == 0 { &bob } else { &alice };
        app.send_to_chat(from, chat, &format!("m{i}")).await;
    }

    let all = app.history(&bob, chat, "").await;
    assert_eq!(seqs(&all), (1..=30).collect::<Vec<_>>());
    assert_eq!(all[0]["text"], "m1");

    assert_eq!(
        seqs(&app.history(&alice, chat, "limit=5&offset=10").await),
        (11..=15).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&app.history(&alice, chat, "limit=5&before_seq=20").await),
        (15..=19).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&app.history(&alice, chat, "limit=5&after_seq=20").await),
        (21..=25).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&app.history(&alice, chat, "after_seq=3&before_seq=7").await),
        vec![4, 5, 6]
    );
    assert!(app.history(&alice, chat, "after_seq=30").await.is_empty());
    assert_eq!(
        seqs(&app.history(&alice, chat, "limit=200").await).len(),
        30
    );
}

#[tokio::test]
async fn page_parameters_out_of_range_are_named_in_a_422() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("before_seq=-5", "before_seq"),
        ("before_seq=5&offset=2", "offset"),
    ] {
        let (status, body) = app
            .get(&format!("/chat/history/{chat}?{query}"), &alice)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn the_chat_list_shows_last_message_and_unread_counts() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let private = app.send_to_user(&alice, &bob, "one").await["chat_id"]
        .as_i64()
        .unwrap();
    app.send_to_chat(&alice, private, "two").await;
    let group = app.group(&bob, &[&alice, &carol]).await;
    let last = app.send_to_chat(&carol, group, "in the group").await;

    let (status, list) = app.get("/chat/list", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    // Most recently active first.
    assert_eq!(list[0]["id"], group);
    assert_eq!(list[0]["kind"], "group");
    assert_eq!(list[0]["name"], "Project Team");
    assert_eq!(list[0]["unread_count"], 1);
    assert_eq!(list[0]["last_message"], last);
    assert_eq!(list[1]["id"], private);
    assert_eq!(
        list[1]["name"], "Bob",
        "a private chat is named after the other member"
    );
    assert_eq!(list[1]["unread_count"], 0, "own messages are never unread");

    let (_, bobs) = app.get("/chat/list", &bob).await;
    let bobs_private = bobs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == private)
        .unwrap();
    assert_eq!(bobs_private["unread_count"], 2);
    assert_eq!(bobs_private["name"], "Alice");
    assert_eq!(bobs_private["last_message"]["text"], "two");
}
