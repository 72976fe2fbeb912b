//! Extractors whose rejections answer with our error body, and the `AuthUser` extractor.
//!
//! axum's own extractors reject with plain text; wrapping them means a malformed body, path or
//! query gets the same `{"detail", "code"}` JSON as every other error.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header, request::Parts},
};
use serde::de::{
    Deserialize, DeserializeOwned, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer,
};
use std::{
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use crate::{
    domain::error::Error,
    service::{auth::TOKEN_REFUSED, state::AppState},
    store::sessions,
};

/// `axum::Json` with our rejection, taking a JSON object only. serde lets a struct be read from
/// an array of its fields in order (`[null, null]` would be a valid settings patch), which no
/// client means and the API's schema does not allow: every request body here is an object.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(Object(value)) = axum::Json::<Object<T>>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A `T` read from a JSON object and nothing else: the object's entries go straight to `T`'s
/// own deserializer (no copy, serde_json's positions in the errors), anything else is the
/// error "expected a JSON object".
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(PhantomData)).map(Object)
    }
}

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
            let Json(value) = Json::<T>::from_request(req, state).await?;
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
/// Besides the signature and expiry, the token's session must be live and its account neither
/// disabled nor deleted: one read ([`sessions::check`]), skipped for a session this process checked
/// in the last minute while its cache is in sync ([`crate::service::session_cache`]: an ending here
/// takes effect at once, one elsewhere, `windi admin disable` included, within about a second; a
/// Lambda instance reads on every request).
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
            .ok_or(Error::Unauthorized(TOKEN_REFUSED))?;
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
            return Err(Error::Unauthorized(TOKEN_REFUSED));
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

/// Where a request came from, for the per-address limits (failed logins, registrations and
/// email searches): an address in its canonical text (a `v4:port` or `[v6]:port` hop loses its
/// port), or a hop that is no address (a proxy's `unknown`) as written, cut to 64 bytes.
///
/// The client is found on the chain of addresses the request passed: the `X-Forwarded-For`
/// hops, left to right (over all the header's lines), then the TCP peer. Without a peer
/// (Lambda) the last hop stands for it: API Gateway appends the address it saw, and nothing
/// writes after it. With `TRUSTED_PROXY_HOPS=N` ([`crate::config::LimitSettings`]), N proxies
/// in front each append the address they saw, so the client is N places left of the peer
/// (of API Gateway's view on Lambda); whatever stands further left the client wrote, and is
/// never trusted. With fewer hops than N the leftmost address of the chain is taken: the
/// request skipped a proxy (or one did not append), and that is the farthest address a
/// proxy wrote. N = 0, the default, makes the peer the client and ignores the header, which
/// a client can then forge at will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(Self(client_address(
            peer,
            &parts.headers,
            state.limits.trusted_proxy_hops,
        )))
    }
}

/// See [`ClientAddress`].
fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted_hops: u8) -> String {
    // Bytes, not `to_str`: a line the client made unreadable must not hide the hops a proxy
    // appended to it. Empty hops are skipped: no proxy writes one.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|hop| !hop.is_empty())
        .collect();
    let chain = hops.len() + usize::from(peer.is_some());
    // Fewer hops than trusted proxies: 0, the leftmost.
    let client = chain.saturating_sub(1 + usize::from(trusted_hops));
    match (hops.get(client), peer) {
        (Some(hop), _) => canonical(&String::from_utf8_lossy(hop)),
        (None, Some(peer)) => peer.to_string(),
        (None, None) => "unknown".into(),
    }
}

/// A hop as an address in canonical text, when it is one (with or without a port).
fn canonical(hop: &str) -> String {
    let unbracketed = hop
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(hop);
    let ip = unbracketed
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
    match ip {
        Ok(ip) => ip.to_string(),
        Err(_) => hop[..hop.floor_char_boundary(64)].to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: Option<&str>, lines: &[&str], hops: u8) -> String {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                "x-forwarded-for",
                axum::http::HeaderValue::from_bytes(line.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let peer = peer.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")));
        client_address(peer, &headers, hops)
    }

    #[test]
    fn the_client_is_the_trusted_hops_th_address_left_of_the_peer() {
        let peer = Some("10.0.0.2");
        // Off: the peer, whatever the header says.
        assert_eq!(client(peer, &["203.0.113.9"], 0), "10.0.0.2");
        // One proxy: the address it appended; what the client wrote before it is not taken.
        assert_eq!(client(peer, &["1.1.1.1, 203.0.113.9"], 1), "203.0.113.9");
        assert_eq!(client(peer, &["1.1.1.1", "203.0.113.9"], 1), "203.0.113.9");
        assert_eq!(
            client(peer, &["1.1.1.1, 203.0.113.9, 10.0.0.1"], 2),
            "203.0.113.9"
        );
        // Fewer hops than proxies: the leftmost address of the chain.
        assert_eq!(client(peer, &["203.0.113.9"], 3), "203.0.113.9");
        assert_eq!(client(peer, &[], 1), "10.0.0.2");
        // Ports and brackets dropped; IPv6 in canonical form; garbage cut short.
        assert_eq!(client(peer, &["[2001:DB8::1]:443"], 1), "2001:db8::1");
        assert_eq!(client(peer, &["203.0.113.9:5000"], 1), "203.0.113.9");
        assert_eq!(client(peer, &[&"u".repeat(1000)], 1).len(), 64);
        // A line the client made unreadable hides nothing a proxy appended.
        assert_eq!(
            client(peer, &["\u{e9}t\u{e9}, 203.0.113.9"], 1),
            "203.0.113.9"
        );
    }

    #[test]
    fn without_a_peer_api_gateways_hop_stands_for_it() {
        assert_eq!(client(None, &["1.1.1.1, 203.0.113.9"], 0), "203.0.113.9");
        assert_eq!(
            client(None, &["1.1.1.1, 203.0.113.9, 10.0.0.1"], 1),
            "203.0.113.9"
        );
        assert_eq!(client(None, &["203.0.113.9"], 2), "203.0.113.9");
        assert_eq!(client(None, &[], 0), "unknown");
    }
}
