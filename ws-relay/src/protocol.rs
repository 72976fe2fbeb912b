//! The WebSocket protocol: the frames a client sends and the frames it receives, as JSON text
//! frames with a `type` field. Every frame about a chat carries the chat's `rev`: for a change,
//! its own rev; for news that is not a change (read markers, typing), how far this connection
//! has delivered the chat.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use windi_shared::domain::{
    model::{Change, ChatSummary, MessageOut},
    presence::Presence,
    whole,
};

/// Client → server.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// "I have applied every change up to this rev in these chats" (`revs`), or, for clients
    /// that only show messages, "I have every message up to this seq" (`chats`). The relay
    /// replays what follows, in rev order, then goes on live. With `revs`, membership is
    /// reconciled too: the user's chats not listed arrive as `chat` frames, listed chats they
    /// no longer belong to as `chat_removed`. Send it first after (re)connecting.
    Resume {
        #[serde(default, deserialize_with = "whole::map")]
        revs: Option<HashMap<String, i64>>,
        #[serde(default, deserialize_with = "whole::map")]
        chats: Option<HashMap<String, i64>>,
    },
    /// A message, through the same send path as `POST /chat/message` (same dedup and seq).
    Send {
        #[serde(default, deserialize_with = "whole::option")]
        chat_id: Option<i64>,
        #[serde(default, deserialize_with = "whole::option")]
        recipient_id: Option<i64>,
        #[serde(default)]
        text: String,
        dedup_key: Option<String>,
        #[serde(default, deserialize_with = "whole::option")]
        reply_to: Option<i64>,
        /// Uploads this message carries (`POST /chat/attachments`); with any, `text` may be
        /// empty or left out.
        #[serde(default, deserialize_with = "whole::list")]
        attachments: Vec<i64>,
        /// Members of the chat the message mentions, as in `POST /chat/message`.
        #[serde(default, deserialize_with = "whole::list")]
        mentions: Vec<i64>,
    },
    /// "I am away" (`true`, e.g. the app went to the background) or "I am back" (`false`):
    /// while online, the user's presence reads `away`. Kept until changed (a new connection
    /// does not reset it).
    Away { away: bool },
    /// "I am typing in this chat": relayed to the other members, never stored.
    Typing {
        #[serde(deserialize_with = "whole::one")]
        chat_id: i64,
    },
}

/// Server → client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The connection is set up: from here on, every change of the user's chats arrives.
    /// Sent once, first.
    Ready { user_id: i64 },
    /// People you share a chat with whose presence changed since the last such frame, each in
    /// their state now; at most one frame every 2 s (`domain::presence::FRAME_EVERY`).
    Presence { presence: &'a [Presence] },
    /// A new message, delivered once per device, in rev (and so seq) order, with no gap.
    Message {
        chat_id: i64,
        seq: i64,
        rev: i64,
        message: &'a MessageOut,
    },
    /// A message was edited, deleted, or its reactions changed (`change`); `message` is its
    /// state afterwards.
    MessageUpdated {
        chat_id: i64,
        rev: i64,
        change: &'a str,
        message: &'a MessageOut,
    },
    /// A member's read marker moved: they read every message up to `last_read_seq`. Sent to
    /// the chat's members (not another's if either of the two turned read receipts off).
    Read {
        chat_id: i64,
        user_id: i64,
        last_read_seq: i64,
        rev: i64,
    },
    /// Every message up to `delivered_seq` reached one of this member's devices. Sent to the
    /// devices of those whose messages it newly covers (after a lost event, to every member).
    Delivered {
        chat_id: i64,
        user_id: i64,
        delivered_seq: i64,
        rev: i64,
    },
    /// You joined (or created) a chat; its changes after `rev` follow.
    Chat { chat: &'a ChatSummary, rev: i64 },
    /// You left or were removed from a chat (at `rev`); nothing more of it arrives.
    ChatRemoved { chat_id: i64, rev: i64 },
    /// Someone else joined or left a chat of yours (`change`: `joined` or `left`).
    Member {
        chat_id: i64,
        user_id: i64,
        change: &'a str,
        rev: i64,
        /// Their name (for `joined`), so a member you share no other chat with has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
    },
    /// A member of this chat changed their name (not a change of the chat: `rev` is where
    /// the chat is, as for typing). Sent once per chat you share with them.
    UserUpdated {
        chat_id: i64,
        user_id: i64,
        name: &'a str,
        rev: i64,
    },
    /// Another member is typing.
    Typing {
        chat_id: i64,
        user_id: i64,
        rev: i64,
    },
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

    /// The frame of a change read from Postgres (`None` for a kind this relay does not know).
    pub fn of_change(change: &Change) -> Option<ServerFrame<'_>> {
        let rev = change.rev;
        let chat_id = change.chat_id;
        match (change.kind.as_str(), &change.message, change.user_id) {
            ("message", Some(message), _) => Some(ServerFrame::Message {
                chat_id,
                seq: message.seq,
                rev,
                message,
            }),
            ("message_updated", Some(message), _) => Some(ServerFrame::MessageUpdated {
                chat_id,
                rev,
                change: change.change.as_deref().unwrap_or("edited"),
                message,
            }),
            ("member", _, Some(user_id)) => Some(ServerFrame::Member {
                chat_id,
                user_id,
                change: change.change.as_deref().unwrap_or("joined"),
                rev,
                name: change.name.as_deref(),
            }),
            _ => None,
        }
    }
}
