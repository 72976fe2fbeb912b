//! Delivery by rev through the relay: every kind of change arrives live, after a resume, after
//! a relay or NATS restart, and after its event was lost, in rev order, once, with no gap; a
//! removal stops delivery exactly at its rev.

use std::{collections::BTreeMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_tests::{
    Mode, PrivateNats, TestApp, TestUser, relay_settings,
    ws::{Received, WsClient},
};

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(600);
/// Frames that are changes of a chat.
const CHANGES: &[&str] = &["message", "message_updated", "member", "chat_removed"];

fn enc(emoji: &str) -> String {
    emoji.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// What a client builds from change frames: each message's latest state, and the revs applied.
#[derive(Debug, Default)]
struct Replica {
    messages: BTreeMap<i64, Value>,
    revs: Vec<i64>,
}

impl Replica {
    /// Applies change frames of `chat`, asserting they come in strictly ascending rev order.
    fn apply(&mut self, chat: i64, frames: &[Value]) {
        for frame in frames {
            assert_eq!(frame["chat_id"], chat, "{frame}");
            let rev = frame["rev"].as_i64().unwrap();
            if let Some(&last) = self.revs.last() {
                assert!(
                    rev > last,
                    "rev {rev} after {last}: a duplicate or out of order"
                );
            }
            self.revs.push(rev);
            if frame["type"] == "message" || frame["type"] == "message_updated" {
                let message = &frame["message"];
                self.messages
                    .insert(message["id"].as_i64().unwrap(), message.clone());
            }
        }
    }

    fn last_rev(&self) -> i64 {
        self.revs.last().copied().unwrap_or(0)
    }

    /// The replica holds exactly what Postgres holds now. `read` is left out: it follows the
    /// members' markers, which are not changes of the chat (`read` frames carry them).
    async fn assert_matches(&self, app: &TestApp, user: &TestUser, chat: i64) {
        let without_read = |mut m: Value| {
            m.as_object_mut().unwrap().remove("read");
            m
        };
        let history = app.history(user, chat, "limit=200").await;
        let stored: BTreeMap<i64, Value> = history
            .into_iter()
            .map(|m| (m["id"].as_i64().unwrap(), without_read(m)))
            .collect();
        let replica: BTreeMap<i64, Value> = self
            .messages
            .iter()
            .map(|(&id, m)| (id, without_read(m.clone())))
            .collect();
        assert_eq!(replica, stored);
        assert_eq!(self.last_rev(), app.chat_rev(chat).await);
    }
}

/// Some of every kind of message change, by `alice` in `chat`: sends, edits, reactions and a
/// deletion, `rounds` times.
async fn churn(app: &TestApp, alice: &TestUser, chat: i64, rounds: usize, tag: &str) {
    for i in 0..rounds {
        let m = app.send_to_chat(alice, chat, &format!("{tag} {i}")).await;
        let id = &m["id"];
        if i % 2 == 0 {
            let (status, _) = app
                .patch(
                    &format!("/chat/message/{id}"),
                    alice,
                    json!({"text": format!("{tag} {i} (edited)")}),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        if i % 3 == 0 {
            let (status, _) = app
                .put(
                    &format!("/chat/message/{id}/reactions/{}", enc("🎉")),
                    alice,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        if i % 4 == 3 {
            let (status, _) = app.delete(&format!("/chat/message/{id}"), alice).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
}

async fn every_kind_of_change_arrives_live_in_rev_order(mode: Mode) {
    let app = TestApp::spawn_in(mode).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    let m = app.send_to_chat(&alice, group, "hi").await;
    let frame = bob_ws.expect("message", WAIT).await;
    assert_eq!(
        frame,
        json!({"type": "message", "chat_id": group, "seq": 1, "rev": 1, "message": m})
    );

    let (_, edited) = app
        .patch(
            &format!("/chat/message/{}", m["id"]),
            &alice,
            json!({"text": "hi!"}),
        )
        .await;
    let frame = bob_ws.expect("message_updated", WAIT).await;
    assert_eq!(
        frame,
        json!({"type": "message_updated", "chat_id": group, "rev": 2, "change": "edited",
               "message": edited})
    );
    let (_, reacted) = app
        .put(
            &format!("/chat/message/{}/reactions/{}", m["id"], enc("👍")),
            &bob,
        )
        .await;
    let frame = bob_ws.expect("message_updated", WAIT).await;
    assert_eq!(
        (frame["change"].clone(), frame["message"].clone()),
        (json!("reaction_added"), reacted)
    );
    app.post(
        &format!("/chat/group/{group}/members"),
        &alice,
        json!({"user_ids": [carol.id]}),
    )
    .await;
    let frame = bob_ws.expect("member", WAIT).await;
    assert_eq!(frame["rev"], 4);
    let (_, tombstone) = app
        .delete(&format!("/chat/message/{}", m["id"]), &alice)
        .await;
    let frame = bob_ws.expect("message_updated", WAIT).await;
    assert_eq!(
        (
            frame["change"].clone(),
            frame["rev"].clone(),
            frame["message"].clone()
        ),
        (json!("deleted"), json!(5), tombstone)
    );
    bob_ws.none_within("message_updated", QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn every_kind_of_change_arrives_live_in_rev_order_on_the_local_bus() {
    every_kind_of_change_arrives_live_in_rev_order(Mode::Local).await;
}

#[tokio::test]
async fn every_kind_of_change_arrives_live_in_rev_order_over_nats() {
    every_kind_of_change_arrives_live_in_rev_order(Mode::Nats).await;
}

async fn resume_by_rev_replays_what_was_missed_and_reconciles_membership(mode: Mode) {
    let app = TestApp::spawn_in(mode).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    let leaving = app.group(&alice, &[&bob]).await;
    let mut replica = Replica::default();
    churn(&app, &alice, group, 4, "before").await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "revs": {group.to_string(): 0}}))
        .await;
    let rev = app.chat_rev(group).await;
    let mut frames = Vec::new();
    while frames.last().map(|f: &Value| f["rev"].as_i64().unwrap()) != Some(rev) {
        frames.extend(bob_ws.frames(CHANGES, 1, WAIT).await);
    }
    replica.apply(group, &frames);
    replica.assert_matches(&app, &bob, group).await;
    drop(bob_ws);

    // Offline: every kind of change, a chat joined, a chat left.
    churn(&app, &alice, group, 6, "missed").await;
    app.post(
        &format!("/chat/group/{group}/members"),
        &alice,
        json!({"user_ids": [carol.id]}),
    )
    .await;
    app.delete(&format!("/chat/group/{group}/members/{}", carol.id), &alice)
        .await;
    let joined = app.group(&carol, &[&bob]).await;
    app.delete(&format!("/chat/group/{leaving}/members/{}", bob.id), &alice)
        .await;

    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "revs": {
            group.to_string(): replica.last_rev(), leaving.to_string(): 0}}))
        .await;
    let rev = app.chat_rev(group).await;
    let mut frames = Vec::new();
    let (mut removed, mut added) = (None, None);
    while frames.last().map(|f: &Value| f["rev"].as_i64().unwrap()) != Some(rev)
        || removed.is_none()
        || added.is_none()
    {
        for frame in bob_ws
            .frames(
                &[
                    "message",
                    "message_updated",
                    "member",
                    "chat_removed",
                    "chat",
                ],
                1,
                WAIT,
            )
            .await
        {
            match frame["type"].as_str().unwrap() {
                "chat_removed" => removed = Some(frame),
                "chat" => added = Some(frame),
                _ => frames.push(frame),
            }
        }
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"member") && kinds.contains(&"message_updated"),
        "{kinds:?}"
    );
    replica.apply(group, &frames);
    replica.assert_matches(&app, &bob, group).await;
    assert_eq!(removed.unwrap()["chat_id"], leaving);
    assert_eq!(added.unwrap()["chat"]["id"], joined);

    // Then live, with no duplicate at the seam.
    let live = app.send_to_chat(&alice, group, "live").await;
    let got = bob_ws.frames(CHANGES, 1, WAIT).await;
    replica.apply(group, &got);
    assert_eq!(got[0]["message"], live);
    bob_ws.no_message_within(QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn resume_by_rev_replays_what_was_missed_and_reconciles_membership_on_the_local_bus() {
    resume_by_rev_replays_what_was_missed_and_reconciles_membership(Mode::Local).await;
}

#[tokio::test]
async fn resume_by_rev_replays_what_was_missed_and_reconciles_membership_over_nats() {
    resume_by_rev_replays_what_was_missed_and_reconciles_membership(Mode::Nats).await;
}

/// Reads change frames of `chat` until the replica reaches `rev`.
async fn until_rev(ws: &mut WsClient, replica: &mut Replica, chat: i64, rev: i64) {
    while replica.last_rev() < rev {
        let frames = ws.frames(CHANGES, 1, WAIT).await;
        replica.apply(chat, &frames);
    }
}

#[tokio::test]
async fn a_relay_restart_and_a_nats_restart_lose_and_repeat_no_change() {
    let mut nats = PrivateNats::start().await;
    let app = TestApp::spawn_on_nats(&nats.url).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let mut replica = Replica::default();

    let first = app.relay(relay_settings()).await;
    let mut bob_ws = WsClient::connect(first.addr, &bob.token).await;
    churn(&app, &alice, group, 5, "one").await;
    until_rev(&mut bob_ws, &mut replica, group, app.chat_rev(group).await).await;

    // The relay goes away mid-stream; another takes over and the client resumes by rev.
    first.stop().await;
    assert_eq!(bob_ws.close_code(WAIT).await, 1012);
    churn(&app, &alice, group, 5, "two").await;
    let second = app.relay(relay_settings()).await;
    let mut bob_ws = WsClient::connect(second.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "revs": {group.to_string(): replica.last_rev()}}))
        .await;
    until_rev(&mut bob_ws, &mut replica, group, app.chat_rev(group).await).await;

    // NATS goes away while changes keep committing; the relay recovers them when it is back.
    nats.stop();
    churn(&app, &alice, group, 3, "three").await;
    nats.restart().await;
    churn(&app, &alice, group, 3, "four").await;
    until_rev(&mut bob_ws, &mut replica, group, app.chat_rev(group).await).await;
    replica.assert_matches(&app, &bob, group).await;
    bob_ws.none_within("message_updated", QUIET).await;
    second.stop().await;
}

#[tokio::test]
async fn a_lost_change_of_each_kind_is_recovered_by_the_poller() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob, &carol]).await;
    let m = app.send_to_chat(&alice, group, "original").await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    // Every change below is committed by a windi whose events reach no relay.
    let silent = app.silent_twin().await;

    let (_, edited) = silent
        .patch(
            &format!("/chat/message/{}", m["id"]),
            &alice,
            json!({"text": "edited"}),
        )
        .await;
    let frame = bob_ws.expect("message_updated", WAIT).await;
    assert_eq!(frame["message"], edited);

    let sent = silent.send_to_chat(&alice, group, "unpublished").await;
    assert_eq!(bob_ws.messages(1, WAIT).await[0]["message"], sent);

    silent
        .delete(&format!("/chat/group/{group}/members/{}", carol.id), &carol)
        .await;
    let frame = bob_ws.expect("member", WAIT).await;
    assert_eq!(
        (frame["user_id"].clone(), frame["change"].clone()),
        (json!(carol.id), json!("left"))
    );

    let (status, new_group) = silent
        .post(
            "/chat/group",
            &carol,
            json!({"name": "Lost news", "participant_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let frame = bob_ws.expect("chat", WAIT).await;
    assert_eq!(frame["chat"]["id"], new_group["chat_id"]);

    silent
        .delete(&format!("/chat/group/{group}/members/{}", bob.id), &alice)
        .await;
    let frame = bob_ws.expect("chat_removed", WAIT).await;
    assert_eq!(frame["chat_id"], group);
    assert_eq!(frame["rev"], app.chat_rev(group).await);
    // Nothing of the chat after the removal, though the connection lives on.
    app.send_to_chat(&alice, group, "after bob").await;
    bob_ws.no_message_within(QUIET).await;
    assert!(relay.stats().nudges >= 3, "{:?}", relay.stats());
    relay.stop().await;
}

#[tokio::test]
async fn a_failed_backfill_is_retried_until_it_succeeds() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    churn(&app, &alice, group, 3, "m").await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    // The change log becomes unreadable, and the client asks for everything.
    sqlx::query("ALTER TABLE chat_changes RENAME TO chat_changes_away")
        .execute(&app.db.pool)
        .await
        .unwrap();
    bob_ws
        .send(json!({"type": "resume", "revs": {group.to_string(): 0}}))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.stats().backfill_failures < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no failed backfill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing of the log arrives (read markers, which are not in it, may).
    loop {
        match bob_ws.next(Duration::from_millis(100)).await {
            Received::Frame(frame) if frame["type"] == "read" => continue,
            // The names that changed since are found through the log as well.
            Received::Frame(frame) if frame["code"] == "unavailable" => continue,
            Received::Silent => break,
            other => panic!("while the log is unreadable: {other:?}"),
        }
    }
    sqlx::query("ALTER TABLE chat_changes_away RENAME TO chat_changes")
        .execute(&app.db.pool)
        .await
        .unwrap();

    // The retry delivers it all, with no further prompt from the client.
    let mut replica = Replica::default();
    until_rev(&mut bob_ws, &mut replica, group, app.chat_rev(group).await).await;
    replica.assert_matches(&app, &bob, group).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_user_in_two_thousand_chats_connects_without_being_cut() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // 2,000 groups with a message each, written straight into Postgres as the API would.
    sqlx::query(
        "WITH c AS (
             INSERT INTO chats (kind, name, creator_id, last_seq, rev)
             SELECT 'group', 'g' || i, $1, 1, 1 FROM generate_series(1, 2000) i RETURNING id),
         mem AS (
             INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
             SELECT id, $1, 'owner', 1 FROM c UNION ALL SELECT id, $2, 'member', 0 FROM c),
         m AS (
             INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, content_hash)
             SELECT id, 1, 1, 1, $1, 'hello', '\\x00' FROM c RETURNING id, chat_id)
         INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
         SELECT chat_id, 1, 'message', id, $1 FROM m",
    )
    .bind(alice.id)
    .bind(bob.id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM chats")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    // Several polls pass over the 2,000 routes (the queue holds 512).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let live = app.send_to_chat(&alice, last, "still here?").await;
    assert_eq!(bob_ws.messages(1, WAIT).await[0]["message"], live);
    let stats = relay.stats();
    assert_eq!(stats.slow_consumers, 0, "{stats:?}");
    // Each route started from its chat's real rev: polling found nothing behind.
    assert_eq!(stats.nudges, 0, "{stats:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_removal_racing_sends_stops_delivery_exactly_at_its_rev() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob, &carol]).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    // Resuming first, as clients do, starts live delivery at once (not after the relay's
    // grace for a resume), so the sends below race the removal.
    let rev = app.chat_rev(group).await;
    bob_ws
        .send(json!({"type": "resume", "revs": {group.to_string(): rev}}))
        .await;

    // Two members send as fast as they can while the owner removes Bob.
    let sends = |user: TestUser, base: String| async move {
        let http = windi_tests::http_client();
        for i in 0..40 {
            let response = http
                .post(format!("{base}/chat/message"))
                .bearer_auth(&user.token)
                .json(&json!({"chat_id": group, "text": format!("{i}")}))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    };
    let a = tokio::spawn(sends(alice.clone(), app.base.clone()));
    let c = tokio::spawn(sends(carol.clone(), app.base.clone()));
    let mut before = bob_ws.messages(10, WAIT).await;
    let (status, _) = app
        .delete(&format!("/chat/group/{group}/members/{}", bob.id), &alice)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    a.await.unwrap();
    c.await.unwrap();

    let removal: i64 = sqlx::query_scalar(
        "SELECT rev FROM chat_changes WHERE chat_id = $1 AND kind = 'member_left'",
    )
    .bind(group)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1 AND rev > $2")
            .bind(group)
            .bind(removal)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(
        after > 0,
        "the race was not hit: every send committed before the removal"
    );
    // Everything before the removal, exactly once and in order, then the removal, then nothing.
    loop {
        match bob_ws.next(WAIT).await {
            Received::Frame(f) if f["type"] == "message" => before.push(f),
            Received::Frame(f) if f["type"] == "chat_removed" => {
                assert_eq!(f["rev"], removal);
                break;
            }
            Received::Frame(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let revs: Vec<i64> = before.iter().map(|f| f["rev"].as_i64().unwrap()).collect();
    assert_eq!(revs, (1..removal).collect::<Vec<i64>>());
    bob_ws.no_message_within(QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_change_that_arrives_ahead_waits_for_the_missing_ones_from_postgres() {
    let app = TestApp::spawn_with_nats().await;
    // The poller is out of the picture: only the gap in revs can reveal the lost change.
    let settings = ws_relay::RelaySettings {
        poll_interval: Duration::from_secs(60),
        ..relay_settings()
    };
    let relay = app.relay(settings).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let m = app.send_to_chat(&alice, group, "one").await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    let silent = app.silent_twin().await;
    let (_, lost) = silent
        .patch(
            &format!("/chat/message/{}", m["id"]),
            &alice,
            json!({"text": "lost edit"}),
        )
        .await;
    let live = app.send_to_chat(&alice, group, "two").await;
    let frames = bob_ws.frames(CHANGES, 2, WAIT).await;
    assert_eq!(frames[0]["message"], lost);
    assert_eq!(frames[0]["rev"], 2);
    assert_eq!(frames[1]["message"], live);
    assert_eq!(frames[1]["rev"], 3);
    assert!(relay.stats().gaps >= 1);
    bob_ws.none_within("message", QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn two_relays_and_two_api_processes_on_one_nats_deliver_everything_once_in_order() {
    let app = TestApp::spawn_with_nats().await;
    let twin = app.twin_on_nats().await;
    let (relay_a, relay_b) = (
        app.relay(relay_settings()).await,
        twin.relay(relay_settings()).await,
    );
    let users = [
        app.user("A").await,
        app.user("B").await,
        app.user("C").await,
        app.user("D").await,
    ];
    let group = app
        .group(&users[0], &[&users[1], &users[2], &users[3]])
        .await;
    // Members spread over both relays, with no stickiness: B has a device on each.
    let mut on_a = vec![
        (1, WsClient::connect(relay_a.addr, &users[1].token).await),
        (2, WsClient::connect(relay_a.addr, &users[2].token).await),
    ];
    let mut on_b = [
        (1, WsClient::connect(relay_b.addr, &users[1].token).await),
        (3, WsClient::connect(relay_b.addr, &users[3].token).await),
    ];

    // Everyone sends through either API process, changes interleaving.
    let apis = [&app, &twin];
    let load = async {
        for round in 0..6 {
            let rounds = users.iter().enumerate().map(|(i, user)| {
                let api = apis[(i + round) % 2];
                async move { churn(api, user, group, 1, &format!("{i}.{round}")).await }
            });
            futures::future::join_all(rounds).await;
        }
    };
    let mut replicas: Vec<Replica> = (0..4).map(|_| Replica::default()).collect();
    load.await;
    let rev = app.chat_rev(group).await;
    for (i, (_, ws)) in on_a.iter_mut().chain(on_b.iter_mut()).enumerate() {
        until_rev(ws, &mut replicas[i], group, rev).await;
    }
    for replica in &replicas {
        replica.assert_matches(&app, &users[0], group).await;
    }

    // Relay A dies under load: its clients resume on relay B with nothing lost or repeated.
    let more = async {
        for round in 6..10 {
            let rounds = users.iter().enumerate().map(|(i, user)| {
                let api = apis[(i + round) % 2];
                async move { churn(api, user, group, 1, &format!("{i}.{round}")).await }
            });
            futures::future::join_all(rounds).await;
        }
    };
    // Each moved client resumes as its first frame, as the protocol asks (and app.js does).
    let resume_from: Vec<i64> = replicas.iter().map(Replica::last_rev).collect();
    let failover = async {
        relay_a.stop().await;
        let mut moved = Vec::new();
        for (i, (user, mut ws)) in on_a.drain(..).enumerate() {
            assert_eq!(ws.close_code(WAIT).await, 1012);
            let mut ws = WsClient::connect(relay_b.addr, &users[user].token).await;
            ws.send(json!({"type": "resume", "revs": {group.to_string(): resume_from[i]}}))
                .await;
            moved.push((i, ws));
        }
        moved
    };
    let ((), moved) = tokio::join!(more, failover);
    on_a.extend(moved);
    let rev = app.chat_rev(group).await;
    for (i, (_, ws)) in on_a.iter_mut().chain(on_b.iter_mut()).enumerate() {
        until_rev(ws, &mut replicas[i], group, rev).await;
    }
    for replica in &replicas {
        replica.assert_matches(&app, &users[0], group).await;
    }
    relay_b.stop().await;
}
