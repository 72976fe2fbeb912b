//! The library every windi function shares.
//!
//! The five function crates (auth, message, group, history, read) are thin HTTP layers over
//! this crate; the local `windi` binary and the ws-relay use it too, so a message sent over a
//! WebSocket takes exactly the path of one sent over HTTP.
//!
//! - [`config`]: typed settings from the environment, failing fast with the variable's name
//! - [`error`]: the one HTTP error type
//! - [`extract`]: extractors, `AuthUser` among them
//! - [`auth`]: argon2id passwords and JWT access tokens
//! - [`db`]: small query functions per table
//! - [`send`]: the send path with seq and rev allocation and idempotency
//! - [`revise`]: edits, deletions and reactions, each a change of its chat
//! - [`events`]: what is published after commit, to NATS or in-process
//! - [`runtime`]: one router served under Lambda or locally
//! - [`request_id`] and [`metrics`]: what operators see of each request
//! - [`lambda`]: the Lambda entry point, with the API Gateway stage taken out of the path

pub mod auth;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod extract;
pub mod jwt_crypto;
pub mod lambda;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod request_id;
pub mod revise;
pub mod runtime;
pub mod send;
pub mod session_cache;
pub mod state;
pub mod validate;
pub mod write;

pub use error::{Error, Result};
pub use state::AppState;

/// The name of the OpenAPI security scheme every authenticated route declares.
pub const SECURITY_SCHEME: &str = "oauth2";
