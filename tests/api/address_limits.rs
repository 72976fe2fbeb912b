//! What windi keys by client address: which address is the client (`TRUSTED_PROXY_HOPS`), the
//! per-address budget of registrations and email searches, and the login guard's memory under
//! a flood of made-up usernames.
//!
//! Like `limits`, every test here runs on a clock it holds, so nothing refills behind its back.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};
use windi_shared::{
    AppState,
    config::LimitSettings,
    service::limits::{ADDRESS_FAILURES, FakeRelativeClock, LimitClock, Limits, LoginGuard},
};
use windi_tests::{PASSWORD, TestApp, TestUser, test_limits, unique};

/// windi with `settings` and `guard`'s login guard, counting time on `clock` alone.
async fn spawn_with(
    clock: &FakeRelativeClock,
    settings: LimitSettings,
    guard: impl FnOnce(LimitClock) -> LoginGuard,
) -> TestApp {
    let clock = LimitClock::from(clock.clone());
    TestApp::spawn_adjusted(|state| AppState {
        limits: Limits::counting_on(clock.clone(), settings),
        logins: Arc::new(guard(clock)),
        ..state
    })
    .await
}

/// Behind one proxy (`TRUSTED_PROXY_HOPS=1`) that appends the address it saw.
fn behind_one_proxy() -> LimitSettings {
    LimitSettings {
        trusted_proxy_hops: 1,
        ..test_limits()
    }
}

