//! Every request runs to completion on a task of its own, and is answered within a deadline.
//!
//! Two faults make this necessary:
//! - **A client that hangs up mid-request.** hyper then drops the handler's future wherever it
//!   is. Dropped between `BEGIN` and `COMMIT`, a transaction's connection goes back to the pool
//!   with the transaction still open (sqlx logs "there is already a transaction in progress"
//!   when the next request on it begins), so that request's statements join the abandoned
//!   transaction, and its `COMMIT` commits the half-written work of both. On its own task, the
//!   handler is never cancelled: it commits or rolls back, and its connection comes back clean.
//! - **A Postgres that stops answering** (paused, partitioned): queries on open connections
//!   wait forever, and so would the client. After [`REQUEST_DEADLINE`] the client gets 503
//!   `unavailable` with `Retry-After` while the handler finishes on its own — and since the
//!   client was told "not done", the handler must not commit then: [`commit`] rolls back a
//!   transaction whose request is past its deadline. (A COMMIT already on the wire when the
//!   deadline passes can still land; a retry with the same `dedup_key` finds it.)
//!
//! The cost is one task spawn per request (about a microsecond), against a database round trip
//! of tens of microseconds.

use std::time::Duration;

use axum::{extract::Request, middleware::Next, response::IntoResponse, response::Response};
use sqlx::{Postgres, Transaction};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};

tokio::task_local! {
    /// When the client of the request this task serves stops waiting.
    static DEADLINE: Instant;
}

/// Commits, unless the request's client has already been answered 503 (past its deadline):
/// then rolls back, so "unavailable" never hides a write. Outside an HTTP request (the relay's
/// `send` frame) it simply commits.
pub async fn commit(tx: Transaction<'_, Postgres>) -> Result<()> {
    let late = DEADLINE
        .try_with(|&at| Instant::now() >= at)
        .unwrap_or(false);
    if late {
        tx.rollback().await?;
        return Err(Error::Unavailable(
            "no answer in time; nothing was changed, retry in a few seconds".into(),
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// How long a client waits for any answer. Above the pool's acquire timeout (an unreachable
/// database answers 503 from there first) and the publish timeout.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The middleware (`axum::middleware::from_fn(run_to_completion)`).
pub async fn run_to_completion(request: Request, next: Next) -> Response {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let handler = tokio::spawn(DEADLINE.scope(deadline, next.run(request).in_current_span()));
    match tokio::time::timeout_at(deadline, handler).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => Error::Internal(format!("handler failed: {e}")).into_response(),
        Err(_) => {
            tracing::warn!(
                deadline = ?REQUEST_DEADLINE,
                "no answer within the deadline; the handler finishes on its own"
            );
            Error::Unavailable("no answer in time; retry in a few seconds".into()).into_response()
        }
    }
}
