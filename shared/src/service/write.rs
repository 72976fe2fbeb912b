//! The one write path: how every change is committed and told.
//!
//! Every route that writes (a message sent, edited, deleted or reacted to, a group created or
//! its members changed, a read marker, an account change) ends the same way, here:
//!
//! 1. **Commit under the request's deadline** ([`commit_without_events`], with the request's
//!    [`RequestClock`]): a request already answered 503 rolls back; a COMMIT that started is
//!    waited for.
//! 2. **Once COMMIT has returned, the answer is the success answer.** What follows — telling
//!    the relays ([`announce`]) — can only log and count: it never fails the request and never
//!    delays its answer past the deadline. A long-running server hands events to a background
//!    publisher and answers at once; on Lambda the publish is awaited, bounded by the time the
//!    request has left (and by [`PUBLISH_TIMEOUT`]), and the relay's poller covers a miss.
//!
//! A reviewer can check that nothing bypasses it: outside this module `tx.commit()` appears
//! only where no request waits (the generator, benchmarks, tests), and `events.publish` only here
//! (`grep -rn 'tx.commit()\|events.publish(' --include=*.rs`).
//!
//! ## The request clock
//!
//! The HTTP edge answers every request within a deadline (`crate::http::deadline`), while the
//! handler goes on to completion on a task of its own. The two answers must never contradict
//! what was stored, so each request carries a small state machine ([`Phase`] in a
//! [`RequestClock`]), moved by the commit here and by the deadline there, whichever comes
//! first:
//! - the deadline passes while the request is still `Open`: it answers 503, and a later commit
//!   rolls back instead ("unavailable" never hides a write);
//! - a commit starts while it is `Open`: it is `Committing`, and the deadline no longer answers
//!   503 on its own but waits a grace more for the handler: a COMMIT that returns is answered
//!   as the success it is.
//!
//! The clock lives here, with the commit it guards, and reaches the commit through a
//! task-local ([`scoped`]), so that a change committed outside any HTTP request (the relay's
//! `send` frame, `windi admin`) takes the same path and simply commits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::time::Instant;

use crate::{
    domain::error::{Error, Result},
    events::{Event, PUBLISH_TIMEOUT},
    service::state::AppState,
    store::members,
};

/// What an answer keeps back from the deadline for itself (serialising and writing it).
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// Commits `tx` under the deadline rule, then tells the relays `events` (after the commit,
/// never instead of it). Errors only if the commit did not happen.
pub async fn commit(
    state: &AppState,
    tx: Transaction<'_, Postgres>,
    events: Vec<Event>,
) -> Result<()> {
    commit_without_events(tx).await?;
    announce(state, events).await;
    Ok(())
}

/// Publishes events of a change that committed, within what the request has left. Never fails:
/// a publish not done in time is counted (`windi_event_publish_failures_total{stage="deadline"}`)
/// and the relays find the change by rev.
pub async fn announce(state: &AppState, events: Vec<Event>) {
    if !events.is_empty() {
        within_budget(state.events.publish(events)).await;
    }
}

/// Publishes ephemeral news (typing, a renamed member) within what the request has left; like
/// [`announce`], never fails and never delays the answer past the deadline.
pub async fn announce_ephemeral(state: &AppState, events: Vec<Event>) {
    within_budget(async {
        for event in events {
            state.events.publish_ephemeral(event).await;
        }
    })
    .await;
}

/// Runs a publish for at most what the request has left ([`publish_budget`]); one not done
/// by then is given up, counted and logged: the relays catch up by rev.
async fn within_budget(publish: impl Future<Output = ()>) {
    let budget = publish_budget(remaining());
    if tokio::time::timeout(budget, publish).await.is_err() {
        metrics::counter!("windi_event_publish_failures_total", "stage" => "deadline").increment(1);
        tracing::warn!(
            ?budget,
            "events not published before the answer was due; the relays catch up by rev"
        );
    }
}

/// How long a publish may take: [`PUBLISH_TIMEOUT`], or less when the request's answer is due
/// sooner (`left`), keeping [`ANSWER_MARGIN`] for the answer itself.
fn publish_budget(left: Option<Duration>) -> Duration {
    left.map_or(PUBLISH_TIMEOUT, |left| {
        left.saturating_sub(ANSWER_MARGIN).min(PUBLISH_TIMEOUT)
    })
}

/// Takes `member` out of group `chat_id` as change `rev`, which the caller took with the chat's
/// lock: the one way anyone leaves a group (removed by its owner, leaving, or deleting their
/// account). An owner who leaves hands the group to the longest-standing member. `None` if
/// they were not a member; else the chat's events: the leaving, and the hand-over (a change
/// of its own, the next rev) if there was one. The caller adds the user's own `chat.removed`,
/// which needs their `member_rev`.
pub async fn remove_member(
    conn: &mut PgConnection,
    chat_id: i64,
    member: i64,
    rev: i64,
) -> Result<Option<Vec<Event>>> {
    let Some(role) = members::role(&mut *conn, chat_id, member).await? else {
        return Ok(None);
    };
    members::remove(&mut *conn, chat_id, member, rev).await?;
    let mut events = vec![Event::MemberLeft {
        chat_id,
        rev,
        user_id: member,
    }];
    if role == "owner"
        && let Some((owner, rev)) = members::promote_eldest(&mut *conn, chat_id).await?
    {
        events.push(Event::MemberPromoted {
            chat_id,
            rev,
            user_id: owner,
        });
    }
    Ok(Some(events))
}

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
pub(crate) struct RequestClock {
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
    fn begin_commit(&self) -> bool {
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
    pub(crate) fn expire(&self) -> bool {
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

/// Runs `work` as a request with this clock (the HTTP edge's deadline layer, and tests').
pub(crate) async fn scoped<F: Future>(clock: Arc<RequestClock>, work: F) -> F::Output {
    CLOCK.scope(clock, work).await
}

/// Commits, unless the request's client has already been answered 503 (past its deadline):
/// then rolls back, so "unavailable" never hides a write. Outside an HTTP request (the relay's
/// `send` frame, `windi admin`) it simply commits. For a change with nothing to announce
/// (`windi admin disable`: the relays learn of ended sessions from Postgres); every other
/// change commits with [`commit`].
pub async fn commit_without_events(tx: Transaction<'_, Postgres>) -> Result<()> {
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
fn remaining() -> Option<Duration> {
    CLOCK
        .try_with(|c| c.deadline.saturating_duration_since(Instant::now()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_never_runs_into_the_answers_deadline() {
        assert_eq!(publish_budget(None), PUBLISH_TIMEOUT);
        assert_eq!(
            publish_budget(Some(Duration::from_secs(4))),
            PUBLISH_TIMEOUT
        );
        assert_eq!(
            publish_budget(Some(Duration::from_millis(1_700))),
            Duration::from_millis(1_600)
        );
        assert_eq!(
            publish_budget(Some(Duration::from_millis(50))),
            Duration::ZERO
        );
    }

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
