//! The authorization matrix: every authenticated route × {the group's owner (and the message's
//! sender), a member, a non-member, anonymous, a bad token, an expired token, a deleted user},
//! each with the status it must answer, in one table. Routes that end the caller's session
//! (logout, logout-all, password, deleting the account) are proved in `sessions`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windi_tests::{PASSWORD, TEST_SECRET, TestApp};

/// The caller of a row, in the table's column order.
const ACTORS: [&str; 7] = [
    "owner",
    "member",
    "non-member",
    "anonymous",
    "bad token",
    "expired token",
    "deleted user",
];

fn expired(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["exp"] = json!(now - 60);
    windi_shared::service::jwt_crypto::install();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_the_table_says() {
    let app = TestApp::spawn().await;
    let (owner, member, stranger, dave, gone) = (
        app.user("Owner").await,
        app.user("Member").await,
        app.user("Stranger").await,
        app.user("Dave").await,
        app.user("Gone").await,
    );
    let group = app.group(&owner, &[&member]).await;
    let m = app.send_to_chat(&owner, group, "the owner's message").await["id"].clone();
    let m2 = app.send_to_chat(&owner, group, "to be deleted").await["id"].clone();
    // A user whose account is deleted, with the token they had.
    let (status, _) = app
        .call(
            Method::DELETE,
            "/auth/me",
            Some(&gone.token),
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let tokens: [Option<String>; 7] = [
        Some(owner.token.clone()),
        Some(member.token.clone()),
        Some(stranger.token.clone()),
        None,
        Some("not-a-token".into()),
        Some(expired(&owner.token)),
        Some(gone.token.clone()),
    ];
    let (ok, created, none, forbidden, missing, refused) = (200, 201, 204, 403, 404, 401);
    let r = refused;
    let emoji = "%F0%9F%91%8D";
    // (method, path, body, [owner, member, non-member, anonymous, bad, expired, deleted]);
    // each row's calls run in column order.
    let table: Vec<(Method, String, Option<Value>, [u16; 7])> = vec![
        (
            Method::GET,
            "/auth/me".into(),
            None,
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::PATCH,
            "/auth/me".into(),
            Some(json!({"name": "Renamed"})),
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::GET,
            "/auth/sessions".into(),
            None,
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::GET,
            "/users/search?q=Da".into(),
            None,
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::PUT,
            format!("/users/{}/block", dave.id),
            None,
            [none, none, none, r, r, r, r],
        ),
        (
            Method::GET,
            "/users/blocked".into(),
            None,
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::DELETE,
            format!("/users/{}/block", dave.id),
            None,
            [none, none, none, r, r, r, r],
        ),
        (
            Method::GET,
            "/chat/list".into(),
            None,
            [ok, ok, ok, r, r, r, r],
        ),
        (
            Method::GET,
            format!("/chat/history/{group}"),
            None,
            [ok, ok, missing, r, r, r, r],
        ),
        (
            Method::GET,
            format!("/chat/changes/{group}"),
            None,
            [ok, ok, missing, r, r, r, r],
        ),
        (
            Method::POST,
            "/chat/message".into(),
            Some(json!({"chat_id": group, "text": "hello"})),
            [created, created, missing, r, r, r, r],
        ),
        (
            Method::PATCH,
            format!("/chat/message/{m}/read"),
            None,
            [ok, ok, missing, r, r, r, r],
        ),
        (
            Method::PATCH,
            format!("/chat/message/{m}"),
            Some(json!({"text": "edited"})),
            [ok, forbidden, missing, r, r, r, r],
        ),
        (
            Method::PUT,
            format!("/chat/message/{m}/reactions/{emoji}"),
            None,
            [ok, ok, missing, r, r, r, r],
        ),
        (
            Method::DELETE,
            format!("/chat/message/{m}/reactions/{emoji}"),
            None,
            [ok, ok, missing, r, r, r, r],
        ),
        (
            Method::DELETE,
            format!("/chat/message/{m2}"),
            None,
            [ok, forbidden, missing, r, r, r, r],
        ),
        (
            Method::POST,
            format!("/chat/group/{group}/members"),
            Some(json!({"user_ids": [dave.id]})),
            [ok, forbidden, missing, r, r, r, r],
        ),
        (
            Method::DELETE,
            format!("/chat/group/{group}/members/{}", dave.id),
            None,
            [none, forbidden, missing, r, r, r, r],
        ),
        (
            Method::POST,
            "/chat/group".into(),
            Some(json!({"name": "mine", "participant_ids": []})),
            [created, created, created, r, r, r, r],
        ),
    ];
    let mut mismatches = Vec::new();
    for (method, path, body, expected) in &table {
        for (i, token) in tokens.iter().enumerate() {
            let (status, answer) = app
                .call(method.clone(), path, token.as_deref(), body.clone())
                .await;
            if status.as_u16() != expected[i] {
                mismatches.push(format!(
                    "{method} {path} as {}: {status}, expected {} ({answer})",
                    ACTORS[i], expected[i]
                ));
            }
            if status.is_server_error() {
                mismatches.push(format!("{method} {path} as {}: a 5xx", ACTORS[i]));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
