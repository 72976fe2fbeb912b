//! The library every windi function shares.
//!
//! The five function crates (auth, message, group, history, read) are thin HTTP layers over
//! this crate; the local `windi` binary and the ws-relay use it too, so a message sent over a
//! WebSocket takes exactly the path of one sent over HTTP.
//!
//! # Layers
//!
//! The crate is six layers. Each imports only the layers listed under it, never one above or
//! beside it, so no two modules import each other and each layer can be read (and tested)
//! knowing only what is below it:
//!
//! ```text
//!   http      the HTTP edge: extractors, errors as answers, middleware, routers, Lambda
//!     │
//!   service   AppState, auth, limits, the session cache, the one write path, send, revise
//!     │
//!   store · events · config · blobs   queries per table · what is published after commit ·
//!     │                        typed settings from the environment · files in a folder or S3
//!   domain    the API's shapes, input rules, the error type
//! ```
//!
//! - [`domain`] imports nothing: no I/O, no axum, no sqlx. The rules hold for any caller (a
//!   handler, the relay's frames, the admin CLI), and a test of them needs no database.
//! - [`store`], [`events`], [`config`] and [`blobs`] each import the domain only. A query does not know
//!   who calls it; an event does not know who publishes it; a setting does not know who reads
//!   it. So the settings types other layers need ([`config::JwtConfig`],
//!   [`config::LimitSettings`], [`config::in_lambda`]) live in `config`, and a store constant
//!   (how long a refresh token lives) lives with the query that writes it.
//! - [`service`] imports the four below: it is where a request's work happens, the same for
//!   HTTP and the relay, and it owns the transaction and what is told after the commit.
//! - [`http`] imports everything: it turns requests into service calls and errors into
//!   answers. Nothing below it knows axum's request types, so the relay and the CLI reuse the
//!   layers below without it.
//!
//! `shared/tests/layers.rs` reads every file of `src/` and fails, naming the file and the
//! import, when a layer imports one it may not, or when modules import each other in a
//! circle.
//!
//! The root re-exports only what every crate uses: [`Error`], [`Result`] and [`AppState`].
//! Everything else is reached by its layer's path (`windi_shared::store::messages`,
//! `windi_shared::service::send`, `windi_shared::http::extract::AuthUser`).

// The docs link to the private items that explain a rule (the constant behind a limit, the
// helper behind a check); they resolve with `cargo doc --document-private-items`, which is how
// a workspace crate's docs are read.
#![allow(rustdoc::private_intra_doc_links)]

pub mod blobs;
pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub mod service;
pub mod store;

pub use domain::error::{Error, Result};
pub use service::state::AppState;
