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
//! The two answers must never contradict what was stored, so each request carries a small
//! state machine ([`Phase`]), moved by [`commit`] and by the deadline, whichever comes first:
//! - the deadline passes while the request is still `Open`: it answers 503, and a later
//!   [`commit`] rolls back instead ("unavailable" never hides a write);
//! - [`commit`] starts while it is `Open`: it is `Committing`, and the deadline no longer answers
//!   503 on its own. It waits [`COMMIT_GRACE`] more for the handler: a COMMIT that returns is
//!   answered as the success it is. Only a COMMIT that hangs past that is answered 503 with
//!   "outcome unknown" (a retry with the same key finds it if it landed).
//!
//! Work after the commit (events) is bounded by [`remaining`], so it never delays the answer
//! past the deadline (see [`crate::write`]).
//!
//! The cost is one task spawn and one atomic per request, against a database round trip of
//! tens of microseconds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::{extract::Request, middleware::Next, response::IntoResponse, response::Response};
use sqlx::{Postgres, Transaction};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};

/// How long a client waits for any answer. Above the pool's acquire timeout (an unreachable
/// database answers 503 from there first) and the lock timeout.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How much longer a request whose COMMIT is on the wire at its deadline is waited for.
pub const COMMIT_GRACE: Duration = Duration::from_secs(3);

/// Where a request stands against its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Nothing committed yet; the deadline may still answer 503.
    Open = 0,
    /// A COMMIT is on the wire, or returned: the answer waits for the handler.
    Committing = 1,
    /// Answered 503 at the deadline: nothing may commit any more.
    Expired = 2,
}

/// The deadline and phase of one request, shared by the middleware and the handler's task.
#[derive(Debug)]
pub struct RequestClock {
    deadline: Instant,
    phase: AtomicU8,
}

impl RequestClock {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            phase: AtomicU8::new(Phase::Open as u8),
        }
    }

    /// `Open` → `Committing` (also when already committing: a handler may commit twice).
    /// False once the request has expired.
    pub fn begin_commit(&self) -> bool {
        self.phase
            .compare_exchange(
                Phase::Open as u8,
                Phase::Committing as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_or_else(|now| now == Phase::Committing as u8, |_| true)
    }

    /// `Open` → `Expired`. False if a commit already started: the request must be waited for.
    pub fn expire(&self) -> bool {
        self.phase
            .compare_exchange(
                Phase::Open as u8,
                Phase::Expired as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_or_else(|now| now == Phase::Expired as u8, |_| true)
    }
}

tokio::task_local! {
    /// The clock of the request this task serves.
    static CLOCK: Arc<RequestClock>;
}

/// Runs `work` as a request with this clock (the middleware's, and tests').
pub async fn scoped<F: Future>(clock: Arc<RequestClock>, work: F) -> F::Output {
    CLOCK.scope(clock, work).await
}

/// Commits, unless the request's client has already been answered 503 (past its deadline):
/// then rolls back, so "unavailable" never hides a write. Outside an HTTP request (the relay's
/// `send` frame, `windi admin`) it simply commits.
pub async fn commit(tx: Transaction<'_, Postgres>) -> Result<()> {
    let may_commit = CLOCK.try_with(|c| c.begin_commit()).unwrap_or(true);
    if !may_commit {
        tx.rollback().await?;
        return Err(Error::Unavailable(
            "no answer in time; nothing was changed, retry in a few seconds".into(),
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// The time left before this request's answer is due; `None` outside a request.
pub fn remaining() -> Option<Duration> {
    CLOCK
        .try_with(|c| c.deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// The middleware (`axum::middleware::from_fn(run_to_completion)`).
pub async fn run_to_completion(request: Request, next: Next) -> Response {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let clock = Arc::new(RequestClock::new(deadline));
    let mut handler = tokio::spawn(scoped(clock.clone(), next.run(request).in_current_span()));
    let finished = match tokio::time::timeout_at(deadline, &mut handler).await {
        Ok(finished) => finished,
        Err(_) if clock.expire() => {
            tracing::warn!(
                deadline = ?REQUEST_DEADLINE,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_expires_only_while_nothing_commits() {
        let clock = RequestClock::new(Instant::now());
        assert!(clock.begin_commit());
        assert!(!clock.expire(), "a commit on the wire is waited for");
        assert!(clock.begin_commit(), "a second commit of the same request");

        let clock = RequestClock::new(Instant::now());
        assert!(clock.expire());
        assert!(clock.expire(), "expiring twice is the same answer");
        assert!(!clock.begin_commit(), "an answered 503 commits nothing");
    }
}
