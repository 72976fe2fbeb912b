//! Sending messages with per-chat seq and idempotent dedup: POST /chat/message.
