//! Every request runs to completion on a task of its own, and is answered within a deadline —
//! and a request whose change committed is answered as a success.
//!
//! Two faults make the task necessary:
//! - **A client that hangs up mid-request.** hyper then drops the handler's future wherever it
//!   is. Dropped between `BEGIN` and `COMMIT`, a transaction's connection goes back to the pool
//!   with the transaction still open, so the next request's statements join the abandoned
//!   transaction. On its own task, the handler is never cancelled: it commits or rolls back,
//!   and its connection comes back clean.
//! - **A Postgres that stops answering** (paused, partitioned): queries on open connections
//!   wait forever, and so would the client. After [`REQUEST_DEADLINE`] the client gets 503
//!   `unavailable` with `Retry-After` while the handler finishes on its own.
//!
//! The two answers must never contradict what was stored, so each request carries a
//! [`RequestClock`], which the write path's commit moves too (see [`crate::service::write`]):
//! - the deadline passes while the request is still open: it answers 503, and a later commit
//!   rolls back instead ("unavailable" never hides a write);
//! - a commit starts first: the deadline no longer answers 503 on its own. It waits
//!   [`COMMIT_GRACE`] more for the handler: a COMMIT that returns is answered as the success it
//!   is. Only a COMMIT that hangs past that is answered 503 with "outcome unknown" (a retry with
//!   the same key finds it if it landed).
//!
//! Work after the commit (events) is bounded by the time the clock has left, so it never
//! delays the answer past the deadline.
//!
//! The cost is one task spawn and one atomic per request, against a database round trip of
//! tens of microseconds.

use std::{sync::Arc, time::Duration};

use axum::{extract::Request, middleware::Next, response::IntoResponse, response::Response};
use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    domain::error::Error,
    service::write::{RequestClock, scoped},
};

/// How long a client waits for any answer. Above the pool's acquire timeout (an unreachable
/// database answers 503 from there first) and the lock timeout.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The deadline of a request to the file folder's links (`/files/…`), which carry up to
/// 25 MiB from a client on any connection: at 256 KiB/s, about 100 s.
const FILE_DEADLINE: Duration = Duration::from_secs(120);

/// How much longer a request whose COMMIT is on the wire at its deadline is waited for.
const COMMIT_GRACE: Duration = Duration::from_secs(3);

/// The middleware (`axum::middleware::from_fn(run_to_completion)`).
pub(crate) async fn run_to_completion(request: Request, next: Next) -> Response {
    let limit = if request.uri().path().starts_with("/files/") {
        FILE_DEADLINE
    } else {
        REQUEST_DEADLINE
    };
    let deadline = Instant::now() + limit;
    let clock = Arc::new(RequestClock::new(deadline));
    let mut handler = tokio::spawn(scoped(clock.clone(), next.run(request).in_current_span()));
    let finished = match tokio::time::timeout_at(deadline, &mut handler).await {
        Ok(finished) => finished,
        Err(_) if clock.expire() => {
            tracing::warn!(
                deadline = ?limit,
                "no answer within the deadline; the handler finishes on its own"
            );
            return Error::Unavailable("no answer in time; retry in a few seconds".into())
                .into_response();
        }
        // The change is committing or committed: its answer is the one to give.
        Err(_) => match tokio::time::timeout(COMMIT_GRACE, handler).await {
            Ok(finished) => finished,
            Err(_) => {
                tracing::error!("a COMMIT did not return within the grace; outcome unknown");
                metrics::counter!("windi_commit_outcome_unknown_total").increment(1);
                return Error::Unavailable(
                    "no answer in time; the change may have been stored: retry with the same \
                     dedup_key to find out"
                        .into(),
                )
                .into_response();
            }
        },
    };
    finished.unwrap_or_else(|e| Error::Internal(format!("handler failed: {e}")).into_response())
}
