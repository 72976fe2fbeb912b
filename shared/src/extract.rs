//! Extractors whose rejections answer with our error body, and the `AuthUser` extractor.
//!
//! axum's own extractors reject with plain text; wrapping them means a malformed body, path or
//! query gets the same `{"detail", "code"}` JSON as every other error.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;
use std::time::Instant;

use crate::{db::sessions, error::Error, state::AppState};

/// `axum::Json` with our rejection.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

/// `axum::extract::Path` with our rejection.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with our rejection.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// A body that is JSON when the content type says so and a URL-encoded form otherwise: the OAuth2
/// password flow (Swagger's Authorize button, the seed's clients) posts forms, API clients JSON.
#[derive(Debug)]
pub struct JsonOrForm<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        if is_json {
            let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else {
            let axum::Form(value) = axum::Form::<T>::from_request(req, state).await?;
            Ok(Self(value))
        }
    }
}

/// The caller, proven by a valid `Authorization: Bearer <token>` of a live session. A handler
/// that takes this argument cannot run without one.
///
/// Besides the signature and expiry, the token's session must be live: one primary-key read
/// ([`sessions::check`]), skipped for a session this process checked in the last minute while
/// its cache is in sync ([`crate::session_cache`]: an ending here takes effect at once, one
/// elsewhere within about a second; a Lambda instance reads on every request).
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: i64,
    /// The session the token names.
    pub session_id: i64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts.headers.get(header::AUTHORIZATION))
            .ok_or(Error::Unauthorized(crate::auth::TOKEN_REFUSED))?;
        let subject = state.tokens.verify(token)?;
        let user = Self {
            id: subject.user_id,
            session_id: subject.session_id,
        };
        let Err(ticket) = state
            .sessions
            .lookup(user.session_id, user.id, Instant::now())
        else {
            metrics::counter!("windi_session_checks_total", "source" => "cache").increment(1);
            return Ok(user);
        };
        metrics::counter!("windi_session_checks_total", "source" => "postgres").increment(1);
        if !sessions::check(&state.db, user.session_id, user.id).await? {
            return Err(Error::Unauthorized(crate::auth::TOKEN_REFUSED));
        }
        state
            .sessions
            .remember(ticket, user.session_id, user.id, Instant::now());
        Ok(user)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(value: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Where a request came from, for the per-address login limit: the TCP peer when windi serves
/// the request itself; without one (Lambda) the last `X-Forwarded-For` hop, which is the
/// address API Gateway saw (hops before it are the client's to write, so they are not trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>()
        {
            return Ok(Self(peer.ip().to_string()));
        }
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|hop| hop.trim().to_owned())
            .filter(|hop| !hop.is_empty());
        Ok(Self(forwarded.unwrap_or_else(|| "unknown".into())))
    }
}
