//! Serving a function's router as an AWS Lambda handler behind API Gateway.
//!
//! The Lambda path adds nothing to the application: `lambda_http` turns each API Gateway event
//! into an `http::Request`, the same `Router` the local server runs answers it, and the answer
//! goes back as the response event. The one thing done here is putting the path back the way
//! the client sent it, which is what the router expects, for two reasons:
//!
//! - **The stage.** API Gateway and `lambda_http` may put it in front of the route:
//!   - REST API (payload v1): the event's `path` has no stage, but `lambda_http` prepends
//!     `/{stage}` unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set.
//!   - HTTP API (payload v2) on a named stage: API Gateway itself puts the stage in `rawPath`,
//!     and that variable does not help (aws-lambda-rust-runtime issue #919). The `$default`
//!     stage has no prefix, which is what `template.yaml` deploys.
//! - **Percent-encoding.** A client percent-encodes what may not stand in a path, e.g. a
//!   reaction's emoji (`/chat/message/1/reactions/%F0%9F%91%8D`). An HTTP API hands the path on
//!   *decoded* in `rawPath` (`.../reactions/👍`), and `lambda_http` builds the URI from it with
//!   a URL parser, which encodes the emoji again but takes a decoded `#` or `?` for URL syntax:
//!   the keycap emoji #️⃣ (`%23%EF%B8%8F%E2%83%A3`) came out as `.../reactions/` and a fragment,
//!   a 404. A path that arrives still encoded (REST APIs, function URLs) must not be encoded
//!   twice, so [`encode_path`] encodes only what cannot stand literally in an encoded path,
//!   and leaves `%` followed by two hex digits alone. (Not recoverable: a decoded path with a
//!   literal `%XX` in it, e.g. the reaction `%41` sent as `%2541`, is read as encoded.)
//!
//! So the route is taken from the event's own raw path, not from the URI `lambda_http` built,
//! by [`restore_path`], a wrapper *outside* the router: a `Router::layer` runs after routing has
//! already picked a route (here: the 404 fallback), too late to help.
//!
//! Publishing needs no flush here: handlers await their NATS publishes (bounded by
//! [`crate::events::PUBLISH_TIMEOUT`]) before they answer, so nothing is left in flight when
//! Lambda freezes the process after the response.

use std::borrow::Cow;

use axum::Router;
use lambda_http::{
    Adapter, Request, RequestExt,
    http::{Uri, uri::PathAndQuery},
    request::RequestContext,
    tower::util::MapRequest,
};

/// The HTTP service Lambda serves: the router behind the path-restoring wrapper.
pub type PathRestored = MapRequest<Router, fn(Request) -> Request>;

/// The Lambda entry point of a function: takes a decoded API Gateway event, answers a response
/// event. This is exactly what [`run`] hands to the Lambda runtime, so tests can drive it in
/// process with the same event files `cargo lambda invoke` sends.
pub type Handler = Adapter<'static, axum::response::Response, PathRestored>;

/// Wraps `app` so that requests reach it with the path the client sent (see [`restore_path`]).
pub fn service(app: Router) -> PathRestored {
    MapRequest::new(app, restore_path as fn(Request) -> Request)
}

/// The event handler for `app` (see [`Handler`]).
pub fn handler(app: Router) -> Handler {
    Adapter::from(service(app))
}

/// Serves `app` under the Lambda runtime until the platform stops the process. The caller builds
/// the state (pool, keys, NATS client) once before this, so every invocation of the container
/// reuses it.
pub async fn run(app: Router) -> Result<(), lambda_http::Error> {
    lambda_http::lambda_runtime::run(handler(app)).await
}

