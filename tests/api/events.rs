//! Events reach NATS after commit, with the payloads and message ids of DESIGN §4.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_shared::events::{Event, EventBus, connect_nats, stream_name};
use windi_tests::{PrivateNats, TestApp, TestDb, nats_url};

/// Collects what arrives on the app's subjects, in order.
struct Listener {
    sub: async_nats::Subscriber,
}

impl Listener {
    async fn new(prefix: &str) -> Self {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let sub = client.subscribe(format!("{prefix}.>")).await.unwrap();
        client.flush().await.unwrap();
        Self { sub }
    }

    /// The next event: (subject, Nats-Msg-Id, payload).
    async fn next(&mut self) -> (String, String, Value) {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.sub.next())
            .await
            .expect("an event within 5 s")
            .unwrap();
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        (
            msg.subject.to_string(),
            id,
            serde_json::from_slice(&msg.payload).unwrap(),
        )
    }
}

async fn drop_stream(prefix: &str) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = jetstream::new(client)
        .delete_stream(stream_name(prefix))
        .await;
}

#[tokio::test]
async fn committed_changes_are_published_with_their_payloads_and_ids() {
    let app = TestApp::spawn_with_nats().await;
    let p = app.prefix.clone();
    let mut events = Listener::new(&p).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );

    let message = app.send_to_user(&alice, &bob, "hello").await;
    let chat = message["chat_id"].as_i64().unwrap();
    for user in [&alice, &bob] {
        let (subject, id, event) = events.next().await;
        assert_eq!(subject, format!("{p}.user.{}", user.id));
        // Small: the chat's id and the join's rev, not a summary of the chat.
        assert_eq!(
            event,
            json!({"type": "chat.added", "user_id": user.id, "chat_id": chat, "rev": 0,
                   "member_rev": 1})
        );
        assert_eq!(id, format!("added.{chat}.{}.0", user.id));
    }
    let (subject, id, event) = events.next().await;
    assert_eq!(subject, format!("{p}.chat.{chat}"));
    assert_eq!(id, format!("msg.{}", message["id"]));
    assert_eq!(
        event,
        json!({"type": "message.created", "chat_id": chat, "rev": 1, "seq": 1, "message": message})
    );
    // Sending moved the sender's own marker, and every marker move is news.
    let (_, id, event) = events.next().await;
    assert_eq!(id, format!("read.{chat}.{}.1", alice.id));
    assert_eq!(
        event,
        json!({"type": "message.read", "chat_id": chat, "user_id": alice.id, "last_read_seq": 1,
               "rev": 1})
    );

    app.mark_read(&bob, message["id"].as_i64().unwrap()).await;
    let (subject, _, event) = events.next().await;
    assert_eq!(subject, format!("{p}.chat.{chat}"));
    assert_eq!(
        event,
        json!({"type": "message.read", "chat_id": chat, "user_id": bob.id, "last_read_seq": 1,
               "rev": 1})
    );

    let group = app.group(&alice, &[&bob]).await;
    let mut added = Vec::new();
    for _ in 0..2 {
        let (subject, _, event) = events.next().await;
        assert_eq!(event["type"], "chat.added");
        added.push(subject);
    }
    added.sort();
    let mut expected = vec![
        format!("{p}.user.{}", alice.id),
        format!("{p}.user.{}", bob.id),
    ];
    expected.sort();
    assert_eq!(added, expected);

    app.post(
        &format!("/chat/group/{group}/members"),
        &alice,
        json!({"user_ids": [carol.id]}),
    )
    .await;
    let (subject, _, event) = events.next().await;
    assert_eq!(subject, format!("{p}.chat.{group}"));
    assert_eq!(
        event,
        json!({"type": "member.joined", "chat_id": group, "rev": 1, "user_id": carol.id,
               "name": "Carol"})
    );
    let (subject, _, event) = events.next().await;
    assert_eq!(subject, format!("{p}.user.{}", carol.id));
    assert_eq!(
        event,
        json!({"type": "chat.added", "user_id": carol.id, "chat_id": group, "rev": 1,
               "member_rev": 1})
    );

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/chat/group/{group}/members/{}", carol.id),
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, event) = events.next().await;
    assert_eq!(
        event,
        json!({"type": "member.left", "chat_id": group, "rev": 2, "user_id": carol.id})
    );
    let (subject, _, event) = events.next().await;
    assert_eq!(subject, format!("{p}.user.{}", carol.id));
    assert_eq!(
        event,
        json!({"type": "chat.removed", "chat_id": group, "user_id": carol.id, "rev": 2,
               "member_rev": 2})
    );

    // A replayed send publishes nothing new.
    let body = json!({"chat_id": chat, "text": "once", "dedup_key": "ev"});
    assert_eq!(
        app.post("/chat/message", &alice, body.clone()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        app.post("/chat/message", &alice, body).await.0,
        StatusCode::OK
    );
    let (_, _, event) = events.next().await;
    assert_eq!(event["message"]["text"], "once");
    let (_, _, event) = events.next().await;
    assert_eq!(event["type"], "message.read");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.sub.next())
            .await
            .is_err(),
        "the replay must not publish"
    );
    drop_stream(&p).await;
}

