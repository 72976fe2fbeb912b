//! The security headers of what a browser loads from windi: the client's pages and assets and
//! Swagger UI carry a strict Content-Security-Policy (no inline script, the relay's WebSocket
//! URL and nothing wider), no framing, no Referer and no MIME sniffing; every API answer is
//! `nosniff`. That the pages work under these policies is the browser tests' part
//! (tests/api/browser.rs), which fail on any violation.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use reqwest::{StatusCode, header::HeaderMap};
use windi_tests::TestApp;

/// The client's own files, one route each (`index.html` is `/`): every file in `windi/static`.
fn client_paths() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../windi/static");
    let mut paths: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .map(|name| match name.as_str() {
            "index.html" => "/".to_owned(),
            _ => format!("/{name}"),
        })
        .collect();
    assert!(paths.len() >= 3, "{paths:?}");
    paths.push("/client-config.json".into());
    paths.sort();
    paths
}

/// Swagger UI's page and everything its vendored `index.html` loads, and the document it shows.
const DOCS_PATHS: [&str; 8] = [
    "/docs/",
    "/docs/swagger-ui.css",
    "/docs/index.css",
    "/docs/swagger-ui-bundle.js",
    "/docs/swagger-ui-standalone-preset.js",
    "/docs/swagger-initializer.js",
    "/docs/favicon-32x32.png",
    "/openapi.json",
];

/// The policy's directives by name.
fn directives(headers: &HeaderMap, path: &str) -> BTreeMap<String, String> {
    let csp = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{path} has no Content-Security-Policy"))
        .to_str()
        .unwrap();
    let mut policy = BTreeMap::new();
    for directive in csp.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, value) = directive.split_once(' ').unwrap_or((directive, ""));
        // A browser obeys the first of two; a second one means something wrote itself in.
        let earlier = policy.insert(name.to_owned(), value.trim().to_owned());
        assert!(earlier.is_none(), "{path}: {name} twice in {csp}");
    }
    policy
}

/// Asks for `path` and checks the headers every page and asset carries; answers its policy.
async fn page_policy(http: &reqwest::Client, base: &str, path: &str) -> BTreeMap<String, String> {
    let response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let headers = response.headers();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{path}"
    );
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
    assert_eq!(
        header("referrer-policy").as_deref(),
        Some("no-referrer"),
        "{path}"
    );
    let policy = directives(headers, path);
    for (name, value) in [
        ("default-src", "'none'"),
        ("script-src", "'self'"),
        ("object-src", "'none'"),
        ("base-uri", "'none'"),
        ("form-action", "'none'"),
        ("frame-ancestors", "'none'"),
    ] {
        assert_eq!(
            policy.get(name).map(String::as_str),
            Some(value),
            "{path}: {name} in {policy:?}"
        );
    }
    assert!(
        policy.values().all(|value| !value.contains("unsafe")),
        "{path}: {policy:?}"
    );
    policy
}

/// `router` on a port of its own, as `windi serve` runs it; answers its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    base
}

