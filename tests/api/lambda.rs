//! Contract parity: every function's Lambda entry point, fed the API Gateway events of `events/`,
//! answers what the local server answers for the same HTTP request — status, headers and body.
//!
//! The Lambda side is what the Lambda runtime runs in a container: each function's state built
//! the production way (`AppState::connect` with NATS required and a pool of 2), its router wrapped
//! by `windi_shared::http::lambda::handler`, and the event decoded from and the answer encoded to
//! JSON as the runtime does. The local side is windi on `127.0.0.1:0`, sent the request API
//! Gateway would have forwarded, rebuilt from the event here without the Lambda code. Each side
//! has its own fresh database and replays the same steps, so ids line up; only times and token
//! bytes differ, and those are checked for shape and meaning instead of compared.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use async_nats::jetstream;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lambda_http::{
    Context, LambdaEvent,
    request::LambdaRequest,
    tower::{Service, ServiceExt},
};
use reqwest::{Method, header::HeaderMap};
use serde_json::Value;
use windi_shared::{
    AppState,
    blobs::Blobs,
    config::{Config, JwtConfig, LimitSettings},
    events::{LocalBus, stream_name},
    http::{
        lambda::{self, Handler},
        runtime::function_app,
    },
    service::{auth::Claims, state::Broker},
};
use windi_tests::{TEST_SECRET, TestApp, TestDb, nats_url, s3::S3Server, unique};

/// The function crates, as deployed by `template.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Function {
    Auth,
    Message,
    Group,
    History,
    Read,
}

impl Function {
    const ALL: [Self; 5] = [
        Self::Auth,
        Self::Message,
        Self::Group,
        Self::History,
        Self::Read,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Auth => "windi-auth",
            Self::Message => "windi-message",
            Self::Group => "windi-group",
            Self::History => "windi-history",
            Self::Read => "windi-read",
        }
    }

    fn routes(self) -> utoipa_axum::router::OpenApiRouter<AppState> {
        match self {
            Self::Auth => windi_auth::routes(),
            Self::Message => windi_message::routes(),
            Self::Group => windi_group::routes(),
            Self::History => windi_history::routes(),
            Self::Read => windi_read::routes(),
        }
    }
}

/// One event of `events/`, the function API Gateway routes it to, the status it must get and,
/// for some, fields of the body (so that two sides agreeing on a wrong answer, e.g. both 401, or
/// both storing an emoji still percent-encoded, cannot pass).
struct Step {
    event: &'static str,
    function: Function,
    status: u16,
    /// `(JSON pointer, JSON)` pairs the answer's body holds, after [`normalise`].
    body: &'static [(&'static str, &'static str)],
    publishes: Publishes,
    /// The answer is an upload link: PUT `events/photo.png` with it, on each side.
    uploads: bool,
}

/// What a step must have put in JetStream by the time its handler answers.
#[derive(Debug, Clone, Copy)]
enum Publishes {
    /// Nothing to look for (a read, or an idempotent repeat).
    Nothing,
    /// `message.created` of the message answered.
    Created,
    /// `message.updated` with this `change`, at the rev of the message answered.
    Updated(&'static str),
}

const fn step(event: &'static str, function: Function, status: u16) -> Step {
    Step {
        event,
        function,
        status,
        body: &[],
        publishes: Publishes::Nothing,
        uploads: false,
    }
}

impl Step {
    const fn body(mut self, body: &'static [(&'static str, &'static str)]) -> Self {
        self.body = body;
        self
    }

    const fn publishes(mut self, publishes: Publishes) -> Self {
        self.publishes = publishes;
        self
    }

