//! Serving a function's router as an AWS Lambda handler behind API Gateway.
//!
//! The Lambda path adds nothing to the application: `lambda_http` turns each API Gateway event
//! into an `http::Request`, the same `Router` the local server runs answers it, and the answer
//! goes back as the response event. The one thing done here is putting the path back the way
//! the router expects it, because API Gateway and `lambda_http` may put the *stage* in front:
//!
//! - REST API (payload v1): the event's `path` has no stage, but `lambda_http` prepends
//!   `/{stage}` unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set.
//! - HTTP API (payload v2) on a named stage: API Gateway itself puts the stage in `rawPath`, and
//!   that variable does not help (aws-lambda-rust-runtime issue #919). The `$default` stage has
//!   no prefix, which is what `template.yaml` deploys.
//!
//! The prefix is stripped by [`strip_stage`], a wrapper *outside* the router: a `Router::layer`
//! runs after routing has already picked a route (here: the 404 fallback), too late to help.
//!
//! Publishing needs no flush here: handlers await their NATS publishes (bounded by
//! [`crate::events::PUBLISH_TIMEOUT`]) before they answer, so nothing is left in flight when
//! Lambda freezes the process after the response.

use axum::Router;
use lambda_http::{
    Adapter, Request, RequestExt,
    http::{Uri, uri::PathAndQuery},
    request::RequestContext,
    tower::util::MapRequest,
};

/// The HTTP service Lambda serves: the router behind the stage-stripping wrapper.
pub type StageStripped = MapRequest<Router, fn(Request) -> Request>;

/// The Lambda entry point of a function: takes a decoded API Gateway event, answers a response
/// event. This is exactly what [`run`] hands to the Lambda runtime, so tests can drive it in
/// process with the same event files `cargo lambda invoke` sends.
pub type Handler = Adapter<'static, axum::response::Response, StageStripped>;

/// Wraps `app` so that requests reach it with API Gateway's stage removed from the path.
pub fn service(app: Router) -> StageStripped {
    MapRequest::new(app, strip_stage as fn(Request) -> Request)
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

/// Removes the API Gateway stage that precedes the route in the request's path, if any.
///
/// Up to two copies of `/{stage}` can lead the path `lambda_http` built: one API Gateway put in
/// a v2 event's raw path (a named HTTP API stage), and one `lambda_http` added in front of a raw
/// path that did not start with it. The decision uses the event itself (its stage and raw path),
/// not the environment, so it is right whether or not `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is
/// set. One case stays ambiguous: on a custom domain without the stage in the path, a v2 route
/// whose first segment is the stage's name is cut — one more reason to use the `$default` stage.
pub fn strip_stage(mut request: Request) -> Request {
    let (stage, in_raw_path) = match request.request_context_ref() {
        // REST API: `path` is the resource path, never with the stage.
        Some(RequestContext::ApiGatewayV1(context)) => (context.stage.clone(), false),
        // HTTP API: a named stage is the first segment of `rawPath`.
        Some(RequestContext::ApiGatewayV2(context)) => (context.stage.clone(), true),
        _ => (None, false),
    };
    let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default") else {
        return request;
    };
    let raw_path = request.raw_http_path();
    let path = request.uri().path();
    // One more segment than the event's path: lambda_http put the stage in front.
    let added_by_runtime = segments(path) == segments(raw_path) + 1;
    let added_by_gateway = in_raw_path && after_stage(raw_path, &stage).is_some();
    let mut route = path;
    for _ in 0..(usize::from(added_by_runtime) + usize::from(added_by_gateway)) {
        match after_stage(route, &stage) {
            Some(rest) => route = rest,
            None => return request,
        }
    }
    if route.len() == path.len() {
        return request;
    }
    let route = if route.is_empty() { "/" } else { route };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{route}?{query}"),
        None => route.to_owned(),
    };
    // The path came out of a valid URI, so its tail is valid too; if not, keep the request as
    // it was and let the router answer 404.
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

fn segments(path: &str) -> usize {
    path.matches('/').count()
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
        let request = strip_stage(v2("prod", "/prod/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn the_default_stage_leaves_the_path_alone() {
        let request = strip_stage(v2("$default", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_stage_named_like_the_first_route_segment_is_cut_once() {
        let request = strip_stage(v2("chat", "/chat/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn the_stage_lambda_http_puts_before_a_rest_path_is_removed() {
        let request = strip_stage(v1("prod", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_rest_route_that_begins_with_the_stage_name_is_kept() {
        // lambda_http does not prepend when the path already starts with `/{stage}/`.
        let request = strip_stage(v1("chat", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_path_that_is_only_the_stage_becomes_the_root() {
        assert_eq!(strip_stage(v2("prod", "/prod")).uri().path(), "/");
        assert_eq!(strip_stage(v1("prod", "/")).uri().path(), "/");
    }

    #[test]
    fn an_http_api_path_without_the_stage_loses_only_what_lambda_http_added() {
        // A custom domain mapped to a named stage: the stage is not in rawPath.
        let request = strip_stage(v2("prod", "/chat/list"));
        assert_eq!(path_and_query(&request), "/chat/list?limit=5");
    }

    #[test]
    fn a_stage_that_is_only_a_prefix_of_the_first_segment_is_kept() {
        let request = strip_stage(v2("pro", "/prod/chat/list"));
        assert_eq!(request.uri().path(), "/prod/chat/list");
    }
}
