//! The API end to end: real HTTP against a real windi on a fresh Postgres database per test.

#![allow(clippy::unwrap_used)]

mod address_limits;
mod admin;
mod attachments;
mod auth;
mod authorization;
mod bad_input;
mod browser;
mod client_headers;
mod data;
mod docs;
mod events;
mod groups;
mod history;
mod lambda;
mod limits;
mod membership;
mod mentions;
mod messages;
mod ops;
mod original;
mod outages;
mod owned_fields;
mod people;
mod pins;
mod presence;
mod races;
mod read_marks;
mod receipts;
mod revisions;
mod search;
mod sessions;
mod tokens;
mod write_path;
mod ws;
mod ws_convergence;
mod ws_faults;
mod ws_recovery;
mod ws_revisions;
mod ws_sync;
