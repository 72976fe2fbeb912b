//! Real-time delivery through the relay: real WebSocket clients, real Postgres, and both event
//! carriers (the in-process bus and NATS) for the delivery tests.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use windi_tests::{
    Mode, TestApp, relay_settings,
    ws::{Received, WsClient, seqs},
};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

async fn members_receive_every_message_in_order(mode: Mode) {
    let app = TestApp::spawn_in(mode).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let mut alice_ws = WsClient::connect(relay.addr, &alice.token).await;
    let mut bob_phone = WsClient::connect(relay.addr, &bob.token).await;
    let mut bob_laptop = WsClient::connect(relay.addr, &bob.token).await;
    let mut carol_ws = WsClient::connect(relay.addr, &carol.token).await;

    // The first message creates the chat: both members learn of it, then get message 1.
    let first = app.send_to_user(&alice, &bob, "over HTTP").await;
    let chat = first["chat_id"].as_i64().unwrap();
    for device in [&mut bob_phone, &mut bob_laptop, &mut alice_ws] {
        let frame = device.expect("chat", WAIT).await;
        assert_eq!(frame["chat"]["id"], chat);
        let got = device.messages(1, WAIT).await;
        assert_eq!(got[0]["message"], first);
        assert_eq!(got[0]["seq"], 1);
    }

    // A send frame takes the same path as HTTP: acked, stored, delivered to every device.
    alice_ws
        .send(
            json!({"type": "send", "chat_id": chat, "text": "over WebSocket", "dedup_key": "ws-1"}),
        )
        .await;
    let ack = alice_ws.expect("ack", WAIT).await;
    assert_eq!(ack["created"], true);
    assert_eq!(ack["message"]["seq"], 2);
    assert_eq!(ack["dedup_key"], "ws-1");
    alice_ws
        .send(
            json!({"type": "send", "chat_id": chat, "text": "over WebSocket", "dedup_key": "ws-1"}),
        )
        .await;
    let replay = alice_ws.expect("ack", WAIT).await;
    assert_eq!(replay["created"], false, "same dedup path as HTTP");
    assert_eq!(replay["message"]["id"], ack["message"]["id"]);

    for i in 3..=20 {
        app.send_to_chat(&bob, chat, &format!("m{i}")).await;
    }
    for device in [&mut bob_phone, &mut bob_laptop, &mut alice_ws] {
        let got = device.messages(19, WAIT).await;
        assert_eq!(seqs(&got), (2..=20).collect::<Vec<_>>());
        assert_eq!(got[0]["message"]["text"], "over WebSocket");
        device.no_message_within(QUIET).await;
    }
    carol_ws.no_message_within(QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn members_receive_every_message_in_order_on_the_local_bus() {
    members_receive_every_message_in_order(Mode::Local).await;
}

#[tokio::test]
async fn members_receive_every_message_in_order_over_nats() {
    members_receive_every_message_in_order(Mode::Nats).await;
}

async fn a_resumed_client_gets_exactly_what_it_missed_then_live_ones(mode: Mode) {
    // 100 messages in a row: above the per-user send limit on purpose.
    let app = TestApp::spawn_unlimited(mode).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "m1").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    app.send_to_chat(&alice, chat, "m2").await;
    let got = bob_ws.messages(1, WAIT).await;
    let last_seen = got[0]["seq"].as_i64().unwrap();
    assert_eq!(last_seen, 2);
    drop(bob_ws);

    for i in 3..=102 {
        app.send_to_chat(&alice, chat, &format!("m{i}")).await;
    }
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "chats": {chat.to_string(): last_seen}}))
        .await;
    let missed = bob_ws.messages(100, WAIT).await;
    assert_eq!(seqs(&missed), (3..=102).collect::<Vec<_>>());
    assert_eq!(missed[99]["message"]["text"], "m102");

    let live = app.send_to_chat(&alice, chat, "live").await;
    let got = bob_ws.messages(1, WAIT).await;
    assert_eq!(got[0]["message"], live);
    bob_ws.no_message_within(QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_resumed_client_gets_exactly_what_it_missed_then_live_ones_on_the_local_bus() {
    a_resumed_client_gets_exactly_what_it_missed_then_live_ones(Mode::Local).await;
}

#[tokio::test]
async fn a_resumed_client_gets_exactly_what_it_missed_then_live_ones_over_nats() {
    a_resumed_client_gets_exactly_what_it_missed_then_live_ones(Mode::Nats).await;
}

async fn members_added_or_removed_while_connected(mode: Mode) {
    let app = TestApp::spawn_in(mode).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let group = app.group(&alice, &[&bob]).await;
    app.send_to_chat(&alice, group, "before carol").await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    let mut carol_ws = WsClient::connect(relay.addr, &carol.token).await;

    let (status, _) = app
        .post(
            &format!("/chat/group/{group}/members"),
            &alice,
            json!({"user_ids": [carol.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let chat = carol_ws.expect("chat", WAIT).await;
    assert_eq!(chat["chat"]["id"], group);
    let joined = bob_ws.expect("member", WAIT).await;
    assert_eq!(
        joined,
        json!({"type": "member", "chat_id": group, "user_id": carol.id, "change": "joined",
               "rev": 2, "name": "Carol"})
    );

    let welcome = app.send_to_chat(&alice, group, "welcome carol").await;
    let got = carol_ws.messages(1, WAIT).await;
    assert_eq!(
        got[0]["message"], welcome,
        "no reconnect needed, and no old history"
    );
    assert_eq!(bob_ws.messages(1, WAIT).await[0]["message"], welcome);

    let (status, _) = app
        .delete(&format!("/chat/group/{group}/members/{}", bob.id), &alice)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let removed = bob_ws.expect("chat_removed", WAIT).await;
    assert_eq!(removed["chat_id"], group);
    let after = app.send_to_chat(&alice, group, "after bob left").await;
    assert_eq!(carol_ws.messages(1, WAIT).await[0]["message"], after);
    bob_ws.no_message_within(QUIET).await;
    relay.stop().await;
}

#[tokio::test]
async fn members_added_or_removed_while_connected_on_the_local_bus() {
    members_added_or_removed_while_connected(Mode::Local).await;
}

#[tokio::test]
async fn members_added_or_removed_while_connected_over_nats() {
    members_added_or_removed_while_connected(Mode::Nats).await;
}

#[tokio::test]
async fn read_marks_and_typing_reach_the_other_members() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let message = app.send_to_user(&alice, &bob, "read me").await;
    let chat = message["chat_id"].as_i64().unwrap();
    let mut alice_ws = WsClient::connect(relay.addr, &alice.token).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    app.mark_read(&bob, message["id"].as_i64().unwrap()).await;
    // (Alice's own marker, moved by her send, may come first from the poller: a `read` frame
    // may repeat a marker the client has, which changes nothing.)
    let read = loop {
        let read = alice_ws.expect("read", WAIT).await;
        if read["user_id"] == bob.id {
            break read;
        }
    };
    assert_eq!(
        read,
        json!({"type": "read", "chat_id": chat, "user_id": bob.id, "last_read_seq": 1, "rev": 1})
    );

    bob_ws
        .send(json!({"type": "typing", "chat_id": chat}))
        .await;
    let typing = alice_ws.expect("typing", WAIT).await;
    assert_eq!(
        typing,
        json!({"type": "typing", "chat_id": chat, "user_id": bob.id, "rev": 1})
    );
    // Not echoed to the typist, and not stored.
    bob_ws.none_within("typing", QUIET).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_message_committed_without_any_publish_arrives_within_the_poll_bound() {
    let app = TestApp::spawn_with_nats().await;
    // Production timings: the bound under test is the default poll interval (1 s) plus a query.
    let settings = ws_relay::RelaySettings {
        allowed_origins: None,
        ..ws_relay::RelaySettings::default()
    };
    let relay = app.relay(settings).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "m1").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    // What a handler that died between commit and publish leaves behind.
    let silent = app.silent_twin().await;
    silent.send_to_chat(&alice, chat, "orphan").await;
    let committed = std::time::Instant::now();

    let got = bob_ws.messages(1, Duration::from_secs(5)).await;
    let latency = committed.elapsed();
    assert_eq!(got[0]["message"]["text"], "orphan");
    assert_eq!(got[0]["seq"], 2);
    // The bound is the poll interval plus one query; the margin absorbs a loaded CI machine.
    assert!(latency < Duration::from_secs(3), "took {latency:?}");
    assert!(relay.stats().nudges >= 1);
    relay.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let private = app.send_to_user(&alice, &bob, "hi").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut ws = WsClient::connect(relay.addr, &carol.token).await;
    let cases = [
        ("not json", "bad_frame"),
        (r#"{"type": "dance"}"#, "bad_frame"),
        (r#"{"no_type": 1}"#, "bad_frame"),
        (r#"{"type": "typing", "chat_id": "x"}"#, "bad_frame"),
    ];
    for (raw, code) in cases {
        ws.send_raw(Message::Text(raw.into())).await;
        let error = ws.expect("error", WAIT).await;
        assert_eq!(error["code"], code, "{raw}");
        assert!(error["detail"].as_str().unwrap().len() > 5);
    }
    ws.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(ws.expect("error", WAIT).await["code"], "bad_frame");
    // Chats the user is not in: not found, whether they exist or not.
    for frame in [
        json!({"type": "resume", "chats": {private.to_string(): 0}}),
        json!({"type": "typing", "chat_id": private}),
        json!({"type": "send", "chat_id": private, "text": "let me in"}),
        json!({"type": "resume", "chats": {"nope": 0}}),
    ] {
        ws.send(frame.clone()).await;
        let error = ws.expect("error", WAIT).await;
        assert_eq!(error["code"], "not_found", "{frame}");
    }
    ws.send(json!({"type": "send", "recipient_id": alice.id, "text": ""}))
        .await;
    let error = ws.expect("error", WAIT).await;
    assert_eq!(error["code"], "validation_error");
    // Still alive: a valid send works.
    ws.send(json!({"type": "send", "recipient_id": alice.id, "text": "hello alice"}))
        .await;
    assert_eq!(ws.expect("ack", WAIT).await["created"], true);

    // An oversized frame ends the connection with 1009.
    let huge = "x".repeat(relay_settings().max_frame_bytes + 1);
    ws.send_raw(Message::Text(huge.into())).await;
    assert_eq!(ws.close_code(WAIT).await, 1009);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    relay.stop().await;
}

#[tokio::test]
async fn the_handshake_refuses_bad_tokens_foreign_origins_and_too_many_connections() {
    let app = TestApp::spawn().await;
    let settings = ws_relay::RelaySettings {
        max_connections_per_user: 2,
        ..relay_settings()
    };
    let relay = app.relay(settings).await;
    let alice = app.user("Alice").await;
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];

    assert_eq!(
        WsClient::try_connect(relay.addr, None, None).await.err(),
        Some(401)
    );
    assert_eq!(
        WsClient::try_connect(relay.addr, Some("not-a-token"), None)
            .await
            .err(),
        Some(401)
    );
    let tampered = format!("{}x", alice.token);
    assert_eq!(
        WsClient::try_connect(relay.addr, None, Some(bearer(&tampered)))
            .await
            .err(),
        Some(401)
    );
    let mut foreign = bearer(&alice.token);
    foreign.push(("origin", "http://evil.example".into()));
    assert_eq!(
        WsClient::try_connect(relay.addr, None, Some(foreign))
            .await
            .err(),
        Some(403)
    );

    let mut allowed = bearer(&alice.token);
    allowed.push(("origin", "http://allowed.example".into()));
    let _first = WsClient::try_connect(relay.addr, None, Some(allowed))
        .await
        .unwrap();
    let _second = WsClient::connect(relay.addr, &alice.token).await;
    assert_eq!(
        WsClient::try_connect(relay.addr, Some(&alice.token), None)
            .await
            .err(),
        Some(429)
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn().await;
    let settings = ws_relay::RelaySettings {
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        ..relay_settings()
    };
    let relay = app.relay(settings).await;
    let alice = app.user("Alice").await;
    let mut ws = WsClient::connect(relay.addr, &alice.token).await;
    // The client reads nothing, so it answers no ping either.
    let started = std::time::Instant::now();
    windi_tests::eventually(
        Duration::from_secs(5),
        "the relay drops the idle client",
        || async { relay.stats().connections == 0 },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // 1001 "idle timeout" is sent; a client that then answers the queued pings on the closed
    // socket may see the reset before the close frame, so 1006 counts too. The stats above are
    // the proof that the relay dropped it.
    assert!(matches!(ws.close_code(WAIT).await, 1001 | 1006));

    // A client that reads (and so answers pings) stays connected past the timeout.
    let mut live = WsClient::connect(relay.addr, &alice.token).await;
    assert!(matches!(
        live.next(Duration::from_millis(2500)).await,
        Received::Silent
    ));
    assert_eq!(relay.stats().connections, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_its_queue_stays_bounded() {
    // A flood on purpose: above the per-user send limit.
    let app = TestApp::spawn_unlimited(Mode::Local).await;
    let settings = ws_relay::RelaySettings {
        queue_capacity: 16,
        write_timeout: Duration::from_millis(500),
        ..relay_settings()
    };
    let relay = app.relay(settings).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "start").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut slow = WsClient::connect_with_small_buffer(relay.addr, &bob.token).await;

    // ~16 KiB per message; the client never reads, so socket buffers fill and then the queue.
    let text = "😀".repeat(4000);
    let mut sent = 0;
    while relay.stats().slow_consumers == 0 {
        assert!(sent < 2000, "never detected as slow after {sent} messages");
        app.send_to_chat(&alice, chat, &text).await;
        sent += 1;
    }
    windi_tests::eventually(WAIT, "the slow connection is gone", || async {
        relay.stats().connections == 0
    })
    .await;

    // It resumes later and gets everything, in order.
    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    ws.send(json!({"type": "resume", "chats": {chat.to_string(): 1}}))
        .await;
    let got = ws.messages(sent, Duration::from_secs(30)).await;
    assert_eq!(seqs(&got), (2..=1 + sent as i64).collect::<Vec<_>>());
    // The slow client itself, reading at last, finds its connection closed: with the 1008
    // farewell when there was room to send it, else just the end of the stream.
    assert!(matches!(
        slow.close_code(Duration::from_secs(30)).await,
        1008 | 1006
    ));
    relay.stop().await;
}