    const fn uploads(mut self) -> Self {
        self.uploads = true;
        self
    }
}

/// The "Test as Lambda" walk-through (docs/lambda.md), in its order: each step relies on the ones before
/// it (user 1 is Alice, chat 1 the private chat, chat 2 the group, message 1 the first message,
/// message 3 the reply to it).
const WALKTHROUGH: &[Step] = &[
    step("auth-register.json", Function::Auth, 201),
    step("auth-register-bob.json", Function::Auth, 201),
    step("auth-login.json", Function::Auth, 200),
    step("auth-me.json", Function::Auth, 200),
    step("auth-me-rest-v1.json", Function::Auth, 200),
    step("chat-message.json", Function::Message, 201).publishes(Publishes::Created),
    step("chat-message.json", Function::Message, 200),
    step("chat-message-base64.json", Function::Message, 201).publishes(Publishes::Created),
    step("chat-message-reply.json", Function::Message, 201)
        .body(&[("/id", "3"), ("/reply_to", "1")])
        .publishes(Publishes::Created),
    step("chat-message-edit.json", Function::Message, 200)
        .body(&[
            ("/text", r#""И ещё одно, в ответ на первое (исправлено)""#),
            ("/edited_at", r#""<time>""#),
        ])
        .publishes(Publishes::Updated("edited")),
    // The emoji is percent-encoded in the path (%F0%9F%91%8D) and must arrive decoded.
    step("chat-message-reaction-add.json", Function::Message, 200)
        .body(&[(
            "/reactions",
            r#"[{"emoji": "👍", "count": 1, "user_ids": [1]}]"#,
        )])
        .publishes(Publishes::Updated("reaction_added")),
    // Again: idempotent, the same answer and no new change.
    step("chat-message-reaction-add.json", Function::Message, 200).body(&[(
        "/reactions",
        r#"[{"emoji": "👍", "count": 1, "user_ids": [1]}]"#,
    )]),
    step("chat-message-reaction-remove.json", Function::Message, 200)
        .body(&[("/reactions", "[]")])
        .publishes(Publishes::Updated("reaction_removed")),
    // Either member of a private chat may pin; the pin is a change like an edit.
    step("chat-message-pin.json", Function::Message, 200)
        .body(&[("/pinned_at", r#""<time>""#)])
        .publishes(Publishes::Updated("pinned")),
    step("chat-message-delete.json", Function::Message, 200)
        .body(&[("/id", "2"), ("/deleted", "true"), ("/text", r#""""#)])
        .publishes(Publishes::Updated("deleted")),
    step("chat-group.json", Function::Group, 201),
    step("chat-group-members-add.json", Function::Group, 200),
    step("chat-group-members-remove.json", Function::Group, 204),
    step("chat-history.json", Function::History, 200),
    step("chat-history-rest-v1.json", Function::History, 200),
    step("chat-list.json", Function::History, 200),
    step("chat-list-stage.json", Function::History, 200),
    // Each message once, in its latest state, at the rev of its last change: 8 changes (the pin
    // among them), 6 rows.
    step("chat-changes.json", Function::History, 200).body(&[("/rev", "8"), ("/more", "false")]),
    // "еще" finds the reply's edited text, "ещё": ё folds to е; message 2 was deleted.
    step("chat-search.json", Function::History, 200)
        .body(&[("/hits/0/message/id", "3"), ("/next", "null")]),
    step("chat-pins.json", Function::History, 200).body(&[("/0/id", "1")]),
    step("chat-message-unpin.json", Function::Message, 200)
        .body(&[("/pinned_at", "null")])
        .publishes(Publishes::Updated("unpinned")),
    step("chat-message-read.json", Function::Read, 200),
    step("chat-message-receipts.json", Function::Read, 200),
    step("chat-settings.json", Function::Read, 200)
        .body(&[("/muted_until", "\"forever\""), ("/notify", "\"mentions\"")]),
    // A photo: announced, PUT to the presigned link (both sides keep files in a real S3
    // server), sent without text, and downloaded with its thumbnail by redirect.
    step("chat-attachments.json", Function::Message, 201)
        .body(&[("/id", "1"), ("/upload/method", "\"PUT\"")])
        .uploads(),
    step("chat-message-attachment.json", Function::Message, 201)
        .publishes(Publishes::Created)
        .body(&[
            ("/attachments/0/width", "64"),
            ("/attachments/0/height", "48"),
            (
                "/attachments/0/thumbnail",
                "\"/chat/attachments/1/thumbnail\"",
            ),
        ]),
    step("chat-attachment.json", Function::Message, 302),
    step("chat-attachment-thumbnail.json", Function::Message, 302),
    step("auth-register.json", Function::Auth, 409),
    // Accounts and sessions (docs/api.md, "Sessions and accounts"), in an order where each relies on the last.
    step("auth-me-patch.json", Function::Auth, 200),
    step("auth-sessions.json", Function::Auth, 200),
    step("auth-sessions-delete.json", Function::Auth, 404),
    step("users-search.json", Function::Auth, 200),
    // Alice and Bob share chats; no relay holds either of them here.
    step("users-presence.json", Function::Auth, 200).body(&[
        ("/presence/0/user_id", "1"),
        ("/presence/0/status", "\"offline\""),
        ("/presence/1/user_id", "2"),
    ]),
    step("users-privacy.json", Function::Auth, 200)
        .body(&[("/presence", "\"contacts\""), ("/read_receipts", "true")]),
    step("users-privacy-patch.json", Function::Auth, 200)
        .body(&[("/presence", "\"nobody\""), ("/read_receipts", "false")]),
    step("users-block.json", Function::Auth, 204),
    step("users-blocked.json", Function::Auth, 200),
    step("users-unblock.json", Function::Auth, 204),
    step("auth-password.json", Function::Auth, 204),
    // The event's placeholder is no refresh token: refused alike (rotation is tested over HTTP).
    step("auth-refresh.json", Function::Auth, 401),
    step("auth-logout.json", Function::Auth, 204),
    // The logged-out session's token, refused by the function as by the local server.
    step("auth-me.json", Function::Auth, 401),
    step("chat-list.json", Function::History, 401),
    step("auth-login.json", Function::Auth, 200),
    step("auth-logout-all.json", Function::Auth, 204),
    step("auth-me.json", Function::Auth, 401),
    step("auth-login.json", Function::Auth, 200),
    step("auth-me-delete.json", Function::Auth, 204),
    // The deleted account's email registers again.
    step("auth-register.json", Function::Auth, 201),
];

/// Headers the HTTP server adds locally and API Gateway adds in AWS.
const TRANSPORT_HEADERS: &[&str] = &["date", "transfer-encoding", "connection"];

/// Checked against the body on each side, then left out of the comparison: hyper drops it from
/// a 204 locally, and API Gateway sets its own from the body it sends.
const CONTENT_LENGTH: &str = "content-length";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn events_dir() -> PathBuf {
    repo_root().join("events")
}

fn load_event(name: &str) -> Value {
    let path = events_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// An answer from either side, in comparable form.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names; transport headers left out.
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

/// The five functions as Lambda containers would run them, on `db`, publishing under `prefix`.
async fn lambda_functions(db: &TestDb, prefix: &str, files: &Blobs) -> BTreeMap<Function, Handler> {
    let mut handlers = BTreeMap::new();
    for function in Function::ALL {
        let config = Config {
            database_url: db.url.clone(),
            jwt: JwtConfig::new(
                TEST_SECRET.to_vec(),
                Algorithm::HS256,
                Duration::from_secs(1800),
            )
            .unwrap(),
            nats_url: Some(nats_url()),
            nats_prefix: prefix.to_owned(),
            port: 0,
            db_max_connections: 2,
            // The walkthroughs send ~100 messages as one user: above the limits on purpose.
            limits: windi_shared::config::LimitSettings::unlimited(),
            // Lambda runs no session sync (run_function does not start it there).
            session_cache: true,
            // What Config::from_env gives under Lambda, and the only choice there.
            event_acks: windi_shared::config::EventAcks::Wait,
            password_rules: windi_shared::domain::validate::PasswordRules::default(),
            files: windi_shared::config::FilesConfig::Unset,
        };
        // FILES_BUCKET would name the bucket; the test server's endpoint and keys are given
        // here instead of through AWS_* variables (which every test in the process would see).
        let state = AppState::connect(&config, Broker::Required, function.name())
            .await
            .unwrap()
            .with_files(files.clone());
        let app = function_app(function.routes(), state);
        handlers.insert(function, lambda::handler(app));
    }
    handlers
}

/// Invokes a handler the way the Lambda runtime does: the event JSON in, the response JSON out.
async fn invoke(handler: &mut Handler, event: &Value) -> Answer {
    let request: LambdaRequest = serde_json::from_value(event.clone())
        .unwrap_or_else(|e| panic!("the runtime could not decode the event: {e}"));
    let response = handler
        .ready()
        .await
        .unwrap()
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    let response = serde_json::to_value(response).unwrap();

    let status = u16::try_from(response["statusCode"].as_u64().unwrap()).unwrap();
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    // Payload v2 answers in `headers`; v1 in `multiValueHeaders` (its `headers` stays empty).
    for (name, value) in response["headers"].as_object().into_iter().flatten() {
        headers
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.as_str().unwrap().to_owned());
    }
    for (name, values) in response["multiValueHeaders"]
        .as_object()
        .into_iter()
        .flatten()
    {
        for value in values.as_array().unwrap() {
            headers
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(value.as_str().unwrap().to_owned());
        }
    }
    let body = match response["body"].as_str() {
        None => Vec::new(),
        Some(text) if response["isBase64Encoded"] == Value::Bool(true) => {
            BASE64.decode(text).unwrap()
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends the request API Gateway would forward for `event` to the local server.
async fn send_locally(app: &TestApp, event: &Value) -> Answer {
    let v2 = event["version"] == "2.0";
    let (method, path, query) = if v2 {
        // A named stage is the first segment of the URL; API Gateway routes what follows it.
        let context = &event["requestContext"];
        let raw_path = event["rawPath"].as_str().unwrap();
        let stage = context["stage"].as_str().unwrap_or("$default");
        let path = match raw_path.strip_prefix(&format!("/{stage}")) {
            Some(rest) if stage != "$default" && rest.starts_with('/') => rest,
            _ => raw_path,
        };
        let query = event["rawQueryString"].as_str().unwrap_or("").to_owned();
        (context["http"]["method"].as_str().unwrap(), path, query)
    } else {
        let mut pairs = url_pairs(&event["multiValueQueryStringParameters"]);
        if pairs.is_empty() {
            pairs = url_pairs(&event["queryStringParameters"]);
        }
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        (
            event["httpMethod"].as_str().unwrap(),
            event["path"].as_str().unwrap(),
            query,
        )
    };
    let url = if query.is_empty() {
        app.url(path)
    } else {
        app.url(&format!("{path}?{query}"))
    };

    // A redirect is an answer to compare, as Lambda's is, not one to follow.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = http.request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    let header_source = if v2 {
        &event["headers"]
    } else {
        &event["multiValueHeaders"]
    };
    for (name, value) in header_source.as_object().into_iter().flatten() {
        if ["host", "content-length"].contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let values = match value {
            Value::Array(values) => values.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect::<Vec<_>>(),
        };
        for value in values {
            request = request.header(name.as_str(), value);
        }
    }
    if let Some(body) = event["body"].as_str() {
        let bytes = if event["isBase64Encoded"] == Value::Bool(true) {
            BASE64.decode(body).unwrap()
        } else {
            body.as_bytes().to_vec()
        };
        request = request.body(bytes);
    }

    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = comparable_headers(response.headers());
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// `{"k": "v"}` or `{"k": ["v1", "v2"]}` as percent-encoded pairs.
fn url_pairs(map: &Value) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (key, value) in map.as_object().into_iter().flatten() {
        let values = match value {
            Value::Array(values) => values.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect::<Vec<_>>(),
        };
        for value in values {
            pairs.push((percent_encode(key), percent_encode(value)));
        }
    }
    pairs
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn comparable_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::<String, Vec<String>>::new();
    for (name, value) in headers {
        if TRANSPORT_HEADERS.contains(&name.as_str()) {
            continue;
        }
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_str().unwrap().to_owned());
    }
    map
}

/// Replaces what legitimately differs between two runs — times and token bytes — by what it
/// means, after checking its shape: a time stays "a time", a token becomes "a token for user N".
fn normalise(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match (key.as_str(), &*field) {
                    (
                        "timestamp" | "created_at" | "edited_at" | "last_used_at" | "expires_at"
                        | "pinned_at",
                        Value::String(time),
                    ) => {
                        assert!(
                            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
                            "{key} is not an RFC 3339 time: {time}"
                        );
                        *field = Value::String("<time>".into());
                    }
                    // Each side's object has its own random name and signature.
                    ("url", Value::String(url)) if url.contains("X-Amz-Signature=") => {
                        *field = Value::String(presigned(url));
                    }
                    // Every request has its own id (see tests/api/ops.rs).
                    ("request_id", Value::String(id)) => {
                        assert!(!id.is_empty(), "an empty request id");
                        *field = Value::String("<request id>".into());
                    }
                    ("refresh_token", Value::String(token)) => {
                        assert!(token.len() >= 43, "refresh_token too short: {token}");
                        *field = Value::String("<refresh token>".into());
                    }
                    ("access_token", Value::String(token)) => {
                        windi_shared::service::jwt_crypto::install();
                        let claims = jsonwebtoken::decode::<Claims>(
                            token,
                            &DecodingKey::from_secret(TEST_SECRET).unwrap(),
                            &Validation::new(Algorithm::HS256),
                        )
                        .unwrap_or_else(|e| panic!("access_token does not verify: {e}"));
                        *field = Value::String(format!("<token for user {}>", claims.claims.sub));
                    }
                    _ => normalise(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// A presigned S3 URL by what it means: method-independent, its object's random name and its
/// signature left out, after checking it is a signed URL of the test bucket.
fn presigned(url: &str) -> String {
    let (path, query) = url
        .split_once('?')
        .unwrap_or_else(|| panic!("unsigned: {url}"));
    assert!(query.contains("X-Amz-Signature="), "unsigned: {url}");
    let (folder, name) = path.rsplit_once('/').unwrap();
    let name = name.split('.').next().unwrap();
    assert!(
        name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a random object name: {url}"
    );
    let folder = folder.rsplit('/').next().unwrap();
    format!("<presigned URL of {folder}/*>")
}

fn assert_same(what: &str, lambda: &Answer, local: &Answer) {
    assert_eq!(
        lambda.status,
        local.status,
        "{what}: status differs; Lambda body {}, local body {}",
        String::from_utf8_lossy(&lambda.body),
        String::from_utf8_lossy(&local.body)
    );
    let without_length = |side: &str, answer: &Answer| {
        let mut headers = answer.headers.clone();
        if let Some(length) = headers.remove(CONTENT_LENGTH) {
            let actual = answer.body.len().to_string();
            assert_eq!(length, [actual], "{what}: {side} content-length");
        }
        // Both sides answer a request id, each its own.
        let id = headers.remove("x-request-id");
        assert!(id.is_some(), "{what}: {side} answered no x-request-id");
        if let Some(location) = headers.get_mut("location") {
            for url in location.iter_mut() {
                *url = presigned(url);
            }
        }
        headers
    };
    assert_eq!(
        without_length("Lambda", lambda),
        without_length("local", local),
        "{what}: headers differ"
    );
    let is_json = local
        .headers
        .get("content-type")
        .is_some_and(|types| types.iter().any(|t| t.starts_with("application/json")));
    if is_json {
        let mut from_lambda: Value = serde_json::from_slice(&lambda.body)
            .unwrap_or_else(|e| panic!("{what}: Lambda body is not JSON: {e}"));
        let mut from_local: Value = serde_json::from_slice(&local.body)
            .unwrap_or_else(|e| panic!("{what}: local body is not JSON: {e}"));
        normalise(&mut from_lambda);
        normalise(&mut from_local);
        assert_eq!(from_lambda, from_local, "{what}: bodies differ");
    } else {
        assert_eq!(lambda.body, local.body, "{what}: bodies differ");
    }
}

/// Sets (or, with `None`, removes) the bearer token in every header field of the event.
fn with_token(mut event: Value, token: Option<&str>) -> Value {
    for field in ["headers", "multiValueHeaders"] {
        let Some(headers) = event[field].as_object_mut() else {
            continue;
        };
        let names: Vec<String> = headers
            .keys()
            .filter(|k| k.eq_ignore_ascii_case("authorization"))
            .cloned()
            .collect();
        for name in names {
            match token {
                None => {
                    headers.remove(&name);
                }
                Some(token) => {
                    let value = Value::String(format!("Bearer {token}"));
                    headers[&name] = if field == "headers" {
                        value
                    } else {
                        Value::Array(vec![value])
                    };
                }
            }
        }
    }
    event
}

fn needs_token(event: &Value) -> bool {
    ["headers", "multiValueHeaders"].iter().any(|field| {
        event[field]
            .as_object()
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("authorization")))
    })
}

/// A message's event must already be in JetStream when the handler answers: Lambda may freeze
/// the process right after the response, so nothing may still be in flight. (A send's own
/// `message.read` for the sender's marker follows its `message.created`, so look a few back.)
async fn assert_published_before_answer(
    js: &jetstream::Context,
    prefix: &str,
    publishes: Publishes,
    message: &Value,
) {
    let (kind, change) = match publishes {
        Publishes::Nothing => return,
        Publishes::Created => ("message.created", None),
        Publishes::Updated(change) => ("message.updated", Some(change)),
    };
    let chat_id = message["chat_id"].as_i64().unwrap();
    let mut stream = js.get_stream(stream_name(prefix)).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let subject = format!("{prefix}.chat.{chat_id}");
    let mut seen = Vec::new();
    for sequence in (last.saturating_sub(8).max(1)..=last).rev() {
        let Ok(raw) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if raw.subject.as_str() != subject {
            continue;
        }
        let event: Value = serde_json::from_slice(&raw.payload).unwrap();
        if event["type"] == kind
            && event["message"]["id"] == message["id"]
            && change.is_none_or(|change| event["change"] == change)
        {
            assert_eq!(event["rev"], message["rev"], "{kind} at another rev");
            return;
        }
        seen.push(event);
    }
    panic!("no {kind} {change:?} for {message} when the handler answered; latest: {seen:?}");
}

/// The two sides compared: the five functions as Lambda runs them, and a local windi, each on a
/// fresh database of its own, with each side's token once it has logged in.
struct Sides {
    functions: BTreeMap<Function, Handler>,
    js: jetstream::Context,
    prefix: String,
    /// (Lambda's, local's), from the answer to `auth-login.json`.
    tokens: Option<(String, String)>,
    // Dropped after the functions' pools: the stream, then the databases.
    _stream: windi_tests::StreamGuard,
    _lambda_db: TestDb,
    local: TestApp,
    /// Where both sides keep files, as a deployment's bucket.
    _s3: S3Server,
}

impl Sides {
    async fn new() -> Self {
        let s3 = S3Server::start().await;
        let files = s3.blobs();
        let local = TestApp::start_adjusted(
            TestDb::new().await,
            Arc::new(LocalBus::default()),
            unique("t"),
            |state| {
                state
                    .with_limits(LimitSettings::unlimited())
                    .with_files(files.clone())
            },
        )
        .await;
        let lambda_db = TestDb::new().await;
        let prefix = unique("lambda");
        let stream = windi_tests::StreamGuard {
            url: nats_url(),
            prefix: prefix.clone(),
        };
        let functions = lambda_functions(&lambda_db, &prefix, &files).await;
        let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        Self {
            functions,
            js,
            prefix,
            tokens: None,
            _stream: stream,
            _lambda_db: lambda_db,
            local,
            _s3: s3,
        }
    }

    /// Runs `steps` in order, checking each as [`Self::step`] does, plus its body fields and
    /// what it published.
    async fn walk(&mut self, steps: &[Step]) {
        for (n, step) in steps.iter().enumerate() {
            let what = format!("step {} ({}, {})", n + 1, step.event, step.function.name());
            let event = load_event(step.event);
            let (answer, local) = self
                .step_as(&what, step.function, &event, &event, step.status)
                .await;
            if step.uploads {
                let photo = std::fs::read(events_dir().join("photo.png")).unwrap();
                for side in [&answer, &local] {
                    let link: Value = serde_json::from_slice(&side.body).unwrap();
                    let status = self
                        .local
                        .http
                        .put(link["upload"]["url"].as_str().unwrap())
                        .header("content-type", "image/png")
                        .body(photo.clone())
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert_eq!(status, 200, "{what}: the upload");
                }
            }
            if step.status == 302 {
                // Each side's link gives the same bytes (the photo, or the same thumbnail).
                let mut fetched = Vec::new();
                for side in [&answer, &local] {
                    let response = self
                        .local
                        .http
                        .get(&side.headers["location"][0])
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "{what}: the download");
                    fetched.push(response.bytes().await.unwrap());
                }
                assert!(!fetched[0].is_empty() && fetched[0] == fetched[1], "{what}");
                if step.event == "chat-attachment.json" {
                    let photo = std::fs::read(events_dir().join("photo.png")).unwrap();
                    assert_eq!(fetched[0], photo, "{what}");
                }
            }
            if step.body.is_empty() && matches!(step.publishes, Publishes::Nothing) {
                continue;
            }
            let mut body: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_published_before_answer(&self.js, &self.prefix, step.publishes, &body).await;
            normalise(&mut body);
            for (pointer, expected) in step.body {
                let expected: Value = serde_json::from_str(expected).unwrap();
                assert_eq!(body.pointer(pointer), Some(&expected), "{what}: {pointer}");
            }
        }
    }

    /// One step: the event without a token first, if it carries one (the same 401 from both
    /// sides), then with each side's own token; both sides must answer `status` and the same
    /// status, headers and body. The event the Lambda side gets and the request the local side
    /// gets are given apart, for an event API Gateway builds differently from the request it
    /// was sent. Returns both answers, Lambda's first.
    async fn step_as(
        &mut self,
        what: &str,
        function: Function,
        lambda_event: &Value,
        local_event: &Value,
        status: u16,
    ) -> (Answer, Answer) {
        let handler = self.functions.get_mut(&function).unwrap();
        if needs_token(lambda_event) {
            let lambda_answer = invoke(handler, &with_token(lambda_event.clone(), None)).await;
            let local_answer =
                send_locally(&self.local, &with_token(local_event.clone(), None)).await;
            assert_eq!(lambda_answer.status, 401, "{what} without a token");
            assert_same(
                &format!("{what} without a token"),
                &lambda_answer,
                &local_answer,
            );
        }

        let (lambda_event, local_event) = match &self.tokens {
            Some((lambda_token, local_token)) if needs_token(lambda_event) => (
                with_token(lambda_event.clone(), Some(lambda_token)),
                with_token(local_event.clone(), Some(local_token)),
            ),
            _ => (lambda_event.clone(), local_event.clone()),
        };
        let lambda_answer = invoke(handler, &lambda_event).await;
        let local_answer = send_locally(&self.local, &local_event).await;
        assert_eq!(
            lambda_answer.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&lambda_answer.body)
        );
        assert_same(what, &lambda_answer, &local_answer);

        if lambda_event["routeKey"] == "POST /auth/login" {
            let token = |answer: &Answer| {
                let body: Value = serde_json::from_slice(&answer.body).unwrap();
                body["access_token"].as_str().unwrap().to_owned()
            };
            self.tokens = Some((token(&lambda_answer), token(&local_answer)));
        }
        (lambda_answer, local_answer)
    }
}

#[tokio::test]
async fn every_function_answers_its_events_as_the_local_server_does() {
    Sides::new().await.walk(WALKTHROUGH).await;
}

/// A reaction's emoji is percent-encoded in the path by the client (`encodeURIComponent`).
/// Whether API Gateway hands `rawPath` on as sent or decoded (HTTP APIs decode it, by what live
/// captures show), the function must see the emoji the local server sees: also one whose
/// decoded form is URL syntax, as the keycap #️⃣ (`#`, U+FE0F, U+20E3), or holds a `%`.
#[tokio::test]
async fn a_percent_encoded_emoji_reaches_the_function_as_it_reaches_the_local_server() {
    let mut sides = Sides::new().await;
    // Alice and Bob, Alice's token, and message 1.
    let sent = WALKTHROUGH
        .iter()
        .position(|s| s.event == "chat-message.json")
        .unwrap();
    sides.walk(&WALKTHROUGH[..=sent]).await;

    let emoji = [
        "👍",
        "❤️",
        "🇺🇦",
        "👩🏽‍💻",
        "#️⃣",
        "*️⃣",
        "#",
        "100%",
        "%",
        "+1",
        "ok!",
        "a&b=c",
    ];
    for emoji in emoji {
        let encoded_path = format!("/chat/message/1/reactions/{}", percent_encode(emoji));
        let decoded_path = format!("/chat/message/1/reactions/{emoji}");
        for (file, reacted) in [
            ("chat-message-reaction-add.json", true),
            ("chat-message-reaction-remove.json", false),
        ] {
            let sent = reaction_event(file, &encoded_path, emoji);
            for (form, path) in [("encoded", &encoded_path), ("decoded", &decoded_path)] {
                let what = format!("{file} for {emoji:?}, rawPath {form}");
                let event = reaction_event(file, path, emoji);
                let (answer, _) = sides
                    .step_as(&what, Function::Message, &event, &sent, 200)
                    .await;
                let body: Value = serde_json::from_slice(&answer.body).unwrap();
                let reactions: Vec<&str> = body["reactions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["emoji"].as_str().unwrap())
                    .collect();
                let expected: &[&str] = if reacted { &[emoji] } else { &[] };
                assert_eq!(reactions, expected, "{what}");
            }
        }
    }
}

/// The reaction event `file` of `events/` for `emoji`, with `raw_path` in `rawPath` and
/// `requestContext.http.path`; `pathParameters` are decoded.
fn reaction_event(file: &str, raw_path: &str, emoji: &str) -> Value {
    let mut event = load_event(file);
    event["rawPath"] = Value::String(raw_path.to_owned());
    event["requestContext"]["http"]["path"] = Value::String(raw_path.to_owned());
    event["pathParameters"]["emoji"] = Value::String(emoji.to_owned());
    event
}

/// Every (function, "METHOD /path") the function crates serve, from their OpenAPI routes.
fn served_routes() -> Vec<(Function, String)> {
    let mut routes = Vec::new();
    for function in Function::ALL {
        for (path, item) in function.routes().into_openapi().paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (method, _) in methods.into_iter().filter(|(_, served)| *served) {
                routes.push((function, format!("{method} {path}")));
            }
        }
    }
    routes.sort();
    routes
}

#[test]
fn every_route_of_every_function_has_an_event_and_every_event_is_checked() {
    let mut covered: Vec<String> = std::fs::read_dir(events_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let event: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            // v2 names its route; v1 has method and resource.
            match event["routeKey"].as_str() {
                Some(route) => route.to_owned(),
                None => format!(
                    "{} {}",
                    event["httpMethod"].as_str().unwrap(),
                    event["resource"].as_str().unwrap()
                ),
            }
        })
        .collect();
    covered.sort();
    covered.dedup();
    let served: Vec<String> = served_routes()
        .into_iter()
        .map(|(_, route)| route)
        .collect();
    let mut served_sorted = served.clone();
    served_sorted.sort();
    assert_eq!(
        covered, served_sorted,
        "events/ holds an event for every route, and no other"
    );

    let mut files: Vec<String> = std::fs::read_dir(events_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    files.sort();
    let mut walked: Vec<String> = WALKTHROUGH.iter().map(|s| s.event.to_owned()).collect();
    walked.sort();
    walked.dedup();
    assert_eq!(
        walked, files,
        "the walk-through uses every event of events/"
    );
}

/// `template.yaml` routes exactly the functions' routes, each to the function that serves it.
/// Read line by line: each function resource is `  <Name>Function:` and each of its HttpApi
/// events has `Path:` followed by `Method:`.
#[test]
fn the_sam_template_routes_every_route_to_its_function_and_nothing_else() {
    let path = repo_root().join("template.yaml");
    let template = std::fs::read_to_string(&path).unwrap();
    let mut routed = Vec::new();
    let mut resource: Option<Function> = None;
    let mut pending_path: Option<String> = None;
    for line in template.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            resource = Function::ALL.into_iter().find(|f| {
                let crate_name = f.name().trim_start_matches("windi-");
                name.eq_ignore_ascii_case(&format!("{crate_name}function"))
            });
            pending_path = None;
        }
        let line = line.trim();
        if let Some(path) = line.strip_prefix("Path: ") {
            pending_path = Some(path.to_owned());
        } else if let (Some(method), Some(path)) = (line.strip_prefix("Method: "), &pending_path) {
            let function = resource.unwrap_or_else(|| panic!("route {path} outside a function"));
            routed.push((function, format!("{} {path}", method.to_ascii_uppercase())));
            pending_path = None;
        }
    }
    routed.sort();
    assert_eq!(routed, served_routes());
}
