//! Receipts: `GET /chat/message/{id}/receipts` (who of the other members a message reached and
//! who read it, with when), the `read` flag and read-receipt privacy over HTTP; and over real
//! sockets, `delivered` and `read` frames reaching the sender, converging after a lost event
//! and after a relay killed with a user on it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_shared::store::receipts;
use windi_tests::{TestApp, TestUser};

/// The user ids of one list of a receipts answer, in its order, each with a time.
fn who(receipts: &Value, list: &str) -> Vec<i64> {
    receipts[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list}: {receipts}"))
        .iter()
        .map(|r| {
            let at: chrono::DateTime<chrono::Utc> = r["at"].as_str().unwrap().parse().unwrap();
            assert!(at <= chrono::Utc::now(), "{r}");
            r["user_id"].as_i64().unwrap()
        })
        .collect()
}

async fn receipts_of(app: &TestApp, viewer: &TestUser, message_id: i64) -> Value {
    let (status, body) = app
        .get(&format!("/chat/message/{message_id}/receipts"), viewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn read_flag(app: &TestApp, viewer: &TestUser, chat_id: i64, message_id: i64) -> bool {
    app.history(viewer, chat_id, "")
        .await
        .iter()
        .find(|m| m["id"] == message_id)
        .unwrap()["read"]
        .as_bool()
        .unwrap()
}

async fn share_reads(app: &TestApp, user: &TestUser, on: bool) {
    let (status, body) = app
        .patch("/users/me/privacy", user, json!({"read_receipts": on}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn receipts_name_who_received_and_read_a_message_and_hidden_reads_stay_hidden() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, dave, eve) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
        app.user("Dave").await,
        app.user("Eve").await,
    );
    let chat = app.group(&alice, &[&bob, &carol]).await;
    let m1 = app.send_to_chat(&alice, chat, "one").await;
    let (id, seq) = (m1["id"].as_i64().unwrap(), m1["seq"].as_i64().unwrap());

    // Nothing yet; the sender is never listed (her own send marks it read for her).
    let none = receipts_of(&app, &alice, id).await;
    assert_eq!(
        (who(&none, "delivered"), who(&none, "read")),
        (vec![], vec![])
    );

    // Carol's device is handed it (the relay's write), Bob reads it: reading is delivery.
    receipts::record_delivered(&app.db.pool, &[(chat, carol.id, seq)])
        .await
        .unwrap();
    assert_eq!(app.mark_read(&bob, id).await.0, StatusCode::OK);
    let both = receipts_of(&app, &alice, id).await;
    let mut delivered = who(&both, "delivered");
    delivered.sort_unstable();
    assert_eq!(delivered, [bob.id, carol.id]);
    assert_eq!(who(&both, "read"), [bob.id]);
    assert!(
        !read_flag(&app, &alice, chat, id).await,
        "Carol has not read it"
    );

    // Dave joins later: not one of those it was sent to, though his marker starts past it.
    let (status, body) = app
        .post(
            &format!("/chat/group/{chat}/members"),
            &alice,
            json!({"user_ids": [dave.id]}),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let later = receipts_of(&app, &alice, id).await;
    assert!(!who(&later, "delivered").contains(&dave.id), "{later}");

    // Not a member, or no such message: 404, as for the message itself.
    for (viewer, message) in [(&eve, id), (&alice, id + 1_000_000)] {
        let (status, body) = app
            .get(&format!("/chat/message/{message}/receipts"), viewer)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "not_found", "{body}");
    }

    // Carol reads too: read by all. Then Bob turns read receipts off: he leaves `read` (his
    // delivery stays), the flag counts him as not having read, and he sees no one's reads.
    assert_eq!(app.mark_read(&carol, id).await.0, StatusCode::OK);
    assert!(read_flag(&app, &alice, chat, id).await);
    share_reads(&app, &bob, false).await;
    let hidden = receipts_of(&app, &alice, id).await;
    assert_eq!(who(&hidden, "read"), [carol.id]);
    assert!(who(&hidden, "delivered").contains(&bob.id));
    assert!(
        !read_flag(&app, &alice, chat, id).await,
        "Bob's read is hidden"
    );
    let bobs_view = receipts_of(&app, &bob, id).await;
    assert_eq!(who(&bobs_view, "read"), Vec::<i64>::new(), "{bobs_view}");
    assert!(!who(&bobs_view, "delivered").is_empty(), "{bobs_view}");

    // A member who joins while hiding is hidden from the start.
    let frank = app.user("Frank").await;
    share_reads(&app, &frank, false).await;
    let (status, _) = app
        .post(
            &format!("/chat/group/{chat}/members"),
            &alice,
            json!({"user_ids": [frank.id]}),
        )
        .await;
    assert!(status.is_success());
    let m2 = app.send_to_chat(&alice, chat, "two").await;
    let m2 = m2["id"].as_i64().unwrap();
    for reader in [&bob, &carol, &dave, &frank] {
        assert_eq!(app.mark_read(reader, m2).await.0, StatusCode::OK);
    }
    share_reads(&app, &bob, true).await;
    let m2_read = receipts_of(&app, &alice, m2).await;
    let mut readers = who(&m2_read, "read");
    readers.sort_unstable();
    assert_eq!(readers, [bob.id, carol.id, dave.id], "{m2_read}");
    assert!(
        !read_flag(&app, &alice, chat, m2).await,
        "Frank's read is hidden"
    );

    // Bob shares again: his read of m1 is back, at the time he read it.
    let back = receipts_of(&app, &alice, id).await;
    assert_eq!(who(&back, "read"), [bob.id, carol.id]);
    assert_eq!(back["read"][0]["at"], both["read"][0]["at"]);
}

/// The next `read` frame about someone other than `me` (a send moves the sender's own marker,
/// and every device of theirs is told).
async fn others_read(ws: &mut windi_tests::ws::WsClient, me: i64) -> Value {
    loop {
        let frame = ws.expect("read", Duration::from_secs(5)).await;
        if frame["user_id"] != me {
            return frame;
        }
    }
}

/// Over real sockets: `delivered` frames reach the sender's devices (not another member's),
/// `read` frames too unless either side hides reads; a `message.delivered` event that is
/// lost (a relay whose bus reaches no one) still reaches the sender through the poller, and a
/// relay killed before it wrote its receipts is covered by the member's next delivery.
#[tokio::test]
async fn delivered_and_read_frames_reach_the_sender_and_converge_after_a_lost_event_and_a_kill() {
    use windi_tests::{relay_settings, ws::WsClient};
    const SOON: Duration = Duration::from_secs(5);

    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let chat = app.group(&alice, &[&bob, &carol]).await;
    let one = app.relay(relay_settings()).await;
    let mut alices = WsClient::connect(one.addr, &alice.token).await;
    let mut bobs = WsClient::connect(one.addr, &bob.token).await;
    let mut carols = WsClient::connect(one.addr, &carol.token).await;

    // Bob's and Carol's devices are handed m1: Alice hears of both within a write (1 s).
    let m1 = app.send_to_chat(&alice, chat, "one").await;
    let seq1 = m1["seq"].as_i64().unwrap();
    bobs.messages(1, SOON).await;
    carols.messages(1, SOON).await;
    let mut heard: Vec<i64> = alices
        .frames(&["delivered"], 2, SOON)
        .await
        .iter()
        .map(|f| {
            assert_eq!(f["chat_id"], chat, "{f}");
            assert_eq!(f["delivered_seq"], seq1, "{f}");
            f["user_id"].as_i64().unwrap()
        })
        .collect();
    heard.sort_unstable();
    assert_eq!(heard, [bob.id, carol.id]);
    // Carol sent nothing: of the receipts dispatched on this relay with Alice's, none reached
    // her; her next frame of either kind is the next message.
    app.send_to_chat(&alice, chat, "two").await;
    let next = carols.frames(&["delivered", "message"], 1, SOON).await;
    assert_eq!(next[0]["type"], "message", "{next:?}");
    bobs.messages(1, SOON).await;
    alices.frames(&["delivered"], 2, SOON).await;

    // Bob reads: Alice (and Carol) get his `read`.
    let m2_id = next[0]["message"]["id"].as_i64().unwrap();
    assert_eq!(app.mark_read(&bob, m2_id).await.0, StatusCode::OK);
    let read = others_read(&mut alices, alice.id).await;
    assert_eq!(read["user_id"], bob.id, "{read}");

    // A lost event: Bob moves to a relay whose bus reaches no other relay. It writes his
    // receipt; its `message.delivered` never leaves; relay one's poller finds the move.
    drop(bobs);
    let twin = app.silent_twin().await;
    let lost = twin.relay(relay_settings()).await;
    let mut bobs = WsClient::connect(lost.addr, &bob.token).await;
    let recovered_before = one.stats().delivered_recovered;
    let m3 = app.send_to_chat(&alice, chat, "three").await;
    let seq3 = m3["seq"].as_i64().unwrap();
    bobs.messages(1, SOON).await;
    carols.messages(1, SOON).await;
    let mut from_bob = None;
    while from_bob.is_none() {
        let f = alices.expect("delivered", SOON).await;
        if f["user_id"] == bob.id {
            from_bob = Some(f);
        }
    }
    assert_eq!(from_bob.unwrap()["delivered_seq"], seq3);
    assert!(
        one.stats().delivered_recovered > recovered_before,
        "the event was not lost: the test did not test the poller"
    );

    // A relay killed with Bob on it, right after handing him m4: whether or not it wrote his
    // receipt, his next delivery (on relay one) covers m4.
    let m4 = app.send_to_chat(&alice, chat, "four").await;
    bobs.messages(1, SOON).await;
    lost.crash();
    drop(bobs);
    let mut bobs = WsClient::connect(one.addr, &bob.token).await;
    let m5 = app.send_to_chat(&alice, chat, "five").await;
    bobs.messages(1, SOON).await;
    let seq5 = m5["seq"].as_i64().unwrap();
    let mut covered = false;
    while !covered {
        let f = alices.expect("delivered", SOON).await;
        covered = f["user_id"] == bob.id && f["delivered_seq"] == seq5;
    }
    let m4_receipts = receipts_of(&app, &alice, m4["id"].as_i64().unwrap()).await;
    assert!(
        who(&m4_receipts, "delivered").contains(&bob.id),
        "{m4_receipts}"
    );

    // Bob turns read receipts off: his reads reach his own devices only, so Alice's next
    // `read` is Carol's.
    share_reads(&app, &bob, false).await;
    let m5_id = m5["id"].as_i64().unwrap();
    assert_eq!(app.mark_read(&bob, m5_id).await.0, StatusCode::OK);
    let own = bobs.expect("read", SOON).await;
    assert_eq!(own["user_id"], bob.id, "{own}");
    assert_eq!(app.mark_read(&carol, m5_id).await.0, StatusCode::OK);
    let read = others_read(&mut alices, alice.id).await;
    assert_eq!(
        read["user_id"], carol.id,
        "Bob's hidden read reached Alice: {read}"
    );
    one.stop().await;
}
