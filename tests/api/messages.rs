//! Sending: private chats on first message, gap-free seq, idempotency.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

use windi_shared::events::LocalBus;
use windi_tests::{TestApp, TestDb};

#[tokio::test]
async fn the_first_message_creates_the_private_chat_and_later_ones_reuse_it() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let first = app.send_to_user(&alice, &bob, "Привет, как дела?").await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["sender_id"], alice.id);
    assert_eq!(first["text"], "Привет, как дела?");
    assert_eq!(first["read"], false);
    assert!(first["timestamp"].as_str().unwrap().contains('T'));

    let reply = app.send_to_user(&bob, &alice, "Отлично!").await;
    assert_eq!(reply["chat_id"], first["chat_id"]);
    assert_eq!(reply["seq"], 2);
    let by_chat = app
        .send_to_chat(&alice, first["chat_id"].as_i64().unwrap(), "third")
        .await;
    assert_eq!(by_chat["seq"], 3);
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_strictly_increasing_seqs() {
    let app = TestApp::spawn().await;
    let users = [
        app.user("A").await,
        app.user("B").await,
        app.user("C").await,
        app.user("D").await,
    ];
    let chat = app
        .group(&users[0], &[&users[1], &users[2], &users[3]])
        .await;
    let sends = (0..100).map(|i| {
        let sender = &users[i % users.len()];
        app.post(
            "/chat/message",
            sender,
            json!({"chat_id": chat, "text": format!("message {i}")}),
        )
    });
    let results = futures::future::join_all(sends).await;
    let mut seqs: Vec<i64> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
            body["seq"].as_i64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());

    // Stored order by seq is also commit order: ids (allocated at insert) rise with seq.
    let stored: Vec<(i64, i64)> =
        sqlx::query_as("SELECT seq, id FROM messages WHERE chat_id = $1 ORDER BY seq")
            .bind(chat)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 100);
    assert!(stored.windows(2).all(|w| w[0].1 < w[1].1), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sends_with_one_dedup_key_store_one_message() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let body = json!({"recipient_id": bob.id, "text": "once", "dedup_key": "k-50"});
    let results =
        futures::future::join_all((0..50).map(|_| app.post("/chat/message", &alice, body.clone())))
            .await;
    let ids: HashSet<i64> = results
        .iter()
        .map(|(_, b)| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every response carries the same id");
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let replayed = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, replayed), (1, 49));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let last_seq: i64 = sqlx::query_scalar("SELECT max(last_seq) FROM chats")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(last_seq, 1, "losing duplicates must not burn seqs");
}

#[tokio::test]
async fn a_reused_key_with_other_text_or_chat_is_a_conflict() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let send = |to: i64, text: &str| {
        app.post(
            "/chat/message",
            &alice,
            json!({"recipient_id": to, "text": text, "dedup_key": "same"}),
        )
    };
    assert_eq!(send(bob.id, "hello").await.0, StatusCode::CREATED);
    let (status, body) = send(bob.id, "other text").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "dedup_conflict");
    assert!(body["detail"].as_str().unwrap().contains("dedup_key"));
    assert_eq!(send(carol.id, "hello").await.0, StatusCode::CONFLICT);
    // Keys are per sender: Bob may use the same key.
    let (status, _) = app
        .post(
            "/chat/message",
            &bob,
            json!({"recipient_id": alice.id, "text": "hello", "dedup_key": "same"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_send_without_a_key_is_always_new() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let a = app.send_to_user(&alice, &bob, "same").await;
    let b = app.send_to_user(&alice, &bob, "same").await;
    assert_ne!(a["id"], b["id"]);
    assert_eq!(b["seq"], 2);
}

#[tokio::test]
async fn the_idempotency_key_header_works_like_the_body_field() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let send = |key: &'static str, body: Value| {
        app.http
            .post(app.url("/chat/message"))
            .bearer_auth(&alice.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let body = json!({"recipient_id": bob.id, "text": "via header"});
    let first = windi_tests::read(send("h-1", body.clone()).await.unwrap()).await;
    let again = windi_tests::read(send("h-1", body).await.unwrap()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(again.0, StatusCode::OK);
    assert_eq!(first.1["id"], again.1["id"]);
    assert_eq!(first.1["dedup_key"], "h-1");
    let mismatch = json!({"recipient_id": bob.id, "text": "x", "dedup_key": "other"});
    let (status, body) = windi_tests::read(send("h-2", mismatch).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));
}

#[tokio::test]
async fn deduplication_holds_across_a_restart() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let first = TestApp::start(db, Arc::new(LocalBus::default()), "r".into()).await;
    let (alice, bob) = (first.user("Alice").await, first.user("Bob").await);
    let body = json!({"recipient_id": bob.id, "text": "survives", "dedup_key": "restart"});
    let (status, original) = first.post("/chat/message", &alice, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);

    // A second, independent server process state on the same database: nothing in memory.
    let pool = windi_shared::store::connect(&url, 2).await.unwrap();
    let state = windi_shared::AppState::new(
        pool,
        &windi_shared::config::JwtConfig::new(
            windi_tests::TEST_SECRET.to_vec(),
            jsonwebtoken::Algorithm::HS256,
            std::time::Duration::from_secs(60),
        )
        .unwrap(),
        Arc::new(LocalBus::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, windi::app(state)).await });
    let response = windi_tests::http_client()
        .post(format!("http://{addr}/chat/message"))
        .bearer_auth(&alice.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, replay) = windi_tests::read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replay["id"], original["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_messages_between_two_users_make_one_private_chat() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let (a, b) = (app.user("A").await, app.user("B").await);
        let (x, y) = tokio::join!(
            app.post(
                "/chat/message",
                &a,
                json!({"recipient_id": b.id, "text": format!("a{round}")})
            ),
            app.post(
                "/chat/message",
                &b,
                json!({"recipient_id": a.id, "text": format!("b{round}")})
            ),
        );
        assert_eq!(x.0, StatusCode::CREATED, "{}", x.1);
        assert_eq!(y.0, StatusCode::CREATED, "{}", y.1);
        assert_eq!(x.1["chat_id"], y.1["chat_id"], "round {round}");
        let mut seqs = [x.1["seq"].as_i64().unwrap(), y.1["seq"].as_i64().unwrap()];
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2]);
    }
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM chats WHERE kind = 'private'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(chats, 10);
}

#[tokio::test]
async fn messaging_yourself_or_a_stranger_id_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": alice.id, "text": "me"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("recipient_id"));
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": 999_999, "text": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "recipient not found");
    let (status, _) = app
        .call(
            Method::POST,
            "/chat/message",
            None,
            Some(json!({"recipient_id": 1, "text": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
