//! The FastAPI original's README, run against windi: its six example requests exactly as that
//! README writes them (bodies, form encoding, paths), with the one setting they need,
//! `PASSWORD_MIN_LENGTH=6`, since their password is `secret`. A client written from that README
//! must keep working; where windi answers differently on purpose (201 for what was made), the
//! README's "Coming from the FastAPI original" says so.

use reqwest::{
    Method, StatusCode,
    header::{AUTHORIZATION, CONTENT_TYPE},
};
use serde_json::{Value, json};
use windi_shared::domain::validate::PasswordRules;
use windi_tests::{PASSWORD, TestApp, TestUser, read};

/// Request 1 of the original README, byte for byte.
const REGISTER_ALICE: &str = r#"{
  "name": "Alice",
  "email": "alice@example.com",
  "password": "secret"
}"#;

/// The fields of the original's answers, per kind (its shapes, which windi keeps; the README
/// itself shows only the login's).
const USER_FIELDS: [&str; 3] = ["id", "name", "email"];
const MESSAGE_FIELDS: [&str; 6] = ["id", "chat_id", "sender_id", "text", "timestamp", "read"];
const GROUP_FIELDS: [&str; 4] = ["id", "name", "creator_id", "participant_ids"];

#[tokio::test]
async fn the_original_projects_readme_examples_run_as_written() {
    let app = TestApp::spawn_adjusted(|state| {
        state.with_password_rules(PasswordRules::with_min_chars(6).unwrap())
    })
    .await;

    // 1. Register: on a fresh database Alice is user 1, as the later examples assume.
    let (status, alice) = send(
        &app,
        Method::POST,
        "/auth/register",
        None,
        json_body(REGISTER_ALICE),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    assert_fields(&alice, &USER_FIELDS);
    assert_eq!(alice["id"], 1);
    assert_eq!(alice["email"], "alice@example.com");

    // Examples 3 and 4 name users 2 and 3.
    let bob = register(&app, "Bob", "bob@example.com").await;
    let carol = register(&app, "Carol", "carol@example.com").await;
    assert_eq!((bob, carol), (2, 3));

    // 2. Log in with the form, `@` unescaped as the README writes it.
    let form = (
        "application/x-www-form-urlencoded",
        "username=alice@example.com&password=secret",
    );
    let (status, login) = send(&app, Method::POST, "/auth/login", None, Some(form)).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert!(
        login["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{login}"
    );
    assert_eq!(login["token_type"], "bearer");
    let token = login["access_token"].as_str().unwrap().to_owned();
    let alice_token = Some(token.as_str());

    // 3. The first message to Bob makes their private chat: chat 1, which example 5 reads.
    let message = r#"{
  "recipient_id": 2,
  "text": "Привет, как дела?"
}"#;
    let (status, sent) = send(
        &app,
        Method::POST,
        "/chat/message",
        alice_token,
        json_body(message),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_fields(&sent, &MESSAGE_FIELDS);
    assert_eq!(
        (&sent["chat_id"], &sent["sender_id"], &sent["text"]),
        (&json!(1), &json!(1), &json!("Привет, как дела?"))
    );

    // 4. The group; the creator is a member besides the two named.
    let group = r#"{
  "name": "Project Team",
  "participant_ids": [2, 3]
}"#;
    let (status, group) = send(
        &app,
        Method::POST,
        "/chat/group",
        alice_token,
        json_body(group),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_fields(&group, &GROUP_FIELDS);
    assert_eq!(group["name"], "Project Team");
    assert_eq!(group["participant_ids"], json!([1, 2, 3]));

    // Example 6 marks message 123 read, so it must exist in a chat of Alice's: Bob's answer in
    // chat 1. Message ids come from the table's identity; restarting it at 123 gives that id
    // with one real send, instead of 122 sends and rate limits raised for them.
    sqlx::query("ALTER TABLE messages ALTER COLUMN id RESTART WITH 123")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let bob = TestUser {
        id: bob,
        email: "bob@example.com".into(),
        token: app.login("bob@example.com", PASSWORD).await,
    };
    let answer = app.send_to_chat(&bob, 1, "Хорошо, спасибо!").await;
    assert_eq!(answer["id"], 123);

    // 5. History of chat 1, oldest first.
    let (status, history) = send(
        &app,
        Method::GET,
        "/chat/history/1?limit=50&offset=0",
        alice_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let history = history.as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 2, "{history:?}");
    history
        .iter()
        .for_each(|m| assert_fields(m, &MESSAGE_FIELDS));
    assert_eq!(history[0]["text"], "Привет, как дела?");
    assert_eq!(history[1]["id"], 123);
    assert_eq!(
        history[1]["read"], false,
        "Alice has not read Bob's answer yet"
    );

    // 6. Alice reads Bob's message: the answer is the message, now read.
    let (status, marked) = send(
        &app,
        Method::PATCH,
        "/chat/message/123/read",
        alice_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{marked}");
    assert_fields(&marked, &MESSAGE_FIELDS);
    assert_eq!(
        (&marked["id"], &marked["read"]),
        (&json!(123), &json!(true))
    );

    // The setting lowers the minimum to 6, not further, and the refusal names it.
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"name": "Dave", "email": "dave@example.com", "password": "five5"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"], "password: must be at least 6 characters");
    assert_eq!(
        contract_minimums(&app).await,
        (6, 6),
        "the contract states it too"
    );
}

/// `minLength` of the register and change-password passwords in the served `/openapi.json`.
async fn contract_minimums(app: &TestApp) -> (i64, i64) {
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    (
        schemas["RegisterUser"]["properties"]["password"]["minLength"]
            .as_i64()
            .unwrap(),
        schemas["ChangePassword"]["properties"]["new_password"]["minLength"]
            .as_i64()
            .unwrap(),
    )
}

#[tokio::test]
async fn the_original_projects_password_is_refused_under_the_default_minimum() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        &app,
        Method::POST,
        "/auth/register",
        None,
        json_body(REGISTER_ALICE),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body,
        json!({"detail": "password: must be at least 8 characters", "code": "validation_error"})
    );
    assert_eq!(contract_minimums(&app).await, (8, 8));
}

/// One request with a raw body of the given content type, as the README writes it.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&'static str, &'static str)>,
) -> (StatusCode, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some((content_type, body)) = body {
        request = request.header(CONTENT_TYPE, content_type).body(body);
    }
    read(request.send().await.unwrap()).await
}

fn json_body(body: &'static str) -> Option<(&'static str, &'static str)> {
    Some(("application/json", body))
}

/// Registers a user the later examples refer to by id; answers that id.
async fn register(app: &TestApp, name: &str, email: &str) -> i64 {
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"name": name, "email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

fn assert_fields(body: &Value, fields: &[&str]) {
    for field in fields {
        assert!(body.get(field).is_some(), "no {field:?} in {body}");
    }
}