/// Sets the request's path to the route the client asked for: the event's raw path (`rawPath`
/// of v2, `path` of v1), without the stage API Gateway put in front of a v2 one, and
/// percent-encoded where API Gateway decoded it.
///
/// The stage is recognised by the event itself (its stage and raw path), not the environment,
/// so this is right whether or not `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set. One case stays
/// ambiguous: on a custom domain without the stage in the path, a v2 route whose first segment
/// is the stage's name is cut — one more reason to use the `$default` stage. Events of other
/// sources (ALB, pass-through) are left as `lambda_http` built them.
fn restore_path(mut request: Request) -> Request {
    let (stage, in_raw_path) = match request.request_context_ref() {
        // REST API: `path` is the resource path, never with the stage.
        Some(RequestContext::ApiGatewayV1(context)) => (context.stage.clone(), false),
        // HTTP API: a named stage is the first segment of `rawPath`.
        Some(RequestContext::ApiGatewayV2(context)) => (context.stage.clone(), true),
        _ => return request,
    };
    let raw_path = request.raw_http_path();
    if raw_path.is_empty() {
        return request;
    }
    let mut route = raw_path;
    if let Some(stage) = stage.filter(|s| in_raw_path && !s.is_empty() && s != "$default")
        && let Some(rest) = after_stage(route, &stage)
    {
        route = rest;
    }
    let route = if route.is_empty() {
        Cow::Borrowed("/")
    } else {
        encode_path(route)
    };
    // A decoded `#` or `?` in the raw path cut the URI lambda_http built short before its query:
    // then the query comes from the event's parameters instead.
    let query = if raw_path.contains(['#', '?']) {
        request
            .query_string_parameters_ref()
            .map(|params| params.to_query_string())
    } else {
        request.uri().query().map(str::to_owned)
    };
    if route == request.uri().path() && query.as_deref() == request.uri().query() {
        return request;
    }
    let path_and_query = match query {
        Some(query) if !query.is_empty() => format!("{route}?{query}"),
        _ => route.into_owned(),
    };
    // encode_path leaves only characters valid in a path, so this parses; if not, keep the
    // request as it was and let the router answer.
    if let Ok(path_and_query) = path_and_query.parse::<PathAndQuery>() {
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// `path` without a leading `/{stage}` segment, if it has one (`""` for the stage alone).
fn after_stage<'a>(path: &'a str, stage: &str) -> Option<&'a str> {
    path.strip_prefix('/')?
        .strip_prefix(stage)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` with every byte percent-encoded that cannot stand literally in an encoded path
/// (RFC 3986 `pchar` and `/`), so a decoded path is encoded and an encoded one left as it is:
/// `%` stays when two hex digits follow it, and becomes `%25` when not.
fn encode_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let literal = |i: usize| match bytes[i] {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => true,
        b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@' => true,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
        b'%' => {
            bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        }
        _ => false,
    };
    if (0..bytes.len()).all(literal) {
        return Cow::Borrowed(path);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(path.len() * 3);
    for (i, &byte) in bytes.iter().enumerate() {
        if literal(i) {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Request {
        lambda_http::request::from_str(json).unwrap_or_else(|e| panic!("bad event: {e}"))
    }

    fn v2(stage: &str, raw_path: &str) -> Request {
        event(&format!(
            r#"{{"version": "2.0", "rawPath": "{raw_path}", "rawQueryString": "limit=5",
                "headers": {{"host": "abc.execute-api.eu-west-1.amazonaws.com"}},
                "requestContext": {{"stage": "{stage}",
                    "http": {{"method": "GET", "path": "{raw_path}"}}}},
                "isBase64Encoded": false}}"#
        ))
    }

    fn v1(stage: &str, path: &str) -> Request {
        event(&format!(
            r#"{{"resource": "{path}", "path": "{path}", "httpMethod": "GET",
                "headers": {{"Host": "abc.execute-api.eu-west-1.amazonaws.com"}},
                "queryStringParameters": {{"limit": "5"}},
                "requestContext": {{"stage": "{stage}", "httpMethod": "GET"}},
                "isBase64Encoded": false}}"#
        ))
    }

    fn path_and_query(request: &Request) -> String {
        request
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn a_named_http_api_stage_is_cut_from_the_path_and_the_query_kept() {
        let request = restore_path(v2("prod", "/prod/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn the_default_stage_leaves_the_path_alone() {
        let request = restore_path(v2("$default", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_stage_named_like_the_first_route_segment_is_cut_once() {
        let request = restore_path(v2("chat", "/chat/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn the_stage_lambda_http_puts_before_a_rest_path_is_removed() {
        let request = restore_path(v1("prod", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_rest_route_that_begins_with_the_stage_name_is_kept() {
        // lambda_http does not prepend when the path already starts with `/{stage}/`.
        let request = restore_path(v1("chat", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_path_that_is_only_the_stage_becomes_the_root() {
        assert_eq!(restore_path(v2("prod", "/prod")).uri().path(), "/");
        assert_eq!(restore_path(v1("prod", "/")).uri().path(), "/");
    }

    #[test]
    fn an_http_api_path_without_the_stage_loses_only_what_lambda_http_added() {
        // A custom domain mapped to a named stage: the stage is not in rawPath.
        let request = restore_path(v2("prod", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_stage_that_is_only_a_prefix_of_the_first_segment_is_kept() {
        let request = restore_path(v2("pro", "/prod/chat/list"));
        assert_eq!(request.uri().path(), "/prod/chat/list");
    }

    // What an HTTP API sends for PUT /chat/message/1/reactions/%F0%9F%91%8D: rawPath decoded.
    #[test]
    fn an_emoji_decoded_in_the_raw_path_is_encoded_again() {
        let request = restore_path(v2("$default", "/chat/message/1/reactions/👍"));
        assert_eq!(
            path_and_query(&request),
            "/chat/message/1/reactions/%F0%9F%91%8D?limit=5"
        );
    }

    #[test]
    fn a_decoded_hash_stays_in_the_path_and_the_query_is_kept() {
        // The keycap emoji #️⃣: lambda_http alone made `/chat/message/1/reactions/` of it.
        for stage in ["$default", "prod"] {
            let raw_path = if stage == "prod" {
                "/prod/chat/message/1/reactions/#️⃣"
            } else {
                "/chat/message/1/reactions/#️⃣"
            };
            let request = restore_path(v2(stage, raw_path));
            assert_eq!(
                path_and_query(&request),
                "/chat/message/1/reactions/%23%EF%B8%8F%E2%83%A3?limit=5",
                "stage {stage}"
            );
        }
        let request = restore_path(v1("prod", "/chat/message/1/reactions/#"));
        assert_eq!(
            path_and_query(&request),
            "/chat/message/1/reactions/%23?limit=5"
        );
    }

    #[test]
    fn a_path_that_arrives_encoded_is_not_encoded_twice() {
        for path in [
            "/chat/message/1/reactions/%F0%9F%91%8D",
            "/chat/message/1/reactions/%23%EF%B8%8F%E2%83%A3",
            "/chat/message/1/reactions/100%25",
            "/chat/message/1/reactions/a&b=c+d",
        ] {
            assert_eq!(restore_path(v2("$default", path)).uri().path(), path);
            assert_eq!(restore_path(v1("prod", path)).uri().path(), path);
        }
    }

    #[test]
    fn a_percent_sign_without_two_hex_digits_is_encoded() {
        let request = restore_path(v2("$default", "/chat/message/1/reactions/100%"));
        assert_eq!(request.uri().path(), "/chat/message/1/reactions/100%25");
        assert_eq!(encode_path("/a/%4"), "/a/%254");
        assert_eq!(encode_path("/a/%zz"), "/a/%25zz");
    }

    #[test]
    fn only_what_cannot_stand_in_a_path_is_encoded() {
        assert!(matches!(encode_path("/chat/list"), Cow::Borrowed(_)));
        assert_eq!(
            encode_path("/a b/\"<>^`{|}[]"),
            "/a%20b/%22%3C%3E%5E%60%7B%7C%7D%5B%5D"
        );
        assert_eq!(encode_path("/a?b#c"), "/a%3Fb%23c");
        assert_eq!(encode_path("/ok!$&'()*+,;=:@-._~"), "/ok!$&'()*+,;=:@-._~");
        assert_eq!(encode_path("/\u{7f}\u{1}"), "/%7F%01");
    }
}
