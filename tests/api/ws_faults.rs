//! Delivery across failures, on real NATS servers the tests start and stop themselves (the
//! machine's shared NATS is never touched).

use std::time::Duration;

use serde_json::json;
use windi_tests::{
    PrivateNats, TestApp, relay_settings,
    ws::{WsClient, seqs},
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_nats_restart_mid_stream_loses_and_repeats_nothing() {
    let mut nats = PrivateNats::start().await;
    let app = TestApp::spawn_on_nats(&nats.url).await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "m1").await["chat_id"]
        .as_i64()
        .unwrap();
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;

    let mut sent = 1;
    for _ in 0..10 {
        sent += 1;
        app.send_to_chat(&alice, chat, &format!("m{sent}")).await;
    }
    let before = bob_ws.messages(10, WAIT).await;
    assert_eq!(seqs(&before), (2..=11).collect::<Vec<_>>());

    nats.stop();
    // Sends still succeed while the broker is down (each waits out the publish timeout).
    for _ in 0..3 {
        sent += 1;
        app.send_to_chat(&alice, chat, &format!("m{sent}")).await;
    }
    nats.restart().await;
    for _ in 0..10 {
        sent += 1;
        app.send_to_chat(&alice, chat, &format!("m{sent}")).await;
    }

    let after = bob_ws.messages(13, WAIT).await;
    assert_eq!(seqs(&after), (12..=24).collect::<Vec<_>>());
    let texts: Vec<&str> = after
        .iter()
        .map(|f| f["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "m12");
    assert_eq!(texts[12], "m24");
    bob_ws.no_message_within(Duration::from_millis(700)).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_restart_mid_stream_loses_and_repeats_nothing() {
    let nats = PrivateNats::start().await;
    let app = TestApp::spawn_on_nats(&nats.url).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let chat = app.send_to_user(&alice, &bob, "m1").await["chat_id"]
        .as_i64()
        .unwrap();

    let first_relay = app.relay(relay_settings()).await;
    let mut bob_ws = WsClient::connect(first_relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "chats": {chat.to_string(): 0}}))
        .await;
    let mut received = bob_ws.messages(1, WAIT).await;

    // Alice keeps sending while the relay goes away and another one takes over.
    let sender = {
        let base = app.base.clone();
        let token = alice.token.clone();
        tokio::spawn(async move {
            let http = windi_tests::http_client();
            for i in 2..=60 {
                let response = http
                    .post(format!("{base}/chat/message"))
                    .bearer_auth(&token)
                    .json(&json!({"chat_id": chat, "text": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    received.extend(bob_ws.messages(10, WAIT).await);
    first_relay.stop().await;
    assert_eq!(bob_ws.close_code(WAIT).await, 1012, "told to reconnect");

    let second_relay = app.relay(relay_settings()).await;
    let last_seq = received.last().unwrap()["seq"].as_i64().unwrap();
    let mut bob_ws = WsClient::connect(second_relay.addr, &bob.token).await;
    bob_ws
        .send(json!({"type": "resume", "chats": {chat.to_string(): last_seq}}))
        .await;
    sender.await.unwrap();
    received.extend(bob_ws.messages(60 - received.len(), WAIT).await);
    assert_eq!(seqs(&received), (1..=60).collect::<Vec<_>>());
    bob_ws.no_message_within(Duration::from_millis(700)).await;
    second_relay.stop().await;
}
