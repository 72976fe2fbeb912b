//! The one error type of the HTTP layer.
//!
//! Every failure a handler can meet becomes an [`Error`]; its `IntoResponse` writes the JSON body
//! `{"detail": "...", "code": "..."}` with the right status. Client errors name what is wrong.
//! Server errors are opaque to the client (`"internal error"`) and carry their cause to the log.

use axum::{
    Json,
    extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

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
    /// 500: a database failure with no client-side cause. Logged, never shown.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// 500: anything else that should not happen. Logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words for a developer; names the offending field where there is one.
    #[schema(example = "text: must not be empty")]
    pub detail: String,
    /// A stable machine-readable code.
    #[schema(example = "validation_error")]
    pub code: String,
    /// The request's `x-request-id` (the client's, or one made for it): quote it when reporting
    /// a problem, and find every log line of the request by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0b5c3a55-0b4e-4f5e-9c39-6c1d1d7b9a11")]
    pub request_id: Option<String>,
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

    /// The error as the JSON body a client sees (opaque for 5xx).
    pub fn body(&self) -> ErrorBody {
        let detail = match self {
            Self::Database(_) | Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        ErrorBody {
            detail,
            code: self.code().to_owned(),
            request_id: crate::request_id::current(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Unavailable(_) => Some(RETRY_AFTER_SECS),
            _ => None,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What a 503 tells the client to wait before trying again, in seconds: about the time a
/// restarting Postgres takes to accept connections again.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The answer while the database cannot be reached; the cause is logged, not shown.
pub fn database_unavailable(cause: &dyn std::fmt::Display) -> Error {
    tracing::warn!(error = %cause, "database unavailable");
    Error::Unavailable("the database is unavailable; retry in a few seconds".into())
}

/// Whether a database error means "cannot reach Postgres now" rather than "this request is
/// wrong": no connection in time, a refused or broken connection, or a server shutting down,
/// starting up or out of connection slots (SQLSTATE class 08, 57P01–57P03, 53300).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// `lock` or `statement` when Postgres gave up on a statement at one of the pool's
/// `db::Timeouts` (SQLSTATE 55P03 `lock_not_available`, 57014 `query_canceled`): the request
/// waited too long behind another, which a retry usually gets past.
fn timed_out(e: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.code().as_deref() {
        Some("55P03") => Some("lock"),
        Some("57014") => Some("statement"),
        _ => None,
    }
}

/// Constraint violations become client errors by constraint name; an unreachable database is a
/// 503; the rest are 500s.
/// This is what lets handlers INSERT and let the database decide, instead of SELECT-then-INSERT.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            metrics::counter!("windi_db_pool_timeouts_total").increment(1);
        }
        if let sqlx::Error::Database(db) = &e {
            match db.constraint() {
                Some("users_email_key") => {
                    return Self::Conflict {
                        code: "email_taken",
                        detail: "email: already registered".into(),
                    };
                }
                // A participant deleted between the check and the insert.
                Some("chat_members_user_id_fkey") | Some("blocks_blocked_id_fkey") => {
                    return Self::NotFound("user");
                }
                // A valid token whose user is gone (e.g. the database was reset).
                Some("messages_sender_id_fkey") | Some("chats_creator_id_fkey") => {
                    return Self::Unauthorized("the token's user no longer exists");
                }
                _ => {}
            }
        }
        if let Some(kind) = timed_out(&e) {
            metrics::counter!("windi_db_timeouts_total", "kind" => kind).increment(1);
            tracing::warn!(error = %e, kind, "a statement gave up (db::Timeouts)");
            return Self::Unavailable(
                "busy: the change waited too long for its turn; nothing was changed, retry in \
                 a few seconds"
                    .into(),
            );
        }
        if is_unavailable(&e) {
            return database_unavailable(&e);
        }
        Self::Database(e)
    }
}

/// 400 for syntax, 422 for the wrong shape, 413/415 for the request as a whole. The detail is
/// serde's message, which names the field and position ("missing field `text` at line 1 ...").
impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        let detail = r.body_text();
        match r {
            JsonRejection::JsonSyntaxError(_) => Self::BadRequest {
                code: "malformed_json",
                detail,
            },
            JsonRejection::JsonDataError(_) => Self::Validation {
                code: "invalid_body",
                detail,
            },
            other => rejected(other.status(), detail),
        }
    }
}

impl From<FormRejection> for Error {
    fn from(r: FormRejection) -> Self {
        let status = r.status();
        let detail = r.body_text();
        match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Self::Validation {
                code: "invalid_body",
                detail,
            },
            other => rejected(other, detail),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Self::BadRequest {
            code: "invalid_path",
            detail: r.body_text(),
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Self::Validation {
            code: "invalid_query",
            detail: r.body_text(),
        }
    }
}

fn rejected(status: StatusCode, detail: String) -> Error {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => return Error::Internal(detail),
        _ => "bad_request",
    };
    Error::Rejected {
        status,
        code,
        detail,
    }
}