#[tokio::test]
async fn jetstream_drops_a_republished_event_by_its_msg_id() {
    let prefix = windi_tests::unique("t");
    let publisher = connect_nats(&nats_url(), &prefix, "windi-test")
        .await
        .unwrap();
    let client = publisher.client.clone();
    let event = Event::MessageRead {
        chat_id: 1,
        user_id: 2,
        last_read_seq: 3,
        rev: 4,
        hidden: false,
    };
    publisher.publish(vec![event.clone()]).await;
    publisher.publish(vec![event]).await;
    let mut stream = jetstream::new(client)
        .get_stream(stream_name(&prefix))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    drop_stream(&prefix).await;
}

#[tokio::test]
async fn a_dead_broker_never_fails_a_request_that_committed() {
    let mut nats = PrivateNats::start().await;
    let prefix = windi_tests::unique("t");
    let publisher = connect_nats(&nats.url, &prefix, "windi-test")
        .await
        .unwrap();
    let app = TestApp::start(TestDb::new().await, Arc::new(publisher), prefix).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    nats.stop();

    let started = std::time::Instant::now();
    let message = app.send_to_user(&alice, &bob, "committed anyway").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stored: String = sqlx::query_scalar("SELECT text FROM messages WHERE id = $1")
        .bind(message["id"].as_i64().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "committed anyway");
    let (status, ready) = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
}

/// A long-running process answers without waiting for JetStream's acks; under Lambda (acks
/// awaited inline) the same publish waits them out. A paused broker takes the events into its
/// socket and answers nothing, so the difference is the whole of `PUBLISH_TIMEOUT`; once it
/// resumes, the events sent meanwhile are in the stream.
#[tokio::test]
async fn a_long_running_process_answers_without_waiting_for_acks() {
    let nats = PrivateNats::start().await;
    let prefix = windi_tests::unique("t");
    // Under a prefix of its own, so its event is not counted in the app's stream.
    let inline = connect_nats(&nats.url, &windi_tests::unique("t"), "windi-lambda")
        .await
        .unwrap();
    let background = connect_nats(&nats.url, &prefix, "windi-test")
        .await
        .unwrap()
        .acknowledge_in_background();
    let js = jetstream::new(background.client.clone());
    let app = TestApp::start(TestDb::new().await, Arc::new(background), prefix.clone()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    app.send_to_user(&alice, &bob, "before the pause").await;
    let stored = || async {
        let mut stream = js.get_stream(stream_name(&prefix)).await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    let before = stored().await;
    assert!(before > 0, "the first send's events are in the stream");

    nats.pause();
    let started = std::time::Instant::now();
    app.send_to_user(&alice, &bob, "during the pause").await;
    let answered_in = started.elapsed();
    let started = std::time::Instant::now();
    inline
        .publish(vec![Event::MemberLeft {
            chat_id: 1,
            rev: 1,
            user_id: 1,
        }])
        .await;
    let inline_took = started.elapsed();
    nats.resume();

    // The pause was real: an inline publish waited for acks that did not come.
    assert!(
        inline_took >= windi_shared::events::PUBLISH_TIMEOUT - Duration::from_millis(100),
        "inline publish took {inline_took:?}"
    );
    assert!(
        answered_in < Duration::from_millis(1000),
        "the send answered in {answered_in:?}, waiting for acks"
    );
    windi_tests::eventually(
        Duration::from_secs(10),
        "the events sent during the pause are in the stream",
        || async { stored().await > before },
    )
    .await;
}

#[tokio::test]
async fn windi_starts_before_nats_and_publishes_once_it_is_up() {
    let mut nats = PrivateNats::not_started();
    let prefix = windi_tests::unique("t");
    let started = std::time::Instant::now();
    let publisher = connect_nats(&nats.url, &prefix, "windi-test")
        .await
        .expect("start-up does not wait for NATS");
    assert!(started.elapsed() < Duration::from_secs(10));
    let app = TestApp::start(TestDb::new().await, Arc::new(publisher), prefix.clone()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // Sends work while NATS is not there at all.
    app.send_to_user(&alice, &bob, "before NATS").await;
    let (status, _) = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    nats.restart().await;
    windi_tests::eventually(Duration::from_secs(20), "ready once NATS is up", || async {
        app.call(Method::GET, "/ready", None, None).await.0 == StatusCode::OK
    })
    .await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = jetstream::new(client);
    // The stream is made in the background once NATS answers; then events land in it.
    windi_tests::eventually(Duration::from_secs(20), "the stream exists", || async {
        js.get_stream(stream_name(&prefix)).await.is_ok()
    })
    .await;
    app.send_to_user(&alice, &bob, "after NATS").await;
    windi_tests::eventually(
        Duration::from_secs(10),
        "the event is in the stream",
        || async {
            let mut stream = js.get_stream(stream_name(&prefix)).await.unwrap();
            stream.info().await.is_ok_and(|i| i.state.messages > 0)
        },
    )
    .await;
}
