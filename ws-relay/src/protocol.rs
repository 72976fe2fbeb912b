//! The WebSocket protocol: the frames a client sends and the frames it receives, as JSON text
//! frames with a `type` field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use windi_shared::model::{ChatSummary, MessageOut};

/// Client → server.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// "I have everything up to this seq in these chats": the relay replays what follows, in
    /// order, then goes on live. Send it first after (re)connecting.
    Resume { chats: HashMap<String, i64> },
    /// A message, through the same send path as `POST /chat/message` (same dedup and seq).
    Send {
        chat_id: Option<i64>,
        recipient_id: Option<i64>,
        text: String,
        dedup_key: Option<String>,
    },
    /// "I am typing in this chat": relayed to the other members, never stored.
    Typing { chat_id: i64 },
}

/// Server → client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The connection is set up: from here on, every new message of the user's chats arrives.
    /// Sent once, first.
    Ready { user_id: i64 },
    /// A message, delivered once per device, in seq order, with no gap.
    Message {
        chat_id: i64,
        seq: i64,
        message: &'a MessageOut,
    },
    /// A member's read marker moved.
    Read {
        chat_id: i64,
        user_id: i64,
        last_read_seq: i64,
    },
    /// You joined (or created) a chat; its messages follow from now on.
    Chat { chat: &'a ChatSummary },
    /// You left or were removed from a chat; nothing more of it arrives.
    ChatRemoved { chat_id: i64 },
    /// Someone else joined or left a chat of yours (`change`: `joined` or `left`).
    Member {
        chat_id: i64,
        user_id: i64,
        change: &'static str,
    },
    /// Another member is typing.
    Typing { chat_id: i64, user_id: i64 },
    /// The answer to a `send`: the stored message (`created: false` for an idempotent replay).
    Ack {
        dedup_key: Option<&'a str>,
        created: bool,
        message: &'a MessageOut,
    },
    /// Something the client sent could not be done; the connection stays open unless a close
    /// frame follows. For a failed `send`, `dedup_key` says which one.
    Error {
        detail: &'a str,
        code: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        dedup_key: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail; an empty object is a safe fallback.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}
