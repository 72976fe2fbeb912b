//! Errors as answers: how the one [`Error`] is written to an HTTP client, and how axum's own
//! rejections (a malformed body, path or query) become one.
//!
//! Every answer that is not a success is the JSON body `{"detail": "...", "code": "..."}`
//! ([`ErrorBody`]) with the error's status. Client errors name what is wrong. Server errors are
//! opaque to the client (`"internal error"`) and carry their cause to the log. The relay writes
//! the same body into its `error` frames, so a send refused over a WebSocket reads like one
//! refused over HTTP.

use axum::{
    Json,
    extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{domain::error::Error, http::request_id};

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

impl ErrorBody {
    /// `error` as the JSON body a client sees (opaque for 5xx), with the id of the request
    /// being served on this task, if any.
    pub fn of(error: &Error) -> Self {
        let detail = match error {
            Error::Database(_) | Error::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        Self {
            detail,
            code: error.code().to_owned(),
            request_id: request_id::current(),
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
        let mut response = (status, Json(ErrorBody::of(&self))).into_response();
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
const RETRY_AFTER_SECS: u64 = 2;

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
