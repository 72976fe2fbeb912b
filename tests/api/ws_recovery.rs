//! Recovery in proportion to changes (issue 18): the relay finds what lost its event by reading
//! the feed ordered by commit, so a poll costs O(changes since the last one) whatever it
//! serves, and one catch-up read serves every socket of a chat that missed the same change.
//!
//! Changes are committed through [`TestApp::silent_twin`], whose events reach no relay: what
//! reaches a socket came from the poller.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use serde_json::json;
use windi_shared::store::{chats, members};
use windi_tests::{
    PASSWORD, TestApp, TestDb, TestUser, eventually, relay_settings,
    ws::{Received, WsClient},
};

const WAIT: Duration = Duration::from_secs(15);
/// Queries a poll sends at most when nothing fills a page: the horizon, then one per feed
/// (changes, memberships, read markers, ended sessions) when the horizon moved, which other
/// databases' transactions on a shared server also make it do.
const PER_POLL: u64 = 5;
/// relay_settings() polls every 200 ms: the bound is that plus a few queries, with a margin
/// for a loaded machine.
const POLL_BOUND: Duration = Duration::from_millis(1500);

/// Connects and resumes every chat at its current rev, as a client that is up to date does.
async fn connect(
    app: &TestApp,
    relay: std::net::SocketAddr,
    user: &TestUser,
    chats: &[i64],
) -> WsClient {
    let mut ws = WsClient::connect(relay, &user.token).await;
    let mut revs = serde_json::Map::new();
    for &chat in chats {
        revs.insert(chat.to_string(), json!(app.chat_rev(chat).await));
    }
    ws.send(json!({"type": "resume", "revs": revs})).await;
    ws
}

#[tokio::test]
async fn a_change_whose_event_was_lost_reaches_a_connected_socket_within_the_poll_bound() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let mut bob_ws = connect(&app, relay.addr, &bob, &[group]).await;
    let silent = app.silent_twin().await;
    let before = relay.stats();

    let sent = silent.send_to_chat(&alice, group, "lost event").await;
    let committed = std::time::Instant::now();
    let got = bob_ws.messages(1, WAIT).await;
    let latency = committed.elapsed();

    assert_eq!(got[0]["message"], sent);
    assert!(latency < POLL_BOUND, "took {latency:?}");
    let after = relay.stats();
    assert!(after.nudges > before.nudges, "{after:?}");
    assert!(after.feed_rows > before.feed_rows, "{after:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_read_marker_whose_event_was_lost_reaches_a_connected_socket_within_the_poll_bound() {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let message = app.send_to_chat(&alice, group, "read me").await;
    let mut alice_ws = connect(&app, relay.addr, &alice, &[group]).await;
    let silent = app.silent_twin().await;
    let before = relay.stats();

    let (status, _) = silent
        .mark_read(&bob, message["id"].as_i64().unwrap())
        .await;
    assert!(status.is_success(), "{status}");
    let committed = std::time::Instant::now();
    // (The resume may repeat markers that moved at the rev it resumed from: Alice's own.)
    let read = loop {
        let read = alice_ws.expect("read", WAIT).await;
        if read["user_id"] == bob.id {
            break read;
        }
    };
    let latency = committed.elapsed();

    assert_eq!(
        (
            read["chat_id"].clone(),
            read["user_id"].clone(),
            read["last_read_seq"].clone()
        ),
        (json!(group), json!(bob.id), message["seq"].clone())
    );
    assert!(latency < POLL_BOUND, "took {latency:?}");
    assert!(relay.stats().markers_recovered > before.markers_recovered);
    // Once: a marker the relay has passed on is not passed on again.
    loop {
        match alice_ws.next(Duration::from_millis(600)).await {
            Received::Frame(f) if f["type"] == "read" && f["user_id"] == bob.id => {
                panic!("Bob's marker again: {f}")
            }
            Received::Frame(_) => continue,
            Received::Silent => break,
            other => panic!("the connection ended while waiting for silence: {other:?}"),
        }
    }
    relay.stop().await;
}

