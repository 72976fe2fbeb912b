//! The service layer: what a request does, whoever sent it. An HTTP handler and the relay's
//! `send` frame call the same functions here, with the same [`AppState`](state::AppState).
//!
//! It imports the store, the events, the config and the domain (see the crate docs); never the
//! HTTP edge, so nothing here knows axum's request or response types.
//!
//! - [`state`]: the one cloneable state, built once per process
//! - [`auth`] and [`jwt_crypto`]: argon2id passwords, access tokens, refresh tokens
//! - [`limits`]: rate limits and the failed-login guard
//! - [`session_cache`]: which sessions this process recently found live
//! - [`write`](mod@write): the one write path (commit under the request's clock, then announce) and
//!   [`gates`], the per-chat queue in front of a chat's lock
//! - [`send`]: the send path with seq and rev allocation and idempotency
//! - [`revise`]: edits, deletions and reactions, each a change of its chat
//! - [`attachments`]: files sent with messages: upload links, checks, downloads, pruning;
//!   [`files`], where they are kept
//! - [`search`](mod@search): message search, steered by how common the searched words are

pub mod attachments;
pub mod auth;
pub mod files;
pub mod gates;
pub mod jwt_crypto;
pub mod limits;
pub mod revise;
pub mod search;
pub mod send;
pub mod session_cache;
pub mod state;
pub mod write;
