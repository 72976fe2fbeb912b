//! Forged and altered access tokens, in one table: every one is refused with the same 401 body
//! (a caller learns nothing about why), and none is a 5xx.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_tests::{TEST_SECRET, TestApp};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    windi_shared::service::jwt_crypto::install();
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// A token with this header and payload and no valid signature.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn forged_and_altered_tokens_are_all_refused_alike() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // The real claims of Alice's token, to alter one thing at a time.
    let payload = alice.token.split('.').nth(1).unwrap();
    let real: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let with = |change: Value| {
        let mut claims = real.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let hs256 = |claims: &Value| sign(Algorithm::HS256, claims, TEST_SECRET);
    let (head, _) = alice.token.rsplit_once('.').unwrap();
    let other_signature = bob.token.rsplit('.').next().unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "HS384 with the right secret",
            sign(Algorithm::HS384, &real, TEST_SECRET),
        ),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, &real, TEST_SECRET),
        ),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &real, ""),
        ),
        (
            "alg None",
            unsigned(&json!({"alg": "None", "typ": "JWT"}), &real, ""),
        ),
        ("alg NONE", unsigned(&json!({"alg": "NONE"}), &real, "")),
        ("alg nOnE", unsigned(&json!({"alg": "nOnE"}), &real, "")),
        (
            "an RS256 header",
            unsigned(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &real,
                other_signature,
            ),
        ),
        (
            "a wrong key",
            sign(
                Algorithm::HS256,
                &real,
                b"another-secret-0123456789abcdefghijklmnop",
            ),
        ),
        ("the signature stripped", format!("{head}.")),
        ("no signature part", head.to_owned()),
        (
            "the payload altered, the signature kept",
            format!(
                "{}.{}.{}",
                head.split('.').next().unwrap(),
                URL_SAFE_NO_PAD.encode(with(json!({"sub": bob.id.to_string()})).to_string()),
                alice.token.rsplit('.').next().unwrap()
            ),
        ),
        (
            "another user's signature",
            format!("{head}.{other_signature}"),
        ),
        ("no exp", hs256(&with(json!({"exp": null})))),
        (
            "expired beyond the leeway",
            hs256(&with(json!({"exp": now() - 30}))),
        ),
        (
            "not valid before a future nbf",
            hs256(&with(json!({"nbf": now() + 600}))),
        ),
        (
            "a sub that is no user",
            hs256(&with(json!({"sub": "987654"}))),
        ),
        (
            "a sub that is another user",
            hs256(&with(json!({"sub": bob.id.to_string()}))),
        ),
        (
            "a sub that is not a number",
            hs256(&with(json!({"sub": "alice"}))),
        ),
        ("no sub", hs256(&with(json!({"sub": null})))),
        ("garbage", "not.a.token".into()),
        ("empty", String::new()),
        ("huge", format!("{}.{}", alice.token, "A".repeat(40_000))),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &cases {
        let response = app
            .http
            .get(app.url("/auth/me"))
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let (_, body) = windi_tests::read(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        bodies.push((what, body));
    }
    // The real token still works, and only in the Authorization header.
    assert_eq!(app.get("/auth/me", &alice).await.0, StatusCode::OK);
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/auth/me?token={}", alice.token),
            None,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token in the query string: {body}"
    );
    bodies.push((&"in the query string", body));
    let first = &bodies[0].1;
    for (what, body) in &bodies {
        assert_eq!(body, first, "{what} answers a different body");
    }
    // Far too big for any header: refused before any handler, still a 4xx.
    let response = app
        .http
        .get(app.url("/auth/me"))
        .header("Authorization", format!("Bearer {}", "A".repeat(200_000)))
        .send()
        .await;
    if let Ok(response) = response {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let relay = app.relay(windi_tests::relay_settings()).await;
    let alice = app.user("Alice").await;
    // Alice's own token, re-signed to expire in 2 s (the server signs with the test secret).
    let payload = alice.token.split('.').nth(1).unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"] = json!(now() + 2);
    let short = sign(Algorithm::HS256, &claims, TEST_SECRET);
    let mut ws = windi_tests::ws::WsClient::connect(relay.addr, &short).await;
    let error = ws.expect("error", std::time::Duration::from_secs(8)).await;
    assert_eq!(error["code"], "token_expired", "{error}");
    assert_eq!(ws.close_code(std::time::Duration::from_secs(3)).await, 4002);
    // A fresh token connects again.
    windi_tests::ws::WsClient::connect(relay.addr, &alice.token).await;
    relay.stop().await;
}
