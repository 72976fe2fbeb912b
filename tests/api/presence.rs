//! Presence over HTTP (`GET /users/presence`, `/chat/list`'s `presence`, `/users/me/privacy`),
//! with relays played through their store functions on the real database: a relay's beat, its
//! users' connections opening and closing, a relay that stops beating, and its reaping.

use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_shared::store::presence as relays;
use windi_tests::{TestApp, TestUser};

/// `viewer`'s answer for `ids`: (user_id, status, last_seen) in order.
async fn presence(app: &TestApp, viewer: &TestUser, ids: &[i64]) -> Vec<(i64, String, Value)> {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let (status, body) = app
        .get(&format!("/users/presence?ids={}", ids.join(",")), viewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["user_id"].as_i64().unwrap(),
                p["status"].as_str().unwrap().to_owned(),
                p["last_seen"].clone(),
            )
        })
        .collect()
}

fn at(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn presence_follows_connections_on_live_relays_and_a_dead_relay_leaves_no_one_online() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    app.send_to_user(&alice, &bob, "hi").await;
    let db = &app.db.pool;

    // Never connected: offline, never seen. Carol shares no chat with Alice: left out.
    assert_eq!(
        presence(&app, &alice, &[bob.id, carol.id, 999_999]).await,
        [(bob.id, "offline".to_owned(), Value::Null)]
    );

    assert!(relays::beat(db, "relay-1").await.unwrap(), "a new relay");
    relays::connected(db, "relay-1", &[bob.id]).await.unwrap();
    let shown = presence(&app, &alice, &[bob.id]).await;
    assert_eq!(shown[0].1, "online");
    assert!((chrono::Utc::now() - at(&shown[0].2)).num_seconds().abs() < 5);
    // Away only while online.
    relays::set_away(db, bob.id, true).await.unwrap();
    assert_eq!(presence(&app, &alice, &[bob.id]).await[0].1, "away");
    relays::set_away(db, bob.id, false).await.unwrap();

    // The last connection closes: offline, last seen then.
    relays::disconnected(db, "relay-1", &[bob.id])
        .await
        .unwrap();
    let shown = presence(&app, &alice, &[bob.id]).await;
    assert_eq!(shown[0].1, "offline");
    assert!((chrono::Utc::now() - at(&shown[0].2)).num_seconds().abs() < 5);

    // A relay that stops beating: past the expiry its users read offline, with no one
    // cleaning up, last seen at its last beat.
    assert!(relays::beat(db, "relay-2").await.unwrap());
    relays::connected(db, "relay-2", &[bob.id, alice.id])
        .await
        .unwrap();
    assert_eq!(presence(&app, &alice, &[bob.id]).await[0].1, "online");
    // (Bob's last disconnect an hour back, so the relay's beat is the latest sign of him.)
    sqlx::query("UPDATE users SET last_seen_at = now() - interval '1 hour' WHERE id = $1;")
        .bind(bob.id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE relays SET heartbeat_at = now() - interval '16 seconds' WHERE id = $1")
        .bind("relay-2")
        .execute(db)
        .await
        .unwrap();
    let shown = presence(&app, &alice, &[bob.id]).await;
    assert_eq!(shown[0].1, "offline", "the bound: {shown:?}");
    let beat = at(&shown[0].2);
    let ago = (chrono::Utc::now() - beat).num_seconds();
    assert!(
        (15..25).contains(&ago),
        "last seen at the dead relay's last beat: {shown:?}"
    );
    // Still online on another relay: online.
    relays::connected(db, "relay-1", &[bob.id]).await.unwrap();
    assert!(!relays::beat(db, "relay-1").await.unwrap(), "a known relay");
    assert_eq!(presence(&app, &alice, &[bob.id]).await[0].1, "online");
    relays::disconnected(db, "relay-1", &[bob.id])
        .await
        .unwrap();

    // Reaped once, whoever asks; its users told; a beat after that is a new relay's.
    let reaped = relays::reap(db).await.unwrap();
    assert_eq!(reaped, {
        let mut both = vec![alice.id, bob.id];
        both.sort_unstable();
        both
    });
    assert!(relays::reap(db).await.unwrap().is_empty(), "once");
    let shown = presence(&app, &alice, &[bob.id]).await;
    assert_eq!(shown[0].1, "offline");
    assert!(
        at(&shown[0].2) >= beat,
        "never earlier than the beat: {shown:?}"
    );
    assert!(
        relays::beat(db, "relay-2").await.unwrap(),
        "back from the dead: it must write its users again"
    );
}

#[tokio::test]
async fn nobody_hides_presence_both_ways_and_the_chat_list_shows_a_private_peers() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let private = app.send_to_user(&alice, &bob, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let group = app.group(&alice, &[&bob, &carol]).await;
    let db = &app.db.pool;
    relays::beat(db, "relay-1").await.unwrap();
    relays::connected(db, "relay-1", &[bob.id]).await.unwrap();

    let entry = |list: &Value, id: i64| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    let (_, list) = app.get("/chat/list", &alice).await;
    let peer = &entry(&list, private)["presence"];
    assert_eq!(
        (peer["user_id"].as_i64(), peer["status"].as_str()),
        (Some(bob.id), Some("online"))
    );
    assert!(
        entry(&list, group)["presence"].is_null(),
        "groups have none"
    );

    let (status, privacy) = app.get("/users/me/privacy", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        privacy,
        json!({"presence": "contacts", "read_receipts": true})
    );
    let (status, privacy) = app
        .patch("/users/me/privacy", &bob, json!({"presence": "nobody"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{privacy}");
    assert_eq!(
        privacy,
        json!({"presence": "nobody", "read_receipts": true})
    );
    assert!(
        presence(&app, &alice, &[bob.id]).await.is_empty(),
        "hidden from contacts"
    );
    assert!(presence(&app, &carol, &[bob.id]).await.is_empty());
    assert!(
        presence(&app, &bob, &[alice.id, carol.id]).await.is_empty(),
        "and sees no one's"
    );
    let (_, list) = app.get("/chat/list", &alice).await;
    assert!(entry(&list, private)["presence"].is_null());
    // Carol still sees Alice, who hides nothing.
    assert_eq!(presence(&app, &carol, &[alice.id]).await[0].1, "offline");

    for (body, field) in [
        (json!({"presence": "friends"}), "presence"),
        (json!({"read_receipts": "no"}), "read_receipts"),
        (json!({"visible": false}), "visible"),
    ] {
        let (status, answer) = app.patch("/users/me/privacy", &bob, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let many: Vec<String> = (1..=201).map(|i| i.to_string()).collect();
    for (query, words) in [
        ("ids=", "at least one"),
        ("ids=1,abc", "\"abc\" is not a user id"),
        (&*format!("ids={}", many.join(",")), "more than 200"),
        ("", "ids"),
    ] {
        let (status, body) = app.get(&format!("/users/presence?{query}"), &alice).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(words),
            "{query}: {body}"
        );
    }
}

/// The relays themselves, over real sockets: a user is online from their first socket on any
/// relay until their last closes; a relay that stops says goodbye at once; a relay that
/// crashes (no goodbye, no more beats) leaves its users online no longer than the expiry.
#[tokio::test]
async fn sockets_on_any_relay_make_a_user_online_and_a_crashed_relay_leaves_no_one_online() {
    use std::time::{Duration, Instant};
    use windi_shared::domain::presence::EXPIRY;
    use windi_tests::{eventually, relay_settings, ws::WsClient};

    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    app.group(&alice, &[&bob, &carol]).await;
    let (one, two) = (
        app.relay(relay_settings()).await,
        app.relay(relay_settings()).await,
    );
    let status = |user: i64| {
        let (app, alice) = (&app, &alice);
        async move {
            presence(app, alice, &[user])
                .await
                .first()
                .map(|p| p.1.clone())
                .unwrap()
        }
    };
    const SOON: Duration = Duration::from_secs(5);

    let bob_phone = WsClient::connect(one.addr, &bob.token).await;
    eventually(SOON, "Bob online", || async {
        status(bob.id).await == "online"
    })
    .await;
    let bob_laptop = WsClient::connect(two.addr, &bob.token).await;
    let carols = WsClient::connect(one.addr, &carol.token).await;
    eventually(SOON, "Carol online", || async {
        status(carol.id).await == "online"
    })
    .await;
    // Bob's phone goes; his laptop on the other relay keeps him online once relay one has
    // written that he left it.
    drop(bob_phone);
    let rows_of = |relay: String| {
        let db = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT user_id FROM presence_connections WHERE relay_id = $1 ORDER BY user_id",
            )
            .bind(relay)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    eventually(SOON, "relay one wrote Bob's leaving", || {
        rows_of(one.relay_id().to_owned()).then(|rows| async move { rows == [carol.id] })
    })
    .await;
    assert_eq!(rows_of(two.relay_id().to_owned()).await, [bob.id]);
    assert_eq!(status(bob.id).await, "online", "still on relay two");

    // A relay that stops says goodbye: Carol is offline at once, not after the expiry.
    let stopped = Instant::now();
    one.stop().await;
    drop(carols);
    eventually(SOON, "Carol offline after a stop", || async {
        status(carol.id).await == "offline"
    })
    .await;
    assert!(stopped.elapsed() < EXPIRY, "{:?}", stopped.elapsed());

    // A relay that crashes: its rows stay and its last beat is fresh, so Bob reads online
    // until the beat is older than the expiry, and offline after, with no one cleaning up.
    let crashed = Instant::now();
    two.crash();
    drop(bob_laptop);
    assert_eq!(status(bob.id).await, "online", "no goodbye from a crash");
    eventually(
        EXPIRY + Duration::from_secs(8),
        "Bob offline within the expiry after the crash",
        || async { status(bob.id).await == "offline" },
    )
    .await;
    let after = crashed.elapsed();
    assert!(
        after <= EXPIRY + Duration::from_secs(6),
        "the bound is the expiry after the last beat (≤ 5 s before the crash): {after:?}"
    );
    assert!(
        after >= Duration::from_secs(5),
        "offline by the expiry, not a goodbye: {after:?}"
    );
}

/// `presence` frames over real sockets: the people one shares a chat with, batched (at most a
/// frame per 2 s, each user once in their latest state, only changes), never strangers,
/// none for who hides their own; and a relay that crashes with a user on it: the others' relay
/// reaps it and tells them, within the expiry.
#[tokio::test]
async fn presence_frames_are_batched_changes_of_contacts_and_a_crashed_relays_users_go_offline() {
    use std::time::{Duration, Instant};
    use windi_shared::domain::presence::{EXPIRY, FRAME_EVERY, HEARTBEAT};
    use windi_tests::{
        relay_settings,
        ws::{Received, WsClient},
    };

    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave, eve) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
        app.user("Eve").await,
    );
    app.group(&alice, &[&bob, &carol, &eve]).await;
    let (status, _) = app
        .patch("/users/me/privacy", &eve, json!({"presence": "nobody"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (one, two, three) = (
        app.relay(relay_settings()).await,
        app.relay(relay_settings()).await,
        app.relay(relay_settings()).await,
    );
    let mut alices = WsClient::connect(one.addr, &alice.token).await;
    let mut eves = WsClient::connect(one.addr, &eve.token).await;

    // Every presence frame Alice gets for `wait`, with when it came.
    async fn frames(ws: &mut WsClient, wait: Duration) -> Vec<(Instant, Value)> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            match ws
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Received::Frame(f) if f["type"] == "presence" => out.push((Instant::now(), f)),
                Received::Frame(_) => {}
                Received::Silent => return out,
                other => panic!("the connection ended: {other:?}"),
            }
        }
    }
    // The latest state of each user in these frames.
    fn latest(frames: &[(Instant, Value)]) -> std::collections::BTreeMap<i64, String> {
        let mut out = std::collections::BTreeMap::new();
        for (_, frame) in frames {
            for p in frame["presence"].as_array().unwrap() {
                out.insert(
                    p["user_id"].as_i64().unwrap(),
                    p["status"].as_str().unwrap().to_owned(),
                );
            }
        }
        out
    }

    // Bob (relay two), Dave (a stranger) connect; Carol comes and goes five times, ending
    // connected: Alice hears of Bob and Carol online, never of Dave, in frames 2 s apart.
    // Alice's frames are read as they come, by a task of their own, so each is timed on
    // arrival.
    let reading = tokio::spawn(async move {
        let seen = frames(&mut alices, Duration::from_secs(8)).await;
        (alices, seen)
    });
    let bobs = WsClient::connect(two.addr, &bob.token).await;
    let _daves = WsClient::connect(one.addr, &dave.token).await;
    for _ in 0..5 {
        drop(WsClient::connect(three.addr, &carol.token).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let carols = WsClient::connect(three.addr, &carol.token).await;
    let (mut alices, seen) = reading.await.unwrap();
    assert!(!seen.is_empty(), "no presence frame");
    let now = latest(&seen);
    assert_eq!(
        now.get(&bob.id).map(String::as_str),
        Some("online"),
        "{seen:?}"
    );
    assert_eq!(
        now.get(&carol.id).map(String::as_str),
        Some("online"),
        "{seen:?}"
    );
    assert!(!now.contains_key(&dave.id), "a stranger: {seen:?}");
    assert!(!now.contains_key(&eve.id), "who hides: {seen:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= FRAME_EVERY - Duration::from_millis(100),
            "frames {gap:?} apart"
        );
    }
    for (_, frame) in &seen {
        let ids: Vec<i64> = frame["presence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["user_id"].as_i64().unwrap())
            .collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids, unique, "each user once a frame: {frame}");
    }
    // Nothing changes: nothing more comes (and the socket is still open: `frames` panics on
    // a close).
    assert!(frames(&mut alices, Duration::from_secs(3)).await.is_empty());
    // Eve hides hers, so she sees no one's.
    assert!(
        frames(&mut eves, Duration::from_millis(200))
            .await
            .is_empty()
    );

    // Relay three stops with Carol on it: its goodbye reaches Alice on relay one at once,
    // not after the expiry.
    let stopped = Instant::now();
    three.stop().await;
    drop(carols);
    let mut gone = false;
    while !gone && stopped.elapsed() < EXPIRY / 2 {
        let got = frames(&mut alices, Duration::from_secs(1)).await;
        gone = latest(&got).get(&carol.id).map(String::as_str) == Some("offline");
    }
    assert!(
        gone,
        "Carol's relay stopped; Alice was not told within {:?}",
        EXPIRY / 2
    );

    // Relay two crashes with Bob on it: relay one reaps it once its beat is older than the
    // expiry, and tells Alice.
    let crashed = Instant::now();
    two.crash();
    drop(bobs);
    let deadline = EXPIRY + HEARTBEAT + FRAME_EVERY + Duration::from_secs(3);
    let mut offline = None;
    while crashed.elapsed() < deadline && offline.is_none() {
        let got = frames(&mut alices, Duration::from_secs(1)).await;
        if latest(&got).get(&bob.id).map(String::as_str) == Some("offline") {
            offline = Some(crashed.elapsed());
        }
    }
    let after = offline.expect("Bob's crash never reached Alice as offline");
    assert!(
        after >= Duration::from_secs(5),
        "by the expiry, not a goodbye: {after:?}"
    );
    one.stop().await;
}

/// The client's `away` frame: stored, shown as `away` while online (over HTTP and in the
/// contacts' `presence` frames), and cleared by `away: false`; a malformed one is refused with
/// an error frame and the connection stays open.
#[tokio::test]
async fn an_away_frame_shows_the_user_away_to_contacts_until_they_are_back() {
    use std::time::Duration;
    use windi_tests::{relay_settings, ws::WsClient};
    const SOON: Duration = Duration::from_secs(6);

    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    app.group(&alice, &[&bob]).await;
    let one = app.relay(relay_settings()).await;
    let mut alices = WsClient::connect(one.addr, &alice.token).await;
    let mut bobs = WsClient::connect(one.addr, &bob.token).await;
    // The status of Bob that Alice's frames tell, waiting past his coming online.
    async fn bob_shown(ws: &mut WsClient, bob: i64, want: &str) {
        loop {
            let frame = ws.expect("presence", SOON).await;
            let mine = frame["presence"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["user_id"] == bob)
                .cloned();
            if mine.is_some_and(|p| p["status"] == want) {
                return;
            }
        }
    }
    bob_shown(&mut alices, bob.id, "online").await;

    bobs.send(json!({"type": "away", "away": true})).await;
    bob_shown(&mut alices, bob.id, "away").await;
    assert_eq!(presence(&app, &alice, &[bob.id]).await[0].1, "away");

    bobs.send(json!({"type": "away"})).await;
    let refused = bobs.expect("error", SOON).await;
    assert_eq!(refused["code"], "bad_frame", "{refused}");

    bobs.send(json!({"type": "away", "away": false})).await;
    bob_shown(&mut alices, bob.id, "online").await;
    assert_eq!(presence(&app, &alice, &[bob.id]).await[0].1, "online");
    one.stop().await;
}

/// The same over NATS (as deployed): relays on one NATS tell each other's users.
#[tokio::test]
async fn presence_frames_cross_relays_over_nats() {
    use std::time::Duration;
    use windi_tests::{relay_settings, ws::WsClient};

    let app = TestApp::spawn_with_nats().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    app.group(&alice, &[&bob]).await;
    let (one, two) = (
        app.relay(relay_settings()).await,
        app.relay(relay_settings()).await,
    );
    let mut alices = WsClient::connect(one.addr, &alice.token).await;
    let _bobs = WsClient::connect(two.addr, &bob.token).await;
    let frame = alices.expect("presence", Duration::from_secs(6)).await;
    assert_eq!(frame["presence"][0]["user_id"], bob.id, "{frame}");
    assert_eq!(frame["presence"][0]["status"], "online", "{frame}");
    one.stop().await;
    two.stop().await;
}
