//! The request id: taken from the client's `x-request-id` or made (a UUID v4), answered in the
//! same header, recorded on the request's span (so every log line of the request carries it)
//! and put in error bodies.
//!
//! tower-http's request-id layers set and echo the header; [`scope`] makes the id visible to
//! code that only has the error at hand (`Error::into_response`) through a task-local, which
//! lives exactly as long as the request's future.

use axum::{extract::Request, http::HeaderName, middleware::Next, response::Response};

/// `x-request-id`, the header load balancers and proxies already use for this.
pub(crate) static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id kept; a longer one is replaced by a fresh one, so a client
/// cannot make every log line of its requests arbitrarily long.
const MAX_CLIENT_ID_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Middleware: runs the rest of the request with its id in [`current`].
pub async fn scope(request: Request, next: Next) -> Response {
    let id = of(&request).unwrap_or_default().to_owned();
    CURRENT.scope(id, next.run(request)).await
}

/// The id on a request (after the request-id layer has run).
pub fn of<B>(request: &axum::http::Request<B>) -> Option<&str> {
    request.headers().get(&HEADER)?.to_str().ok()
}

/// Drops a client id that is too long or not printable ASCII, so the request-id layer makes a fresh one.
pub(crate) async fn sanitise(mut request: Request, next: Next) -> Response {
    let usable = request.headers().get(&HEADER).is_some_and(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_CLIENT_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    if !usable {
        request.headers_mut().remove(&HEADER);
    }
    next.run(request).await
}
