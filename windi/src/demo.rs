//! `windi demo`: the seed project's start-up scenario — Alice and Bob, a private chat with a few
//! messages, a group "Project Team" with Carol, messages in it, read marks — so a newcomer has
//! something to look at.
//!
//! It drives windi's own HTTP API in process (the router, not a socket): the same validation,
//! dedup and events as any client, straight against `DATABASE_URL`, with events going to
//! `NATS_URL` when it is set, so connected clients see the demo arrive live. Idempotent: users
//! that exist are logged in, messages carry dedup keys (a second run replays them), and the
//! group is reused when Alice already owns one by that name. Nothing is ever deleted.

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A demo account, printed at the end of a run.
#[derive(Debug, Clone)]
pub struct Login {
    pub name: &'static str,
    pub email: &'static str,
    pub password: &'static str,
    pub id: i64,
}

/// What one run did: the accounts, and how many messages were new (0 on a rerun).
#[derive(Debug)]
pub struct Outcome {
    pub logins: Vec<Login>,
    pub new_messages: usize,
    pub private_chat: i64,
    pub group_chat: i64,
}

const USERS: [(&str, &str, &str); 3] = [
    ("Alice", "alice.demo@example.com", "alice-demo-pass"),
    ("Bob", "bob.demo@example.com", "bob-demo-pass"),
    ("Carol", "carol.demo@example.com", "carol-demo-pass"),
];

/// Runs the scenario through `app` (from [`crate::app`]).
pub async fn run(app: Router) -> Result<Outcome, String> {
    let api = Api { app };
    let mut logins = Vec::new();
    let mut tokens = Vec::new();
    for (name, email, password) in USERS {
        let (status, body) = api
            .json(
                Method::POST,
                "/auth/register",
                None,
                json!({"name": name, "email": email, "password": password}),
            )
            .await?;
        if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
            return Err(format!("registering {email}: {status} {body}"));
        }
        let token = api.login(email, password).await?;
        let (_, me) = api
            .call(Method::GET, "/auth/me", Some(&token), None)
            .await?;
        let id = me["id"].as_i64().ok_or("no id in /auth/me")?;
        logins.push(Login {
            name,
            email,
            password,
            id,
        });
        tokens.push(token);
    }
    let (alice, bob, carol) = (&tokens[0], &tokens[1], &tokens[2]);
    let mut new_messages = 0;

    // The private chat, created by Alice's first message to Bob.
    let first = api
        .send(alice, json!({"recipient_id": logins[1].id, "text": "Привет, как дела?", "dedup_key": "demo:private:1"}), &mut new_messages)
        .await?;
    let private_chat = first["chat_id"].as_i64().ok_or("no chat_id")?;
    api.send(bob, json!({"chat_id": private_chat, "text": "Отлично! А у тебя?", "dedup_key": "demo:private:2"}), &mut new_messages)
        .await?;
    let last_private = api
        .send(alice, json!({"chat_id": private_chat, "text": "Тоже хорошо. Созвонимся вечером?", "dedup_key": "demo:private:3"}), &mut new_messages)
        .await?;

    let group_chat = match api.owned_group(alice, "Project Team").await? {
        Some(id) => id,
        None => {
            let (status, body) = api
                .json(
                    Method::POST,
                    "/chat/group",
                    Some(alice),
                    json!({"name": "Project Team", "participant_ids": [logins[1].id, logins[2].id]}),
                )
                .await?;
            if status != StatusCode::CREATED {
                return Err(format!("creating the group: {status} {body}"));
            }
            body["chat_id"].as_i64().ok_or("no chat_id")?
        }
    };
    let script = [
        (alice, "Welcome to the Project Team!", "demo:group:1"),
        (bob, "Glad to be here. What's first?", "demo:group:2"),
        (
            carol,
            "Hi all! I'll take the release notes.",
            "demo:group:3",
        ),
        (alice, "Great — standup tomorrow at 10.", "demo:group:4"),
    ];
    let mut last_group = Value::Null;
    for (token, text, key) in script {
        last_group = api
            .send(
                token,
                json!({"chat_id": group_chat, "text": text, "dedup_key": key}),
                &mut new_messages,
            )
            .await?;
    }

    // Read marks: Bob has read the private chat; Bob and Carol have read the whole group, so
    // Alice's last group message shows as read by everyone.
    api.read(bob, &last_private).await?;
    api.read(bob, &last_group).await?;
    api.read(carol, &last_group).await?;

    Ok(Outcome {
        logins,
        new_messages,
        private_chat,
        group_chat,
    })
}

/// The router, called in process.
struct Api {
    app: Router,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Value), String> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, bytes)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(bytes)),
            None => request.body(Body::empty()),
        }
        .map_err(|e| e.to_string())?;
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(StatusCode, Value), String> {
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        self.call(method, path, token, Some(("application/json", bytes)))
            .await
    }

    async fn login(&self, email: &str, password: &str) -> Result<String, String> {
        let form = format!("username={email}&password={password}").into_bytes();
        let (status, body) = self
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(("application/x-www-form-urlencoded", form)),
            )
            .await?;
        match body["access_token"].as_str() {
            Some(token) if status == StatusCode::OK => Ok(token.to_owned()),
            _ => Err(format!(
                "cannot log in as {email} ({status}): the account exists with another password; \
                 the demo never changes existing accounts"
            )),
        }
    }

    /// Sends (idempotently, by dedup key); counts messages that were new.
    async fn send(&self, token: &str, body: Value, new: &mut usize) -> Result<Value, String> {
        let (status, message) = self
            .json(Method::POST, "/chat/message", Some(token), body)
            .await?;
        match status {
            StatusCode::CREATED => *new += 1,
            StatusCode::OK => {}
            _ => return Err(format!("sending: {status} {message}")),
        }
        Ok(message)
    }

    async fn read(&self, token: &str, message: &Value) -> Result<(), String> {
        let id = message["id"].as_i64().ok_or("no message id")?;
        let (status, body) = self
            .call(
                Method::PATCH,
                &format!("/chat/message/{id}/read"),
                Some(token),
                None,
            )
            .await?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("marking {id} read: {status} {body}"))
        }
    }

    /// A group of this name that the caller owns, if any.
    async fn owned_group(&self, token: &str, name: &str) -> Result<Option<i64>, String> {
        let (status, list) = self
            .call(Method::GET, "/chat/list?limit=200", Some(token), None)
            .await?;
        if status != StatusCode::OK {
            return Err(format!("listing chats: {status} {list}"));
        }
        Ok(list.as_array().and_then(|chats| {
            chats
                .iter()
                .find(|c| c["kind"] == "group" && c["name"] == name && c["role"] == "owner")
                .and_then(|c| c["id"].as_i64())
        }))
    }
}
