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
