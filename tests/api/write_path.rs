//! The one write path (`shared/src/service/write.rs`): a change commits once and answers once.
//!
//! - A committed write answers success, even when telling the relays runs late (a paused NATS)
//!   and the commit itself landed late; one that could not commit in time answers 503 and
//!   stored nothing.
//! - Concurrent sends with one key to a chat that exists all answer the one message.
//! - A private chat closed by a block takes no reactions, edits or typing from either side.
//! - One chat's long lock holder does not take the pool from everyone else.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use windi_shared::{AppState, store};
use windi_tests::{
    PrivateNats, TestApp, TestDb, TestUser, eventually, relay_settings, unique,
    ws::{Received, WsClient},
};

const WAIT: Duration = Duration::from_secs(10);

/// The database's lock waiters right now: requests queued on a row lock.
async fn lock_waiters(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

/// Holds a chat's row lock from a connection of the test's own until dropped or committed.
async fn hold_chat(app: &TestApp, chat_id: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE")
        .bind(chat_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

async fn stored_with_key(app: &TestApp, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE dedup_key = $1")
        .bind(key)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// A send whose commit waits `hold` behind another transaction's lock on the chat, while NATS
/// is paused, so that publishing its events cannot finish: the answer must agree with what
/// was stored, and must come by the deadline (plus the commit grace when the commit ran late).
async fn send_behind_a_lock(
    app: &TestApp,
    alice: &TestUser,
    chat: i64,
    hold: Duration,
) -> (StatusCode, i64, Duration) {
    let key = unique("late");
    let holder = hold_chat(app, chat).await;
    let started = Instant::now();
    let send = {
        let request = app
            .http
            .post(app.url("/chat/message"))
            .bearer_auth(&alice.token)
            .json(&json!({"chat_id": chat, "text": "late", "dedup_key": key}));
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    // The race is hit: the send is inside Postgres, queued on the lock.
    eventually(WAIT, "the send waits on the chat's lock", || async {
        lock_waiters(app).await >= 1
    })
    .await;
    // The scenario's delay, not a wait for a condition: the lock is held this long.
    tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
    holder.commit().await.unwrap();
    let status = send.await.unwrap();
    (status, stored_with_key(app, &key).await, started.elapsed())
}

#[tokio::test]
async fn a_committed_send_answers_success_even_when_its_events_are_late() {
    let nats = PrivateNats::start().await;
    let prefix = unique("t");
    // Events awaited before the answer (as on Lambda), on a NATS this test pauses.
    let publisher = windi_shared::events::connect_nats(&nats.url, &prefix, "windi-test")
        .await
        .unwrap();
    let db = TestDb::new().await;
    // Raised for this test only: the send must be able to wait on the lock until its commit
    // lands close to the deadline (the production lock timeout, 2 s, would end it first).
    let patient = store::connect_with(
        &db.url,
        10,
        Some(store::Timeouts {
            lock: Duration::from_secs(30),
            statement: Duration::from_secs(30),
        }),
    )
    .await
    .unwrap();
    let app = TestApp::start_adjusted(db, Arc::new(publisher), prefix, |state| AppState {
        db: patient,
        ..state
    })
    .await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "first").await["chat_id"]
        .as_i64()
        .unwrap();
    nats.pause();

    // Commits at 3.3 s and 4.7 s: in time, so answered as sent — before, the publish after
    // the commit (up to 2 s) ran past the 5 s deadline and the answer was 503.
    for hold in [Duration::from_millis(3_300), Duration::from_millis(4_700)] {
        let (status, stored, took) = send_behind_a_lock(&app, &alice, chat, hold).await;
        assert_eq!(
            (status, stored),
            (StatusCode::CREATED, 1),
            "held {hold:?}: committed, so answered as sent"
        );
        assert!(
            took < Duration::from_millis(5_800),
            "held {hold:?}: took {took:?}"
        );
    }
    // Held past the deadline: answered 503, and the send then rolls back rather than commit.
    let (status, stored, _) =
        send_behind_a_lock(&app, &alice, chat, Duration::from_millis(5_600)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The handler finishes on its own after the answer: wait until it rolled back.
    eventually(WAIT, "the late send is rolled back", || async {
        lock_waiters(&app).await == 0
    })
    .await;
    assert_eq!(stored, 0, "a 503 never hides a write");
    nats.resume();
}

#[tokio::test]
async fn concurrent_sends_with_one_key_to_an_existing_chat_all_answer_the_one_message() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "the chat exists").await["chat_id"]
        .as_i64()
        .unwrap();
    let ids_before: i64 = next_message_id(&app).await;
    for round in 0..3 {
        let key = unique("same");
        let answers = join_all((0..20).map(|_| {
            app.http
                .post(app.url("/chat/message"))
                .bearer_auth(&alice.token)
                .json(&json!({"chat_id": chat, "text": "once", "dedup_key": key}))
                .send()
        }))
        .await;
        let mut statuses = Vec::new();
        let mut ids = Vec::new();
        for answer in answers {
            let (status, body) = windi_tests::read(answer.unwrap()).await;
            statuses.push(status);
            ids.push(body["id"].clone());
        }
        let created = statuses
            .iter()
            .filter(|&&s| s == StatusCode::CREATED)
            .count();
        let replayed = statuses.iter().filter(|&&s| s == StatusCode::OK).count();
        assert_eq!((created, replayed), (1, 19), "round {round}: {statuses:?}");
        assert!(ids.iter().all(|id| *id == ids[0]), "round {round}: {ids:?}");
        assert_eq!(stored_with_key(&app, &key).await, 1, "round {round}");
    }
    // The race is hit: a send that found no message under its key but lost the insert to a
    // concurrent one still drew a message id (identities are not handed back on rollback).
    let drawn = next_message_id(&app).await - ids_before;
    assert!(
        drawn > 3,
        "no send lost the insert race in 3 rounds of 20 ({drawn} ids drawn for 3 messages)"
    );
}

/// The id the next message would get (drawing one).
async fn next_message_id(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_blocked_private_chat_takes_no_reactions_edits_or_typing() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let from_alice = app.send_to_user(&alice, &bob, "hi Bob").await;
    let from_bob = app.send_to_user(&bob, &alice, "hi Alice").await;
    let chat = from_alice["chat_id"].as_i64().unwrap();
    let probe_chat = app.send_to_user(&carol, &alice, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let (status, _) = app.put(&format!("/users/{}/block", bob.id), &alice).await;
    assert!(status.is_success());

    let mut alice_ws = WsClient::connect(relay.addr, &alice.token).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "typing", "chat_id": chat}))
        .await;
    let refused = bob_ws.expect("error", WAIT).await;
    assert_eq!(refused["code"], "blocked", "{refused}");

    let thumbs = "%F0%9F%91%8D";
    let alice_message = from_alice["id"].as_i64().unwrap();
    let bob_message = from_bob["id"].as_i64().unwrap();
    for (path, who) in [
        (
            format!("/chat/message/{alice_message}/reactions/{thumbs}"),
            &bob,
        ),
        (
            format!("/chat/message/{bob_message}/reactions/{thumbs}"),
            &alice,
        ),
    ] {
        let (status, body) = app.put(&path, who).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["code"], "blocked");
    }
    let (status, body) = app
        .patch(
            &format!("/chat/message/{bob_message}"),
            &bob,
            json!({"text": "edited past the block"}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("blocked"))
    );
    // Taking words back stays open.
    let (status, _) = app
        .delete(&format!("/chat/message/{bob_message}"), &bob)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Alice's connection is alive and hears Carol, yet nothing of Bob's came before it but
    // his deletion (a change of the chat, delivered as such).
    app.send_to_chat(&carol, probe_chat, "probe").await;
    loop {
        let frame = match alice_ws.next(WAIT).await {
            Received::Frame(frame) => frame,
            other => panic!("Alice's connection: {other:?} before Carol's probe"),
        };
        assert_ne!(frame["type"], "typing", "{frame}");
        if frame["type"] == "message" && frame["message"]["text"] == "probe" {
            break;
        }
        if frame["chat_id"] == chat && frame["type"] == "message_updated" {
            assert_eq!(frame["change"], "deleted", "{frame}");
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM message_reactions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_long_lock_on_one_chat_does_not_starve_other_users() {
    // Unlimited on purpose: Bob floods the held chat as fast as answers come back.
    let app = TestApp::spawn_unlimited(windi_tests::Mode::Local).await;
    let (alice, bob, carol, dave) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
    );
    let hot = app.send_to_user(&alice, &bob, "hot").await["chat_id"]
        .as_i64()
        .unwrap();
    let calm = app.send_to_user(&carol, &dave, "calm").await["chat_id"]
        .as_i64()
        .unwrap();
    let pool_size = app.state.db.options().get_max_connections() as usize;
    let holder = hold_chat(&app, hot).await;

    // Three times the pool's worth of Bob's sends to the held chat, for 4 s.
    let flood_until = Instant::now() + Duration::from_secs(4);
    let flood = join_all((0..pool_size * 3).map(|i| {
        let (app, bob) = (&app, &bob);
        async move {
            let mut busy = 0;
            while Instant::now() < flood_until {
                let (status, body) = app
                    .post(
                        "/chat/message",
                        bob,
                        json!({"chat_id": hot, "text": format!("{i}")}),
                    )
                    .await;
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                busy += 1;
            }
            busy
        }
    }));
    // Meanwhile Carol and Dave go on as if nothing happened.
    let calm_users = async {
        let mut slowest = Duration::ZERO;
        let mut answered = 0;
        // Let the flood fill its queue first.
        eventually(WAIT, "the flood is queued on the lock", || async {
            lock_waiters(&app).await >= 1
        })
        .await;
        while Instant::now() < flood_until {
            for (status, _) in [
                app.post(
                    "/chat/message",
                    &carol,
                    json!({"chat_id": calm, "text": "fine"}),
                )
                .await,
                app.get("/chat/list", &dave).await,
                app.get(&format!("/chat/history/{calm}"), &dave).await,
            ] {
                assert!(status.is_success(), "{status}");
                answered += 1;
            }
            let started = Instant::now();
            let (status, _) = app.get("/chat/list", &carol).await;
            assert!(status.is_success());
            slowest = slowest.max(started.elapsed());
        }
        (answered, slowest)
    };
    let (busy, (answered, slowest)) = tokio::join!(flood, calm_users);
    holder.rollback().await.unwrap();
    let refused: usize = busy.iter().sum();
    assert!(
        refused >= pool_size * 3,
        "the flood was answered {refused} times"
    );
    assert!(answered > 10, "only {answered} calm answers");
    assert!(
        slowest < Duration::from_secs(1),
        "a calm request waited {slowest:?} behind the flood"
    );
}

#[tokio::test]
async fn an_account_deleted_while_a_group_adds_it_is_not_added() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    // Carol's account is being deleted: the deletion holds her row (as `users::lock` does).
    let mut deletion = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(carol.id)
        .execute(&mut *deletion)
        .await
        .unwrap();
    let add = {
        let request = app
            .http
            .post(app.url(&format!("/chat/group/{group}/members")))
            .bearer_auth(&alice.token)
            .json(&json!({"user_ids": [carol.id]}));
        tokio::spawn(async move { windi_tests::read(request.send().await.unwrap()).await })
    };
    // The race is hit: the add passed its early check and waits on Carol's row.
    eventually(WAIT, "the add waits on the deleted user's row", || async {
        lock_waiters(&app).await >= 1
    })
    .await;
    sqlx::query("UPDATE users SET deleted_at = now(), email = NULL WHERE id = $1")
        .bind(carol.id)
        .execute(&mut *deletion)
        .await
        .unwrap();
    deletion.commit().await.unwrap();
    let (status, body) = add.await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "unknown_user");
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)",
    )
    .bind(group)
    .bind(carol.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(!member, "a deleted account joined the group");
}
