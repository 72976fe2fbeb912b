//! The OpenAPI document and Swagger UI, served from assets inside the binary.

use reqwest::StatusCode;
use serde_json::Value;
use windi_tests::{PASSWORD, TestApp};

#[tokio::test]
async fn openapi_documents_every_route_with_an_oauth2_password_flow() {
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
    for (path, method) in [
        ("/auth/register", "post"),
        ("/auth/login", "post"),
        ("/auth/me", "get"),
        ("/chat/message", "post"),
        ("/chat/group", "post"),
        ("/chat/group/{chat_id}/members", "post"),
        ("/chat/group/{chat_id}/members/{user_id}", "delete"),
        ("/chat/history/{chat_id}", "get"),
        ("/chat/list", "get"),
        ("/chat/message/{id}/read", "patch"),
        ("/chat/message/{id}/receipts", "get"),
        ("/chat/message/{id}/pin", "put"),
        ("/chat/message/{id}/pin", "delete"),
        ("/chat/{chat_id}/pins", "get"),
        ("/chat/{chat_id}/settings", "patch"),
        ("/users/presence", "get"),
        ("/users/me/privacy", "get"),
        ("/users/me/privacy", "patch"),
        ("/auth/refresh", "post"),
        ("/auth/logout", "post"),
        ("/auth/logout-all", "post"),
        ("/auth/sessions", "get"),
        ("/auth/sessions/{id}", "delete"),
        ("/auth/me", "patch"),
        ("/auth/me", "delete"),
        ("/auth/password", "post"),
        ("/users/search", "get"),
        ("/users/blocked", "get"),
        ("/users/{id}/block", "put"),
        ("/users/{id}/block", "delete"),
        ("/health", "get"),
        ("/ready", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    // The answers any request can get for its shape are documented on every route.
    let send = &doc["paths"]["/chat/message"]["post"]["responses"];
    for code in [
        "200", "201", "400", "401", "404", "409", "413", "415", "422",
    ] {
        assert!(
            send[code].is_object(),
            "POST /chat/message does not document {code}"
        );
    }
    // And the limits are in the contract, not only in the code.
    let limit = doc["paths"]["/chat/history/{chat_id}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["maximum"], 200);
    assert_eq!(
        doc["components"]["schemas"]["SendMessage"]["properties"]["text"]["maxLength"],
        4096
    );
    let flow = &doc["components"]["securitySchemes"]["oauth2"]["flows"]["password"];
    assert_eq!(flow["tokenUrl"], "/auth/login");
    assert!(doc["components"]["schemas"]["MessageOut"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_without_a_cdn_and_its_authorize_flow_works() {
    let app = TestApp::spawn().await;
    let page = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("cdn") && !html.contains("unpkg"), "{html}");
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.http.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }

    // What the Authorize button posts: an OAuth2 password grant, form-encoded, with client
    // fields the server must ignore.
    let user = app.user("Swagger").await;
    let response = app
        .http
        .post(app.url("/auth/login"))
        .form(&[
            ("grant_type", "password"),
            ("username", user.email.as_str()),
            ("password", PASSWORD),
            ("scope", ""),
            ("client_id", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health: Value = app
        .http
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "ok");
}
