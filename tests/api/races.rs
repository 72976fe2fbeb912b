//! Races that the chat's row lock settles: each test hammers one and checks the invariant
//! afterwards, and shows the race was hit (both outcomes happened).

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use windi_tests::{TestApp, relay_settings, ws::WsClient};

/// `count` users made straight in Postgres (registering 1,000 through argon2 would take most
/// of a minute); they never log in.
async fn bulk_users(app: &TestApp, count: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO users (name, email, password_hash)
         SELECT 'u' || i, 'bulk' || i || '-' || md5(random()::text) || '@example.com', 'x'
         FROM generate_series(1, $1) i RETURNING id",
    )
    .bind(count)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn concurrent_adds_never_pass_the_member_cap() {
    let app = TestApp::spawn().await;
    let owner = app.user("Owner").await;
    let ids = bulk_users(&app, 1040).await;
    let (first, rest) = ids.split_at(990);
    let (status, group) = app
        .post(
            "/chat/group",
            &owner,
            json!({"name": "big", "participant_ids": first}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let chat = group["chat_id"].as_i64().unwrap();
    // 991 members; ten owners' requests of 5 new members each, at once: room for one.
    let path = format!("/chat/group/{chat}/members");
    let answers = join_all(
        rest.chunks(5)
            .map(|batch| app.post(&path, &owner, json!({"user_ids": batch}))),
    )
    .await;
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((ok, refused), (1, 9), "{answers:?}");
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_members WHERE chat_id = $1")
        .bind(chat)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(members, 996);
}

#[tokio::test]
async fn an_owner_and_the_eldest_member_leaving_at_once_leave_the_group_an_owner() {
    // Load on purpose: above the per-user limits.
    let app = TestApp::spawn_unlimited(windi_tests::Mode::Local).await;
    let (owner, eldest, a, b) = (
        app.user("Owner").await,
        app.user("Eldest").await,
        app.user("A").await,
        app.user("B").await,
    );
    for _ in 0..15 {
        let group = app.group(&owner, &[&eldest]).await;
        // A and B join later than Eldest.
        app.post(
            &format!("/chat/group/{group}/members"),
            &owner,
            json!({"user_ids": [a.id, b.id]}),
        )
        .await;
        let (owner_path, eldest_path) = (
            format!("/chat/group/{group}/members/{}", owner.id),
            format!("/chat/group/{group}/members/{}", eldest.id),
        );
        let (left_owner, left_eldest) = tokio::join!(
            app.delete(&owner_path, &owner),
            app.delete(&eldest_path, &eldest)
        );
        assert_eq!(left_owner.0, StatusCode::NO_CONTENT);
        assert_eq!(left_eldest.0, StatusCode::NO_CONTENT);
        let owners: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM chat_members WHERE chat_id = $1 AND role = 'owner'",
        )
        .bind(group)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(owners.len(), 1, "group {group} has owners {owners:?}");
        assert!(owners[0] == a.id || owners[0] == b.id);
    }
}

#[tokio::test]
async fn a_member_removed_while_sending_commits_nothing_after_the_removal() {
    let app = TestApp::spawn().await;
    let (owner, bob) = (app.user("Owner").await, app.user("Bob").await);
    let group = app.group(&owner, &[&bob]).await;
    let sends = async {
        let mut answers = Vec::new();
        for i in 0..60 {
            let (status, _) = app
                .post(
                    "/chat/message",
                    &bob,
                    json!({"chat_id": group, "text": format!("{i}")}),
                )
                .await;
            answers.push(status);
        }
        answers
    };
    let removal = async {
        // Let some of Bob's sends land first.
        windi_tests::eventually(std::time::Duration::from_secs(10), "bob sent", || async {
            app.chat_rev(group).await >= 10
        })
        .await;
        app.delete(&format!("/chat/group/{group}/members/{}", bob.id), &owner)
            .await
    };
    let (answers, (removed, _)) = tokio::join!(sends, removal);
    assert_eq!(removed, StatusCode::NO_CONTENT);
    let sent = answers
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::NOT_FOUND)
        .count();
    assert!(
        sent >= 10 && refused > 0,
        "race not hit: {sent} sent, {refused} refused"
    );
    assert_eq!(sent + refused, 60);
    let (removal_rev, after): (i64, i64) = sqlx::query_as(
        "SELECT ch.rev, (SELECT count(*) FROM messages m
                         WHERE m.chat_id = ch.chat_id AND m.sender_id = $2 AND m.rev > ch.rev)
         FROM chat_changes ch WHERE ch.chat_id = $1 AND ch.kind = 'member_left'",
    )
    .bind(group)
    .bind(bob.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        after, 0,
        "Bob committed after his removal at rev {removal_rev}"
    );
    assert_eq!(removal_rev as usize, sent + 1);
}

#[tokio::test]
async fn concurrent_connections_of_one_user_never_pass_the_cap() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let bob = app.user("Bob").await;
    let cap = relay_settings().max_connections_per_user;
    let attempts =
        join_all((0..3 * cap).map(|_| WsClient::try_connect(relay.addr, Some(&bob.token), None)))
            .await;
    let refused: Vec<u16> = attempts
        .iter()
        .filter_map(|a| a.as_ref().err().copied())
        .collect();
    let open = attempts.iter().filter(|a| a.is_ok()).count();
    assert_eq!(open, cap, "refusals: {refused:?}");
    assert!(refused.iter().all(|&s| s == 429), "{refused:?}");
    // Closing one frees its slot.
    drop(attempts);
    windi_tests::eventually(std::time::Duration::from_secs(5), "slots freed", || async {
        WsClient::try_connect(relay.addr, Some(&bob.token), None)
            .await
            .is_ok()
    })
    .await;
    relay.stop().await;
}
