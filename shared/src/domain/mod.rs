//! The domain: the shapes the API speaks, the rules its input must keep, and the one error
//! type. The bottom layer (see the crate docs): no I/O, no axum, no sqlx beyond the derive
//! attributes that let the store read rows straight into these types. Everything above uses
//! it; it uses nothing above.
//!
//! - [`model`]: request bodies, answers, limits, and where a message goes ([`model::Target`])
//! - [`validate`]: input rules, each a 422 that names the field
//! - [`attachments`]: the limits on files, safe filenames, and bytes that must match their type
//! - [`images`]: an uploaded image's dimensions and thumbnail, bounded so a bomb is refused
//! - [`presence`]: who is online, away or offline, and what a viewer may see of it
//! - [`search`]: what a search box's text asks for, and its highlights as safe HTML
//! - [`whole`]: integers a client may write as `830.0`, read one way everywhere
//! - [`error`]: the [`Error`](error::Error) every layer returns, as a status and a stable code

pub mod attachments;
pub mod error;
pub mod images;
pub mod model;
pub mod presence;
pub mod search;
pub mod validate;
pub mod whole;
