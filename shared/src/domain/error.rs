//! The one error type: every failure a request can meet, in the words the API answers it with.
//!
//! Each variant is a status and a stable code ([`Error::status`], [`Error::code`]), so the
//! rules below the HTTP edge (validation, the send path, the limits) say *what* went wrong
//! without knowing how it is written out. Writing it out is the edge's job
//! (`crate::http::error`: the JSON body `{"detail", "code"}`, `Retry-After`, opaque 5xx); how a
//! database failure becomes one of these is the store's (`crate::store::error`: constraint
//! names, an unreachable Postgres). This module depends on neither: `StatusCode` is the `http`
//! crate's plain value type, and a database failure is carried as any error.

use ::http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request could not be read (malformed JSON, a bad path or query parameter).
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// 401: no token, a bad token, or bad credentials. Always with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the caller is a member but lacks the role for this change.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the thing does not exist, or the caller may not know that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: the request conflicts with what is stored (taken email, reused dedup key).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// 413, 415 and other rejections of the request as a whole.
    #[error("{detail}")]
    Rejected {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    /// 429: over a rate limit. With `Retry-After` (whole seconds, at least 1).
    #[error("{detail}")]
    TooManyRequests {
        code: &'static str,
        detail: String,
        retry_after: std::time::Duration,
    },
    /// 422: well-formed, but a value breaks a rule; `detail` names the field.
    #[error("{detail}")]
    Validation { code: &'static str, detail: String },
    /// 503: a dependency the request needs is unreachable (Postgres refused, timed out or
    /// restarting; the pool ran dry). Always with `Retry-After`; the cause goes to the log.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a database failure with no client-side cause. Logged, never shown. (The store's
    /// `sqlx::Error`, boxed: the domain does not know which database it has.)
    #[error("database error: {0}")]
    Database(Box<dyn std::error::Error + Send + Sync>),
    /// 500: anything else that should not happen. Logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// 403 `blocked`: one side of a private chat blocked the other, or the user being added to
    /// a group blocked the one adding. Nothing more is said (not who, not since when).
    pub fn blocked() -> Self {
        Self::Rejected {
            status: StatusCode::FORBIDDEN,
            code: "blocked",
            detail: "blocked".into(),
        }
    }

    /// A 422 naming the field: `Error::invalid("text", "must not be empty")`.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::Validation {
            code: "validation_error",
            detail: format!("{field}: {problem}"),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Rejected { status, .. } => *status,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Rejected { code, .. }
            | Self::TooManyRequests { code, .. }
            | Self::Validation { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Database(_) | Self::Internal(_) => "internal_error",
        }
    }
}