/// Transaction ids are handed out in start order: a transaction that took its id first and
/// commits last must not be skipped by a feed that has already read later ids.
#[tokio::test]
async fn a_change_committed_after_a_later_transaction_is_still_found() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let early = app.group(&alice, &[&bob]).await;
    let late = app.group(&alice, &[&bob]).await;
    let mut bob_ws = connect(&app, relay.addr, &bob, &[early, late]).await;
    let silent = app.silent_twin().await;

    // The slow transaction takes its id (and the chat's lock) first…
    let mut slow = app.db.pool.begin().await.unwrap();
    let slow_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *slow)
        .await
        .unwrap();
    chats::lock(&mut *slow, early).await.unwrap();
    // …another one, with a later id, commits a change of another chat…
    silent.send_to_chat(&alice, late, "committed first").await;
    let later_xid: i64 = sqlx::query_scalar(
        "SELECT xid::text::bigint FROM chat_changes WHERE chat_id = $1 ORDER BY rev DESC LIMIT 1",
    )
    .bind(late)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(later_xid > slow_xid, "the race was not set up");
    // Several polls pass while the slow one is open.
    let polls = relay.stats().polls;
    eventually(WAIT, "two polls", || async {
        relay.stats().polls >= polls + 2
    })
    .await;
    // …and the slow one writes its change and commits last, publishing nothing.
    let added = members::add(&mut *slow, early, &[carol.id], "member", true)
        .await
        .unwrap();
    assert_eq!(added.len(), 1);
    slow.commit().await.unwrap();
    let committed = std::time::Instant::now();

    let frames = bob_ws.frames(&["message", "member"], 2, WAIT).await;
    let latency = committed.elapsed();
    let by_chat = |chat: i64| frames.iter().find(|f| f["chat_id"] == chat).cloned();
    assert_eq!(by_chat(late).unwrap()["message"]["text"], "committed first");
    let member = by_chat(early).expect("the slow transaction's change arrived");
    assert_eq!(
        (member["change"].clone(), member["user_id"].clone()),
        (json!("joined"), json!(carol.id))
    );
    assert!(latency < POLL_BOUND, "took {latency:?}");
    relay.stop().await;
}

