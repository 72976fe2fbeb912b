//! The HTTP edge: where a request becomes a service call and an [`Error`](crate::Error)
//! becomes an answer. The top layer (see the crate docs): it may import every layer below it,
//! and none of them imports it.
//!
//! - [`extract`]: extractors whose rejections answer with our error body; `AuthUser`
//! - [`error`]: errors as answers (`IntoResponse`, [`error::ErrorBody`])
//! - [`deadline`], [`request_id`] and [`metrics`]: the middleware every router gets (a deadline
//!   that never contradicts a commit, the request id, request metrics), and `/metrics`
//! - [`runtime`]: one router served under Lambda or locally, and the `main` of every function
//! - [`lambda`]: the Lambda adapter, with the API Gateway stage taken out of the path

pub mod deadline;
pub mod error;
pub mod extract;
pub mod lambda;
pub mod metrics;
pub mod request_id;
pub mod runtime;

/// The name of the OpenAPI security scheme every authenticated route declares.
pub const SECURITY_SCHEME: &str = "oauth2";
