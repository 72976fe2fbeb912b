//! Bad input gets a 4xx JSON `{"detail", "code"}` that names the problem — never a 500.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_shared::domain::model::{MAX_BODY_BYTES, MAX_TEXT_CHARS};
use windi_tests::{TestApp, read};

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    let detail = body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {body}"));
    assert!(body["code"].as_str().is_some(), "no code: {body}");
    assert!(
        detail.contains(mentions),
        "detail {detail:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_named_in_4xx_answers() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let raw = |body: &'static str| {
        app.http
            .post(app.url("/chat/message"))
            .bearer_auth(&alice.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, body) = read(raw("{\"text\": ").await.unwrap()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "EOF while parsing");
    assert_eq!(body["code"], "malformed_json");

    let (status, body) = read(
        raw(r#"{"recipient_id": "two", "text": "x"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "recipient_id",
    );

    let (status, body) = read(raw(r#"{"recipient_id": 2}"#).await.unwrap()).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "text");

    // serde would read a struct from an array of its fields in order; a body is an object.
    for array in ["[]", "[2, \"hello\"]", "null"] {
        let (status, body) = read(raw(array).await.unwrap()).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected a JSON object",
        );
    }

    let plain = app
        .http
        .post(app.url("/chat/message"))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let (status, body) = read(plain).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type",
    );

    for (text, mentions) in [
        (json!(""), "text"),
        (json!("   "), "text"),
        (json!("a\u{0}b"), "NUL"),
        (json!("x".repeat(MAX_TEXT_CHARS + 1)), "4096"),
    ] {
        let (status, body) = app
            .post(
                "/chat/message",
                &alice,
                json!({"recipient_id": bob.id, "text": text}),
            )
            .await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, mentions);
    }
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "chat_id": 1, "text": "x"}),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "not both");
    let (status, body) = app
        .post("/chat/message", &alice, json!({"text": "x"}))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "recipient_id",
    );
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "text": "x", "dedup_key": "k".repeat(129)}),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "dedup_key");

    // Nothing half-written: no chat or message came out of all that.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let huge = format!(
        r#"{{"recipient_id": 2, "text": "{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let response = app
        .http
        .post(app.url("/chat/message"))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "length limit exceeded",
    );
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn registration_rules_are_explicit() {
    let app = TestApp::spawn().await;
    let register = |body: Value| app.call(Method::POST, "/auth/register", None, Some(body));
    for (body, field) in [
        (
            json!({"name": "", "email": "a@b.co", "password": "long enough"}),
            "name",
        ),
        (
            json!({"name": "A", "email": "not-an-email", "password": "long enough"}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@b.co", "password": "short"}),
            "password",
        ),
        (
            json!({"name": "A\u{0}", "email": "a@b.co", "password": "long enough"}),
            "name",
        ),
        (
            json!({"name": "A", "email": "a\u{0}@b.co", "password": "long enough"}),
            "email",
        ),
        (json!({"name": "A", "password": "long enough"}), "email"),
        (
            json!({"name": "x".repeat(101), "email": "a@b.co", "password": "long enough"}),
            "name",
        ),
    ] {
        let (status, response) = register(body).await;
        assert_error(status, &response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
}

#[tokio::test]
async fn bad_paths_and_unknown_routes_answer_json() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (status, body) = app.get("/chat/history/abc", &alice).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "Cannot parse `abc`");
    assert_eq!(body["code"], "invalid_path");
    let (status, body) = app
        .get("/chat/history/99999999999999999999999", &alice)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "Cannot parse `99999999999999999999999`",
    );
    let (status, body) = app.get("/no/such/route", &alice).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "/no/such/route");
    let (status, body) = app
        .call(
            Method::PATCH,
            "/chat/message/abc/read",
            Some(&alice.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "Cannot parse `abc`");
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"username": "x"})),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "password");
}

/// Found by `scripts/fuzz.sh`: the contract said any string was a name or an email, so clients
/// generated from `/openapi.json` could send what windi then refused. It now states the rules
/// windi enforces (an email format; a name pattern that excludes blank names and control
/// characters), and what the pattern excludes is refused for users and groups alike.
#[tokio::test]
async fn the_contract_states_the_name_and_email_rules_that_registration_and_groups_enforce() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["RegisterUser"]["properties"]["email"]["format"],
        "email"
    );
    let pattern = &schemas["RegisterUser"]["properties"]["name"]["pattern"];
    assert!(
        pattern.as_str().is_some_and(|p| p.contains(r"\s")),
        "no name pattern: {pattern}"
    );
    assert_eq!(
        &schemas["CreateGroup"]["properties"]["name"]["pattern"],
        pattern
    );

    let alice = app.user("Alice").await;
    for (i, name) in ["   ", "\u{a0}\u{3000}", "Al\u{1}ce", "B\u{85}ob", "\u{7f}"]
        .into_iter()
        .enumerate()
    {
        let (status, body) = app
            .call(
                Method::POST,
                "/auth/register",
                None,
                Some(
                    json!({"name": name, "email": format!("n{i}@b.co"), "password": "long enough"}),
                ),
            )
            .await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "name");
        let (status, body) = app
            .post(
                "/chat/group",
                &alice,
                json!({"name": name, "participant_ids": []}),
            )
            .await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "name");
    }
    for (body, field) in [
        (
            json!({"name": "A", "email": "no-at-sign", "password": "long enough"}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@nodot", "password": "long enough"}),
            "email",
        ),
    ] {
        let (status, response) = app
            .call(Method::POST, "/auth/register", None, Some(body))
            .await;
        assert_error(status, &response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"name": " Анна  Мария ", "email": "anna@b.co", "password": "long enough"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "Анна  Мария");
}

/// JSON Schema's `integer` is any number without a fractional part, so every integer field of
/// a body takes `7.0` as 7 (clients that keep numbers as doubles send it so), and `7.5` is a
/// 422 naming the field.
#[tokio::test]
async fn every_integer_field_takes_a_whole_number_written_with_a_fraction() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let double = |id: i64| json!(id as f64 + 0.0);
    // `json!(2.0)` must stay a float on the wire, or this proves nothing.
    assert_eq!(double(2).to_string(), "2.0");

    let (status, sent) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": double(bob.id), "text": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let chat = sent["chat_id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            "/chat/message",
            &bob,
            json!({"chat_id": double(chat), "text": "re", "reply_to": double(sent["id"].as_i64().unwrap())}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reply_to"], sent["id"], "{body}");

    let (status, group) = app
        .post(
            "/chat/group",
            &alice,
            json!({"name": "Doubles", "participant_ids": [double(bob.id)]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let path = format!("/chat/group/{}/members", group["id"]);
    let (status, body) = app
        .post(&path, &alice, json!({"user_ids": [double(carol.id)]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["participant_ids"], json!([alice.id, bob.id, carol.id]));

    for (body, field) in [
        (json!({"recipient_id": 2.5, "text": "x"}), "recipient_id"),
        (
            json!({"chat_id": chat as f64 + 0.5, "text": "x"}),
            "chat_id",
        ),
        (
            json!({"chat_id": chat, "text": "x", "reply_to": 1.5}),
            "reply_to",
        ),
        (
            json!({"chat_id": chat, "text": "x", "attachments": [1.5]}),
            "attachments",
        ),
    ] {
        let (status, answer) = app.post("/chat/message", &alice, body).await;
        assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let (status, answer) = app
        .post(&path, &alice, json!({"user_ids": [carol.id as f64 + 0.5]}))
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "user_ids",
    );
}