/// `request` with an `X-Forwarded-For` of `hops` (none when empty); its status, `Retry-After`
/// and body.
async fn send(request: RequestBuilder, hops: &str) -> (StatusCode, Option<u64>, Value) {
    let request = if hops.is_empty() {
        request
    } else {
        request.header("x-forwarded-for", hops)
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn login(app: &TestApp, email: &str, password: &str, hops: &str) -> StatusCode {
    let request = app
        .http
        .post(app.url("/auth/login"))
        .form(&[("username", email), ("password", password)]);
    send(request, hops).await.0
}

async fn register(app: &TestApp, hops: &str) -> (StatusCode, Option<u64>, Value) {
    let email = format!("{}@example.com", unique("reg"));
    let request = app
        .http
        .post(app.url("/auth/register"))
        .json(&json!({"name": "Reg", "email": email, "password": PASSWORD}));
    send(request, hops).await
}

async fn search(
    app: &TestApp,
    user: &TestUser,
    q: &str,
    hops: &str,
) -> (StatusCode, Option<u64>, Value) {
    let url = reqwest::Url::parse_with_params(&app.url("/users/search"), &[("q", q)]).unwrap();
    let request = app.http.get(url).bearer_auth(&user.token);
    send(request, hops).await
}

/// Fails logins from `hops` over made-up accounts (two each, so none reaches its own limit)
/// until the address is locked; answers how many failures that took.
async fn spray_until_locked(app: &TestApp, hops: impl Fn(u32) -> String) -> Option<u32> {
    for i in 0..ADDRESS_FAILURES + 10 {
        let email = format!("spray{}@example.com", i / 2);
        match login(app, &email, "wrong password!", &hops(i)).await {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => return Some(i),
            other => panic!("login {i}: {other}"),
        }
    }
    None
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_forwarded_clients_failures_do_not_lock_out_another() {
    let app = spawn_with(
        &FakeRelativeClock::default(),
        behind_one_proxy(),
        LoginGuard::counting_on,
    )
    .await;
    let alice = app.user("Alice").await;
    // The proxy appends the address it saw; the client may have written anything before it.
    let locked_at = spray_until_locked(&app, |i| format!("10.9.{i}.1, 203.0.113.1")).await;
    assert_eq!(
        locked_at,
        Some(ADDRESS_FAILURES),
        "203.0.113.1 was not locked"
    );
    assert_eq!(
        login(&app, &alice.email, PASSWORD, "203.0.113.2").await,
        StatusCode::OK,
        "another client behind the same proxy was locked out"
    );
    // The locked client cannot get out by writing another address before the proxy's.
    assert_eq!(
        login(&app, &alice.email, PASSWORD, "203.0.113.2, 203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a client-written hop was taken for the client"
    );
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored_so_a_client_cannot_forge_its_address() {
    let app = spawn_with(
        &FakeRelativeClock::default(),
        test_limits(),
        LoginGuard::counting_on,
    )
    .await;
    let alice = app.user("Alice").await;
    // A new made-up address for every attempt: all of them are still the TCP peer's.
    let locked_at = spray_until_locked(&app, |i| format!("203.0.{}.{}", i / 256, i % 256)).await;
    assert_eq!(
        locked_at,
        Some(ADDRESS_FAILURES),
        "the forged addresses were counted apart"
    );
    assert_eq!(
        login(&app, &alice.email, PASSWORD, "198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn registrations_past_the_per_address_limit_answer_429_with_retry_after_and_create_nothing() {
    let clock = FakeRelativeClock::default();
    let settings = LimitSettings {
        email_lookups_per_minute: 20,
        email_lookups_burst: 10,
        ..behind_one_proxy()
    };
    let app = spawn_with(&clock, settings, LoginGuard::counting_on).await;
    for i in 0..10 {
        let (status, _, body) = register(&app, "203.0.113.1").await;
        assert_eq!(status, StatusCode::CREATED, "registration {i}: {body}");
    }
    let (status, retry_after, body) = register(&app, "203.0.113.1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    // One registration back every 3 s (20 a minute).
    assert_eq!(retry_after, Some(3));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 10, "a refused registration created an account");
    // Another address has its own budget; the first gets one back after Retry-After.
    assert_eq!(register(&app, "203.0.113.2").await.0, StatusCode::CREATED);
    clock.advance(Duration::from_secs(3));
    assert_eq!(register(&app, "203.0.113.1").await.0, StatusCode::CREATED);
    assert_eq!(
        register(&app, "203.0.113.1").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn exact_email_searches_share_the_registrations_budget_and_name_searches_stay_free() {
    let settings = LimitSettings {
        email_lookups_per_minute: 20,
        email_lookups_burst: 3,
        ..behind_one_proxy()
    };
    let app = spawn_with(
        &FakeRelativeClock::default(),
        settings,
        LoginGuard::counting_on,
    )
    .await;
    // Registered from the test's own address (no header: the peer), not the searcher's.
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    for i in 0..3 {
        let (status, _, found) = search(&app, &alice, &bob.email, "203.0.113.1").await;
        assert_eq!(status, StatusCode::OK, "search {i}: {found}");
        assert_eq!(found[0]["id"], bob.id, "{found}");
    }
    let (status, retry_after, body) = search(&app, &alice, &bob.email, "203.0.113.1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert_eq!(retry_after, Some(3));
    // Name searches do not look at emails, and are not counted.
    for _ in 0..5 {
        let (status, _, found) = search(&app, &alice, "Bo", "203.0.113.1").await;
        assert_eq!(status, StatusCode::OK, "{found}");
    }
    // One budget: the address that spent it on searches cannot register either.
    assert_eq!(
        register(&app, "203.0.113.1").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, _, _) = search(&app, &alice, &bob.email, "203.0.113.2").await;
    assert_eq!(status, StatusCode::OK, "another address was limited");
}

#[tokio::test]
async fn a_flood_of_huge_made_up_usernames_leaves_the_login_guard_within_its_capacity() {
    let capacity = 16;
    let app = spawn_with(&FakeRelativeClock::default(), behind_one_proxy(), |clock| {
        LoginGuard::with_capacity(clock, capacity)
    })
    .await;
    let alice = app.user("Alice").await;
    // Alice one failure short of her lockout before the flood.
    for _ in 1..5 {
        assert_eq!(
            login(&app, &alice.email, "wrong password!", "198.51.100.7").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // 100 usernames of 60 KB (the body limit is 64 KB), each from an address of its own.
    let filler = "x".repeat(60 * 1024);
    let answers: Vec<StatusCode> = futures::stream::iter(0..100)
        .map(|i| {
            let username = format!("{i}{filler}@example.com");
            let hops = format!("203.0.{}.{}", i / 256, i % 256);
            let app = &app;
            async move { login(app, &username, "wrong password!", &hops).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    // A 503 is the argon2 queue shedding load on a busy machine (`limits::a_login_flood_…`);
    // it never reaches the guard, so most answers must be 401 for the flood to count.
    assert!(
        answers.iter().all(|s| matches!(
            *s,
            StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
        )),
        "{answers:?}"
    );
    let counted = answers
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        counted >= 50,
        "only {counted} of the flood's logins were counted"
    );
    // Accounts and addresses, counts and lockouts: the flood added no lockout.
    let tracked = app.state.logins.tracked();
    assert!(
        tracked <= 2 * capacity + 2,
        "{tracked} entries for a capacity of {capacity}"
    );
    let footprint = app.state.logins.footprint();
    eprintln!("login guard after the flood: {tracked} entries, {footprint} bytes");
    assert!(
        footprint < 64 * 1024,
        "{footprint} bytes after 6 MB of usernames"
    );
    // The flood pushed out its own kind, not Alice's four failures: the fifth locks her.
    assert_eq!(
        login(&app, &alice.email, "wrong password!", "198.51.100.8").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, &alice.email, PASSWORD, "198.51.100.8").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the flood washed out Alice's failures"
    );
}
