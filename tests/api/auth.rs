//! Sign-up, login and tokens.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::json;
use windi_shared::service::auth::{Claims, unix_now};
use windi_tests::{PASSWORD, TEST_SECRET, TestApp, read, unique};

#[tokio::test]
async fn a_registered_user_logs_in_with_a_form_and_sees_themself() {
    let app = TestApp::spawn().await;
    let email = format!("{}@example.com", unique("alice"));
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(json!({"name": "Alice", "email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["name"], "Alice");
    assert_eq!(body["email"], email.as_str());
    assert!(body.get("password").is_none() && body.get("password_hash").is_none());

    let response = app
        .http
        .post(app.url("/auth/login"))
        .form(&[
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let (status, token) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 1800);

    let (status, me) = app
        .call(
            Method::GET,
            "/auth/me",
            token["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], body["id"]);
    assert_eq!(me["email"], email.as_str());
}

#[tokio::test]
async fn login_accepts_json_with_email_or_username() {
    let app = TestApp::spawn().await;
    let user = app.user("Bob").await;
    for field in ["email", "username"] {
        let (status, body) = app
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({field: user.email.to_uppercase(), "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{field}: {body}");
        assert!(body["access_token"].as_str().is_some());
    }
}

#[tokio::test]
async fn an_email_is_taken_whatever_its_case() {
    let app = TestApp::spawn().await;
    let user = app.user("Carol").await;
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/register",
            None,
            Some(
                json!({"name": "Other", "email": user.email.to_uppercase(), "password": PASSWORD}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "email_taken");
    assert!(body["detail"].as_str().unwrap().contains("email"));
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let user = app.user("Dave").await;
    let attempt = |username: String, password: &'static str| {
        let app = &app;
        async move {
            let response = app
                .http
                .post(app.url("/auth/login"))
                .form(&[("username", username.as_str()), ("password", password)])
                .send()
                .await
                .unwrap();
            let www = response.headers().get("www-authenticate").cloned();
            let (status, body) = read(response).await;
            (status, body, www)
        }
    };
    let wrong_password = attempt(user.email.clone(), "not the password").await;
    let unknown_email = attempt("nobody@example.com".into(), "not the password").await;
    assert_eq!(wrong_password.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password, unknown_email);
    assert_eq!(wrong_password.2.unwrap(), "Bearer");
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_at_owasp_parameters() {
    let app = TestApp::spawn().await;
    let user = app.user("Erin").await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
}

fn forge(secret: &[u8], sub: &str, sid: i64, exp: u64) -> String {
    let claims = Claims {
        sub: sub.into(),
        sid,
        exp,
        iat: unix_now(),
    };
    windi_shared::service::jwt_crypto::install();
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let user = app.user("Frank").await;
    let other = app.user("Frida").await;
    let sub = user.id.to_string();
    let later = unix_now() + 600;
    let session_of = |id: i64| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT max(id) FROM sessions WHERE user_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let sid = session_of(user.id).await;

    let good = forge(TEST_SECRET, &sub, sid, later);
    let (status, _) = app.call(Method::GET, "/auth/me", Some(&good), None).await;
    assert_eq!(status, StatusCode::OK, "the forging itself must be right");

    let payload = b64url(format!(r#"{{"sub":"{sub}","exp":{later}}}"#).as_bytes());
    let alg_none = format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#));
    let wrong_signature = forge(
        b"another-secret-0123456789abcdefghijklmnop",
        &sub,
        sid,
        later,
    );
    let expired = forge(TEST_SECRET, &sub, sid, unix_now() - 120);
    windi_shared::service::jwt_crypto::install();
    let no_session = encode(
        &Header::default(),
        &json!({"sub": sub, "exp": later}),
        &EncodingKey::from_secret(TEST_SECRET).unwrap(),
    )
    .unwrap();
    let unknown_session = forge(TEST_SECRET, &sub, sid + 1000, later);
    let someone_elses_session = forge(TEST_SECRET, &sub, session_of(other.id).await, later);
    windi_shared::service::jwt_crypto::install();
    let no_exp = encode(
        &Header::default(),
        &json!({"sub": sub}),
        &EncodingKey::from_secret(TEST_SECRET).unwrap(),
    )
    .unwrap();
    for (what, token) in [
        ("alg none", alg_none.as_str()),
        ("wrong signature", &wrong_signature),
        ("expired", &expired),
        ("no exp", &no_exp),
        ("no session", &no_session),
        ("unknown session", &unknown_session),
        ("someone else's session", &someone_elses_session),
        ("garbage", "not-a-token"),
    ] {
        let (status, body) = app.call(Method::GET, "/auth/me", Some(token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["code"], "unauthorized", "{what}");
    }
    let (status, body) = app.call(Method::GET, "/chat/list", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], windi_shared::service::auth::TOKEN_REFUSED);
}

#[tokio::test]
async fn logins_in_parallel_all_succeed() {
    let app = TestApp::spawn().await;
    let user = app.user("Grace").await;
    let logins = (0..8).map(|_| app.login(&user.email, PASSWORD));
    let tokens = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(logins))
        .await
        .unwrap();
    assert!(tokens.iter().all(|t| !t.is_empty()));
}
