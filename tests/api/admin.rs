//! `windi admin`'s account tools, on a real database, as the CLI calls them.

use reqwest::StatusCode;
use windi_tests::{PASSWORD, TestApp};

#[tokio::test]
async fn an_operator_ends_sessions_disables_and_enables_a_user() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let pool = &app.db.pool;

    assert_eq!(windi::admin::end_sessions(pool, alice.id).await.unwrap(), 1);
    assert_eq!(
        app.get("/auth/me", &alice).await.0,
        StatusCode::UNAUTHORIZED
    );
    let token = app.login(&alice.email, PASSWORD).await;
    assert!(!token.is_empty(), "she logs in again");

    assert!(windi::admin::disable(pool, bob.id).await.unwrap());
    assert_eq!(app.get("/auth/me", &bob).await.0, StatusCode::UNAUTHORIZED);
    let response = app
        .http
        .post(app.url("/auth/login"))
        .form(&[("username", bob.email.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a disabled user logs in"
    );
    let listed = windi::admin::list_users(pool, 10, None).await.unwrap();
    assert!(listed.iter().any(|u| u.id == bob.id));

    assert!(windi::admin::enable(pool, bob.id).await.unwrap());
    app.login(&bob.email, PASSWORD).await;
    assert!(!windi::admin::disable(pool, 987_654).await.unwrap());
}
