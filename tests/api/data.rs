//! The data tools: `windi demo`, `windi generate` and `windi check`.

use reqwest::StatusCode;
use serde_json::json;
use windi::generate::{GENERATED_PASSWORD, Options};
use windi_tests::TestApp;

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_demo_builds_the_seed_scenario_and_a_rerun_changes_nothing() {
    let app = TestApp::spawn().await;
    let first = windi::demo::run(windi::app(app.state.clone()))
        .await
        .unwrap();
    assert_eq!(first.new_messages, 7);
    let counts = (
        count(&app, "users").await,
        count(&app, "chats").await,
        count(&app, "messages").await,
    );
    assert_eq!(counts, (3, 2, 7));

    let again = windi::demo::run(windi::app(app.state.clone()))
        .await
        .unwrap();
    assert_eq!(again.new_messages, 0);
    assert_eq!(again.group_chat, first.group_chat);
    assert_eq!(
        (
            count(&app, "users").await,
            count(&app, "chats").await,
            count(&app, "messages").await
        ),
        counts
    );

    // The logins it prints work, and the read marks are in place.
    let alice = &first.logins[0];
    let token = app.login(alice.email, alice.password).await;
    let (status, history) = app
        .call(
            reqwest::Method::GET,
            &format!("/chat/history/{}", first.group_chat),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3]["text"], "Great — standup tomorrow at 10.");
    assert_eq!(history[3]["read"], true, "Bob and Carol read the group");
    assert!(windi::check::run(&app.db.pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn generated_data_passes_the_invariant_checks_and_serves_like_live_data() {
    let app = TestApp::spawn().await;
    // Live data first: generation must coexist with it, never replace it.
    let demo = windi::demo::run(windi::app(app.state.clone()))
        .await
        .unwrap();
    let options = Options {
        users: 300,
        chats: 200,
        messages: 20_000,
        progress: false,
        ..Options::default()
    };
    let report = windi::generate::run(&app.db.pool, &options).await.unwrap();
    assert_eq!(
        (report.users, report.chats, report.messages),
        (300, 200, 20_000)
    );
    assert_eq!(count(&app, "messages").await, 20_007);
    assert_eq!(windi::check::run(&app.db.pool).await.unwrap(), vec![]);

    // A generated user logs in and reads a generated chat through the API.
    let token = app
        .login(&report.first_user_email, GENERATED_PASSWORD)
        .await;
    let (_, chats) = app
        .call(reqwest::Method::GET, "/chat/list", Some(&token), None)
        .await;
    let busiest = chats
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|c| c["last_seq"].as_i64().unwrap())
        .expect("user0 is in some chat")
        .clone();
    let last_seq = busiest["last_seq"].as_i64().unwrap();
    let (status, page) = app
        .call(
            reqwest::Method::GET,
            &format!(
                "/chat/history/{}?before_seq={}&limit=50",
                busiest["id"],
                last_seq + 1
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<i64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    let expected_len = last_seq.min(50);
    assert_eq!(
        seqs,
        ((last_seq - expected_len + 1)..=last_seq).collect::<Vec<_>>()
    );

    // Live sends continue the generated seqs without a gap.
    let (status, sent) = app
        .call(
            reqwest::Method::POST,
            "/chat/message",
            Some(&token),
            Some(json!({"chat_id": busiest["id"], "text": "live after generate"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["seq"], last_seq + 1);
    assert_eq!(
        sent["rev"],
        last_seq + 1,
        "a generated chat's rev is its last_seq"
    );
    assert_eq!(windi::check::run(&app.db.pool).await.unwrap(), vec![]);

    // Live changes of every other kind keep the invariants too, each one: the message is edited,
    // reacted to and deleted; Alice adds the generated user to her group, then removes them.
    let message = format!("/chat/message/{}", sent["id"]);
    let reaction = format!("{message}/reactions/%F0%9F%91%8D");
    let user0: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(&report.first_user_email)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let alice = app
        .login(demo.logins[0].email, demo.logins[0].password)
        .await;
    let members = format!("/chat/group/{}/members", demo.group_chat);
    let changes = [
        (
            &token,
            reqwest::Method::PATCH,
            message.clone(),
            Some(json!({"text": "edited"})),
        ),
        (&token, reqwest::Method::PUT, reaction, None),
        (&token, reqwest::Method::DELETE, message, None),
        (
            &alice,
            reqwest::Method::POST,
            members.clone(),
            Some(json!({"user_ids": [user0]})),
        ),
        (
            &alice,
            reqwest::Method::DELETE,
            format!("{members}/{user0}"),
            None,
        ),
    ];
    for (who, method, path, body) in changes {
        let (status, answer) = app.call(method.clone(), &path, Some(who), body).await;
        assert!(status.is_success(), "{method} {path}: {status} {answer}");
        let broken = windi::check::run(&app.db.pool).await.unwrap();
        assert_eq!(broken, vec![], "after {method} {path}");
    }
}

#[tokio::test]
async fn check_reports_a_gap_and_an_out_of_range_marker() {
    let app = TestApp::spawn().await;
    windi::demo::run(windi::app(app.state.clone()))
        .await
        .unwrap();
    sqlx::query("UPDATE chats SET last_seq = last_seq + 1 WHERE kind = 'private'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE chat_members SET last_read_seq = 999 WHERE chat_id = (SELECT min(id) FROM chats WHERE kind = 'group')")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let broken: Vec<&str> = windi::check::run(&app.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|v| v.invariant)
        .collect();
    assert_eq!(
        broken,
        vec![
            "per-chat seq is 1..last_seq with no gap",
            "read markers lie within 0..last_seq"
        ]
    );
}

#[tokio::test]
async fn check_reports_each_broken_revision_invariant_in_its_chat() {
    let app = TestApp::spawn().await;
    let options = Options {
        users: 40,
        chats: 30,
        messages: 3_000,
        progress: false,
        ..Options::default()
    };
    windi::generate::run(&app.db.pool, &options).await.unwrap();
    assert_eq!(windi::check::run(&app.db.pool).await.unwrap(), vec![]);

    // Six chats with messages, one broken invariant each.
    let chats: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM chats WHERE last_seq >= 2 ORDER BY id LIMIT 6")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(chats.len(), 6);
    let breaks = [
        // A rev taken without its change row.
        "UPDATE chats SET rev = rev + 1 WHERE id = $1",
        // A message changed at a rev its chat never reached.
        "UPDATE messages SET rev = c.rev + 1 FROM chats c
         WHERE c.id = $1 AND messages.chat_id = c.id AND messages.seq = 1",
        // The creation of message 1 recorded as something else.
        "UPDATE chat_changes SET kind = 'edited' WHERE chat_id = $1 AND rev = 1",
        // The last sender's marker below their own message.
        "UPDATE chat_members SET last_read_seq = c.last_seq - 1 FROM chats c, messages m
         WHERE c.id = $1 AND m.chat_id = c.id AND m.seq = c.last_seq
           AND chat_members.chat_id = c.id AND chat_members.user_id = m.sender_id",
        // A tombstone that kept its text.
        "UPDATE messages SET deleted_at = now() WHERE chat_id = $1 AND seq = 2",
        // A join at a rev the chat has not reached.
        "UPDATE chat_members SET joined_rev = c.rev + 1 FROM chats c
         WHERE c.id = $1 AND chat_members.chat_id = c.id",
    ];
    for (sql, chat) in breaks.iter().zip(&chats) {
        let done = sqlx::query(*sql)
            .bind(chat)
            .execute(&app.db.pool)
            .await
            .unwrap();
        assert!(done.rows_affected() > 0, "{sql}");
    }

    let broken: Vec<(&str, Vec<i64>)> = windi::check::run(&app.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.invariant, v.examples))
        .collect();
    assert_eq!(
        broken,
        vec![
            (
                "per-chat rev is 1..rev in the change log with no gap",
                vec![chats[0]]
            ),
            (
                "a message's rev lies within created_rev..the chat's rev",
                vec![chats[1]]
            ),
            (
                "each message has its 'message' change at created_rev, and each such change its message",
                vec![chats[2]]
            ),
            (
                "no member has a message of their own above their read marker",
                vec![chats[3]]
            ),
            ("a deleted message's text is empty", vec![chats[4]]),
            (
                "a member joined with the chat (rev 0) or by their own 'member_joined' change",
                vec![chats[5]]
            ),
        ]
    );
}

/// id, kind, last_seq, rev, messages, messages off rev = created_rev = seq, 'message' changes,
/// members at the chat's last message who sent it, distinct send times.
type TailChat = (i64, String, i64, i64, i64, i64, i64, i64, i64);

#[tokio::test]
async fn the_long_tail_adds_chats_of_exactly_the_asked_size_with_the_send_paths_invariants() {
    let app = TestApp::spawn().await;
    let options = Options {
        users: 50,
        chats: 20,
        messages: 1_000,
        tail_chats: 2,
        // Far above what the spread of 1,000 messages over 20 chats gives any one chat.
        tail_messages: 30_000,
        progress: false,
        ..Options::default()
    };
    let report = windi::generate::run(&app.db.pool, &options).await.unwrap();
    assert_eq!((report.chats, report.messages), (22, 61_000));
    assert_eq!(windi::check::run(&app.db.pool).await.unwrap(), vec![]);

    // The tail: two groups, each with last_seq = rev = 30,000 messages, rev = created_rev = seq
    // on every one, one change per message, and each sender's marker at or past their own last
    // message (the last message's sender exactly at it).
    let tail: Vec<TailChat> = sqlx::query_as(
        "SELECT c.id, c.kind, c.last_seq, c.rev,
                (SELECT count(*) FROM messages m WHERE m.chat_id = c.id),
                (SELECT count(*) FROM messages m WHERE m.chat_id = c.id
                   AND (m.rev <> m.seq OR m.created_rev <> m.seq)),
                (SELECT count(*) FROM chat_changes ch WHERE ch.chat_id = c.id AND ch.kind = 'message'),
                (SELECT count(*) FROM chat_members cm JOIN messages m
                   ON m.chat_id = cm.chat_id AND m.seq = c.last_seq AND m.sender_id = cm.user_id
                   WHERE cm.chat_id = c.id AND cm.last_read_seq = c.last_seq),
                (SELECT count(DISTINCT created_at) FROM messages m WHERE m.chat_id = c.id)
         FROM chats c WHERE c.last_seq >= 30000 ORDER BY c.id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(tail.len(), 2, "two chats of the long tail: {tail:?}");
    for (id, kind, last_seq, rev, messages, off_rev, changes, sender_at_last, times) in tail {
        assert_eq!(
            (
                kind.as_str(),
                last_seq,
                rev,
                messages,
                off_rev,
                changes,
                sender_at_last
            ),
            ("group", 30_000, 30_000, 30_000, 0, 30_000, 1),
            "chat {id}"
        );
        // Spread over time, not piled up at one instant.
        assert!(times > 29_000, "chat {id}: {times} distinct times");
    }
    // The regular chats keep their share: the tail comes on top.
    let regular: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(last_seq), 0)::bigint FROM chats WHERE last_seq < 30000",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(regular, 1_000);
}

#[tokio::test]
async fn the_readme_walk_through_and_the_demo_can_share_one_database() {
    // README's curl walk-through first (its accounts and passwords, as written there), then
    // `windi demo`: the demo's accounts are its own, so neither refuses the other's logins.
    let app = TestApp::spawn().await;
    for (name, email, password) in [
        ("Alice", "alice@example.com", "secret-alice"),
        ("Bob", "bob@example.com", "secret-bob1"),
    ] {
        let (status, body) = app
            .call(
                reqwest::Method::POST,
                "/auth/register",
                None,
                Some(json!({"name": name, "email": email, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let demo = windi::demo::run(windi::app(app.state.clone()))
        .await
        .unwrap();
    for login in &demo.logins {
        assert_ne!(login.email, "alice@example.com");
        assert_ne!(login.email, "bob@example.com");
        app.login(login.email, login.password).await;
    }
    app.login("alice@example.com", "secret-alice").await;
}