#[tokio::test]
async fn every_client_file_and_docs_page_carries_a_strict_policy_naming_the_relay() {
    let (app, relay) = TestApp::spawn_for_browser().await;
    let port = relay.addr.port();
    // What app.js opens without RELAY_PUBLIC_URL: the relay's port on the page's own host.
    let relay_sources = format!("'self' ws://127.0.0.1:{port}/ws wss://127.0.0.1:{port}/ws");
    for path in client_paths() {
        let policy = page_policy(&app.http, &app.base, &path).await;
        assert_eq!(policy["connect-src"], relay_sources, "{path}");
        assert_eq!(policy["style-src"], "'self'", "{path}");
        // blob: for attachments, fetched with the token and shown from memory.
        assert_eq!(policy["img-src"], "'self' data: blob:", "{path}");
    }
    for path in DOCS_PATHS {
        let policy = page_policy(&app.http, &app.base, path).await;
        assert_eq!(policy["connect-src"], "'self'", "{path}");
        // Swagger UI's logo carries a `<style>`: that one text is allowed, by its hash.
        let (own, hashes) = policy["style-src"].split_once(' ').unwrap();
        assert_eq!(own, "'self'", "{path}");
        assert!(
            hashes.split(' ').all(|h| h.starts_with("'sha256-")),
            "{path}: {hashes}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_behind_a_proxy_is_allowed_at_its_public_url_and_nowhere_else() {
    let app = TestApp::spawn().await;
    let client = windi::ClientConfig {
        relay_port: 8001,
        relay_url: Some("wss://chat.example.com/ws".into()),
        files_source: None,
    };
    let base = serve(windi::app_with_client(app.state.clone(), client)).await;
    for path in client_paths() {
        let policy = page_policy(&app.http, &base, &path).await;
        assert_eq!(
            policy["connect-src"], "'self' wss://chat.example.com/ws",
            "{path}"
        );
    }
    // One that is no plain URL (`windi serve` refuses it at start-up) widens nothing.
    let client = windi::ClientConfig {
        relay_port: 8001,
        relay_url: Some("wss://chat.example.com/ws; script-src *".into()),
        files_source: None,
    };
    let base = serve(windi::app_with_client(app.state.clone(), client)).await;
    let policy = page_policy(&app.http, &base, "/").await;
    assert_eq!(policy["connect-src"], "'self'");
}

#[tokio::test]
async fn an_s3_file_store_is_allowed_at_its_origin_and_nowhere_else() {
    let app = TestApp::spawn().await;
    let s3 = |endpoint: Option<&str>| windi_shared::config::FilesConfig::S3 {
        bucket: "windi-files".into(),
        endpoint: endpoint.map(Into::into),
    };
    for (files, expected) in [
        (
            s3(Some("http://s3.localhost:9000/some/path?x=1")),
            "'self' wss://chat.example.com/ws http://s3.localhost:9000",
        ),
        (
            s3(None),
            "'self' wss://chat.example.com/ws https://*.amazonaws.com",
        ),
        // One that is no plain origin widens nothing.
        (
            s3(Some("https://s3.example.com;script-src")),
            "'self' wss://chat.example.com/ws",
        ),
        (
            windi_shared::config::FilesConfig::Folder("files".into()),
            "'self' wss://chat.example.com/ws",
        ),
    ] {
        let client = windi::ClientConfig {
            relay_port: 8001,
            relay_url: Some("wss://chat.example.com/ws".into()),
            files_source: None,
        }
        .with_files(&files);
        let base = serve(windi::app_with_client(app.state.clone(), client)).await;
        let policy = page_policy(&app.http, &base, "/").await;
        assert_eq!(policy["connect-src"], expected, "{files:?}");
    }
}

#[tokio::test]
async fn without_a_public_url_the_policy_names_the_relay_on_the_host_the_page_was_asked_from() {
    let app = TestApp::spawn().await;
    let base = serve(windi::app_with_client(
        app.state.clone(),
        windi::ClientConfig::default(),
    ))
    .await;
    let connect_src = |host: &'static str| {
        let http = app.http.clone();
        let base = base.clone();
        async move {
            let response = http
                .get(format!("{base}/"))
                .header("host", host)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{host}");
            directives(response.headers(), host)
                .get("connect-src")
                .cloned()
                .unwrap()
        }
    };
    assert_eq!(
        connect_src("chat.example.org:8000").await,
        "'self' ws://chat.example.org:8001/ws wss://chat.example.org:8001/ws"
    );
    assert_eq!(
        connect_src("[::1]:8000").await,
        "'self' ws://[::1]:8001/ws wss://[::1]:8001/ws"
    );
    // A Host that is not a host name cannot write itself (or a directive) into the policy.
    let response = app
        .http
        .get(format!("{base}/"))
        .header("host", "evil.example;script-src *")
        .send()
        .await
        .unwrap();
    let policy = directives(response.headers(), "a forged Host");
    assert_eq!(policy["connect-src"], "'self'");
    assert_eq!(policy["script-src"], "'self'");
}

#[tokio::test]
async fn every_api_answer_says_nosniff() {
    let app = TestApp::spawn().await;
    let checks = [
        (app.http.get(app.url("/health")), StatusCode::OK),
        (app.http.get(app.url("/auth/me")), StatusCode::UNAUTHORIZED),
        (
            app.http
                .post(app.url("/auth/register"))
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.http.get(app.url("/no/such/route")),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (request, status) in checks {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(response.status(), status, "{url}");
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{url}"
        );
    }
}