/// Transaction ids are shared by every database of a server: a transaction left open in
/// another one (another deployment, another test) must not hold this database's feed back.
#[tokio::test]
async fn a_transaction_open_in_another_database_does_not_delay_the_feed() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let mut bob_ws = connect(&app, relay.addr, &bob, &[group]).await;
    let silent = app.silent_twin().await;

    let elsewhere = TestDb::new().await;
    let mut open = elsewhere.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    let sent = silent.send_to_chat(&alice, group, "not held back").await;
    let committed = std::time::Instant::now();
    assert_eq!(bob_ws.messages(1, WAIT).await[0]["message"], sent);
    assert!(
        committed.elapsed() < POLL_BOUND,
        "{:?}",
        committed.elapsed()
    );
    open.rollback().await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_membership_change_whose_event_was_lost_is_reconciled_within_the_poll_bound() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let leaving = app.group(&alice, &[&bob]).await;
    let mut bob_ws = connect(&app, relay.addr, &bob, &[leaving]).await;
    let silent = app.silent_twin().await;

    // A new group takes no row in the change log: only `member_rev` says Bob is in it.
    let (status, created) = silent
        .post(
            "/chat/group",
            &alice,
            json!({"name": "Lost news", "participant_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let committed = std::time::Instant::now();
    let frame = bob_ws.expect("chat", WAIT).await;
    assert_eq!(frame["chat"]["id"], created["chat_id"]);
    // Found by the `member_rev` feed (the removal below may also come as a change of the chat).
    assert!(relay.stats().reconciles >= 1, "{:?}", relay.stats());
    assert!(
        committed.elapsed() < POLL_BOUND,
        "{:?}",
        committed.elapsed()
    );

    let (status, _) = silent
        .delete(&format!("/chat/group/{leaving}/members/{}", bob.id), &alice)
        .await;
    assert_eq!(status, 204);
    let committed = std::time::Instant::now();
    let frame = bob_ws.expect("chat_removed", WAIT).await;
    assert_eq!(frame["chat_id"], leaving);
    assert!(
        committed.elapsed() < POLL_BOUND,
        "{:?}",
        committed.elapsed()
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_ended_session_whose_event_was_lost_closes_its_socket_and_no_other() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let silent = app.silent_twin().await;
    let alice = app.user("Alice").await;
    let phone = app.login(&alice.email, PASSWORD).await;
    let laptop = app.login(&alice.email, PASSWORD).await;
    let mut phone_ws = WsClient::connect(relay.addr, &phone).await;
    let mut laptop_ws = WsClient::connect(relay.addr, &laptop).await;

    let (status, _) = silent
        .call(reqwest::Method::POST, "/auth/logout", Some(&phone), None)
        .await;
    assert_eq!(status, 204);
    let ended = std::time::Instant::now();
    assert_eq!(phone_ws.close_code(WAIT).await, 4001);
    assert!(ended.elapsed() < POLL_BOUND, "{:?}", ended.elapsed());
    // The other session's socket lives on.
    assert!(matches!(
        laptop_ws.next(Duration::from_millis(600)).await,
        Received::Silent | Received::Frame(_)
    ));
    relay.stop().await;
}

#[tokio::test]
async fn a_poll_reads_only_what_changed_however_many_chats_users_and_sessions_it_serves() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // 2,000 groups with a message each, written straight into Postgres as the API would
    // (after the relay started, so the feed reads them once).
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
    eventually(WAIT, "the feed read the 2,000 changes", || async {
        relay.stats().feed_rows >= 2000
    })
    .await;
    // 2,000 chats routed, and a dozen users and sessions connected.
    let mut sockets = vec![connect(&app, relay.addr, &bob, &[last]).await];
    sockets.push(WsClient::connect(relay.addr, &alice.token).await);
    for i in 0..10 {
        let user = app.user(&format!("Idle{i}")).await;
        sockets.push(WsClient::connect(relay.addr, &user.token).await);
    }

    let before = relay.stats();
    eventually(WAIT, "five polls", || async {
        relay.stats().polls >= before.polls + 5
    })
    .await;
    let idle = relay.stats();
    assert_eq!(
        idle.feed_rows, before.feed_rows,
        "nothing changed: {idle:?}"
    );
    // One query for the horizon, and one per feed when it moved (plus a poll under way at
    // either end of the window).
    let polls = idle.polls - before.polls;
    let queries = idle.poll_queries - before.poll_queries;
    assert!(
        queries <= PER_POLL * (polls + 1),
        "{queries} queries in {polls} polls"
    );

    let silent = app.silent_twin().await;
    let sent = silent.send_to_chat(&alice, last, "one change").await;
    assert_eq!(sockets[0].messages(1, WAIT).await[0]["message"], sent);
    // The message's change, and the sender's read marker that sending moved: two feeds of one
    // poll, so the message can arrive while that poll still reads the markers. Wait for both,
    // then a whole poll more, which must read nothing.
    eventually(WAIT, "the feed read the message and the marker", || async {
        relay.stats().feed_rows >= idle.feed_rows + 2
    })
    .await;
    let read_both = relay.stats().polls;
    eventually(WAIT, "two polls more", || async {
        relay.stats().polls >= read_both + 2
    })
    .await;
    let changed = relay.stats();
    assert_eq!(changed.feed_rows, idle.feed_rows + 2, "{changed:?}");
    let polls = changed.polls - idle.polls;
    let queries = changed.poll_queries - idle.poll_queries;
    assert!(
        queries <= PER_POLL * (polls + 1),
        "{queries} queries in {polls} polls"
    );
    relay.stop().await;
}

#[tokio::test]
async fn concurrent_catch_ups_of_one_page_share_one_read_and_keep_nothing() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    for i in 0..5 {
        app.send_to_chat(&alice, group, &format!("m{i}")).await;
    }
    // The chat is routed here (only a routed chat's reads are shared).
    let _bob_ws = connect(&app, relay.addr, &bob, &[group]).await;
    let hub = relay.hub().clone();
    let before = relay.stats();

    let pages = join_all((0..50).map(|_| {
        let hub = hub.clone();
        async move { hub.catch_up(group, 0).await.unwrap() }
    }))
    .await;
    let after = relay.stats();
    assert_eq!(
        after.catch_up_queries - before.catch_up_queries,
        1,
        "{after:?}"
    );
    assert_eq!(after.catch_up_coalesced - before.catch_up_coalesced, 49);
    assert!(pages.iter().all(|p| Arc::ptr_eq(p, &pages[0])));
    assert_eq!(pages[0].changes.len(), 5);
    assert_eq!(pages[0].rev, app.chat_rev(group).await);

    // Once read, the page is gone: the next caller reads again, even with nothing new…
    let again = hub.catch_up(group, 0).await.unwrap();
    assert_eq!(relay.stats().catch_up_queries - before.catch_up_queries, 2);
    assert!(!Arc::ptr_eq(&again, &pages[0]));
    // …and sees what came since.
    app.send_to_chat(&alice, group, "m5").await;
    let again = hub.catch_up(group, 0).await.unwrap();
    assert_eq!(relay.stats().catch_up_queries - before.catch_up_queries, 3);
    assert_eq!(again.changes.len(), 6);
    relay.stop().await;
}

/// Once the connection reads through `Hub::catch_up` (issue 18), a lost event in a group costs
/// one read on the relay, not one per socket.
#[tokio::test]
async fn sockets_of_one_chat_missing_the_same_event_cause_one_catch_up_query() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let alice = app.user("Alice").await;
    let mut members = Vec::new();
    for i in 0..12 {
        members.push(app.user(&format!("Member{i}")).await);
    }
    let group = app.group(&alice, &members.iter().collect::<Vec<_>>()).await;
    let mut sockets = Vec::new();
    for member in &members {
        sockets.push(connect(&app, relay.addr, member, &[group]).await);
    }
    // Everyone is live: a published message reaches every socket.
    app.send_to_chat(&alice, group, "live").await;
    for ws in &mut sockets {
        ws.messages(1, WAIT).await;
    }
    let before = relay.stats();

    let silent = app.silent_twin().await;
    let sent = silent.send_to_chat(&alice, group, "lost event").await;
    for ws in &mut sockets {
        assert_eq!(ws.messages(1, WAIT).await[0]["message"], sent);
    }
    let after = relay.stats();
    let queries = after.catch_up_queries - before.catch_up_queries;
    let coalesced = after.catch_up_coalesced - before.catch_up_coalesced;
    assert_eq!(queries, 1, "{after:?}");
    assert_eq!(coalesced, members.len() as u64 - 1, "{after:?}");
    relay.stop().await;
}
