//! What operators see: `/metrics` moving with traffic and guarded by `METRICS_TOKEN`, request
//! ids in headers and error bodies, and CORS answered per `CORS_ALLOWED_ORIGINS`.

use reqwest::{Method, StatusCode};
use serde_json::json;
use windi_shared::http::{
    metrics::MetricsAccess,
    runtime::{CorsOrigins, HttpSettings},
};
use windi_tests::TestApp;

/// Serves `app`'s state again, on a port of its own, with these HTTP settings.
async fn serve_with(app: &TestApp, http: HttpSettings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = windi::app_with(app.state.clone(), windi::ClientConfig::default(), &http);
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

/// The value of the first sample of `name` whose labels contain every one of `labels`
/// (0 when there is none yet).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .map_or(0.0, |(_, value)| value.parse().unwrap())
}

#[tokio::test]
async fn metrics_count_requests_sends_and_replays_after_traffic() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let created = [
        r#"method="POST""#,
        r#"route="/chat/message""#,
        r#"status="201""#,
    ];
    let before = scrape(&app.url("/metrics")).await;

    let body = json!({"recipient_id": bob.id, "text": "hi", "dedup_key": "m-1"});
    let (status, _) = app.post("/chat/message", &alice, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app.post("/chat/message", &alice, body).await;
    assert_eq!(status, StatusCode::OK, "a replay");
    let (status, _) = app.get("/no/such/route", &alice).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let after = scrape(&app.url("/metrics")).await;
    // Other tests of this binary share the process's recorder, so counts only grow by at least.
    let grew =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert!(grew("http_requests_total", &created) >= 1.0, "{after}");
    assert!(
        grew("http_request_duration_seconds_count", &created) >= 1.0,
        "a latency histogram per route: {after}"
    );
    assert!(
        sample(
            &after,
            "http_request_duration_seconds_bucket",
            &[r#"route="/chat/message""#, r#"le="+Inf""#]
        ) >= 1.0,
        "{after}"
    );
    assert!(grew("windi_messages_sent_total", &[]) >= 1.0, "{after}");
    assert!(grew("windi_dedup_replays_total", &[]) >= 1.0, "{after}");
    let checks = grew("windi_session_checks_total", &[r#"source="cache""#])
        + grew("windi_session_checks_total", &[r#"source="postgres""#]);
    assert!(checks >= 2.0, "both sends count: {after}");
    assert!(
        grew(
            "http_requests_total",
            &[r#"route="unmatched""#, r#"status="404""#]
        ) >= 1.0,
        "unknown paths share one label: {after}"
    );
    assert!(
        !after.contains("/no/such/route"),
        "raw paths never become labels"
    );
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set() {
    let app = TestApp::spawn().await;
    let base = serve_with(
        &app,
        HttpSettings {
            metrics: MetricsAccess::with_token(Some("scrape-secret".into())),
            ..HttpSettings::default()
        },
    )
    .await;
    let http = windi_tests::http_client();
    let anonymous = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .get(format!("{base}/metrics"))
        .bearer_auth("scrape-secreT")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http
        .get(format!("{base}/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert!(right.text().await.unwrap().contains("http_requests_total"));
}

#[tokio::test]
async fn a_request_id_is_answered_and_quoted_in_error_bodies() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("/chat/list"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "client-id-42", "{body}");

    // Without one (or with an unusable one) windi makes one, and answers it the same way.
    for sent in [None, Some("x".repeat(500))] {
        let mut request = app.http.get(app.url("/chat/list"));
        if let Some(sent) = &sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.unwrap();
        let made = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(made.len(), 36, "a UUID: {made}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], made.as_str());
    }
}

#[tokio::test]
async fn a_cross_origin_preflight_is_answered_per_cors_allowed_origins() {
    let app = TestApp::spawn().await;
    let base = serve_with(
        &app,
        HttpSettings {
            cors: Some(CorsOrigins::List(vec!["https://chat.example.com".into()])),
            ..HttpSettings::default()
        },
    )
    .await;
    let preflight = |base: String, origin: &'static str| {
        let http = app.http.clone();
        async move {
            http.request(Method::OPTIONS, format!("{base}/chat/message"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
                .await
                .unwrap()
        }
    };

    let allowed = preflight(base.clone(), "https://chat.example.com").await;
    assert!(allowed.status().is_success(), "{:?}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://chat.example.com"
    );
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let other = preflight(base.clone(), "https://evil.example").await;
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "another origin is not allowed"
    );

    // An actual cross-origin call carries the header too, and exposes the request id.
    let response = app
        .http
        .get(format!("{base}/health"))
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");

    // Without CORS_ALLOWED_ORIGINS, no browser of another origin is let in.
    let plain = preflight(app.base.clone(), "https://chat.example.com").await;
    assert!(plain.headers().get("access-control-allow-origin").is_none());
}
