//! The one write path: how every change is committed and told.
//!
//! Every route that writes (a message sent, edited, deleted or reacted to, a group created or
//! its members changed, a read marker, an account change) ends the same way, here:
//!
//! 1. **Commit under the request's deadline** ([`crate::deadline::commit`]): a request already
//!    answered 503 rolls back; a COMMIT that started is waited for.
//! 2. **Once COMMIT has returned, the answer is the success answer.** What follows — telling
//!    the relays ([`announce`]) — can only log and count: it never fails the request and never
//!    delays its answer past the deadline. A long-running server hands events to a background
//!    publisher and answers at once; on Lambda the publish is awaited, bounded by the time the
//!    request has left (and by [`PUBLISH_TIMEOUT`]), and the relay's poller covers a miss.
//!
//! A reviewer can check that nothing bypasses it: outside this module and `deadline`,
//! `tx.commit()` appears only where no request waits (`windi admin`, the generator), and
//! `events.publish` only here (`grep -rn 'tx.commit()\|events.publish(' --include=*.rs`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    db::members,
    deadline,
    error::{Error, Result},
    events::{Event, PUBLISH_TIMEOUT},
    state::AppState,
};

/// What an answer keeps back from the deadline for itself (serialising and writing it).
pub const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// Commits `tx` under the deadline rule, then tells the relays `events` (after the commit,
/// never instead of it). Errors only if the commit did not happen.
pub async fn commit(
    state: &AppState,
    tx: Transaction<'_, Postgres>,
    events: Vec<Event>,
) -> Result<()> {
    deadline::commit(tx).await?;
    announce(state, events).await;
    Ok(())
}

/// Publishes events of a change that committed, within what the request has left. Never fails:
/// a publish not done in time is counted (`windi_event_publish_failures_total{stage="deadline"}`)
/// and the relays find the change by rev.
pub async fn announce(state: &AppState, events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    let budget = publish_budget(deadline::remaining());
    if tokio::time::timeout(budget, state.events.publish(events))
        .await
        .is_err()
    {
        metrics::counter!("windi_event_publish_failures_total", "stage" => "deadline").increment(1);
        tracing::warn!(
            ?budget,
            "events not published before the answer was due; the relays catch up by rev"
        );
    }
}

/// Publishes ephemeral news (typing, a renamed member) within what the request has left; like
/// [`announce`], never fails and never delays the answer past the deadline.
pub async fn announce_ephemeral(state: &AppState, events: Vec<Event>) {
    let budget = publish_budget(deadline::remaining());
    let all = async {
        for event in events {
            state.events.publish_ephemeral(event).await;
        }
    };
    if tokio::time::timeout(budget, all).await.is_err() {
        metrics::counter!("windi_event_publish_failures_total", "stage" => "deadline").increment(1);
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
/// they were not a member; else the chat's event (the caller adds the user's own
/// `chat.removed`, which needs their `member_rev`).
pub async fn remove_member(
    conn: &mut PgConnection,
    chat_id: i64,
    member: i64,
    rev: i64,
) -> Result<Option<Event>> {
    let Some(role) = members::role(&mut *conn, chat_id, member).await? else {
        return Ok(None);
    };
    members::remove(&mut *conn, chat_id, member, rev).await?;
    if role == "owner" {
        members::promote_eldest(&mut *conn, chat_id).await?;
    }
    Ok(Some(Event::MemberLeft {
        chat_id,
        rev,
        user_id: member,
    }))
}

/// How many of this process's requests may be inside Postgres waiting on one chat's lock.
///
/// A chat's changes queue on its row lock in Postgres, each holding a pooled connection while
/// it waits; one long holder (or a flood into one chat) would otherwise take the whole pool,
/// and every other user's request would answer 503. The gate keeps the queue for one chat
/// in the process, where waiting costs no connection: at most [`ChatGates::per_chat`] requests
/// of a chat hold connections at once. Changes of one chat run one at a time anyway, so a few
/// in Postgres keep its lock busy; the rest wait here, up to the lock timeout, and then answer
/// 503 `busy` like a request that waited in Postgres.
#[derive(Debug)]
pub struct ChatGates {
    per_chat: usize,
    wait: Duration,
    open: Mutex<HashMap<i64, Arc<Semaphore>>>,
}

impl ChatGates {
    /// `per_chat` requests of one chat in Postgres at once; a request waits `wait` for its turn.
    pub fn new(per_chat: usize, wait: Duration) -> Self {
        Self {
            per_chat: per_chat.max(1),
            wait,
            open: Mutex::default(),
        }
    }

    /// For a pool of `pool_size`: a quarter of it per chat, at least 4.
    pub fn for_pool(pool_size: u32, wait: Duration) -> Self {
        Self::new((pool_size as usize / 4).max(4), wait)
    }

    pub fn per_chat(&self) -> usize {
        self.per_chat
    }

    /// Chats with a request inside or waiting (bounded by the requests in flight).
    pub fn open_chats(&self) -> usize {
        self.gates().len()
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Semaphore>>> {
        // The map stays consistent whatever a panicking holder was doing: take it over.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `chat_id`'s turn; 503 `busy` if it does not come within the wait.
    pub async fn enter(self: &Arc<Self>, chat_id: i64) -> Result<Pass> {
        let gate = self
            .gates()
            .entry(chat_id)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_chat)))
            .clone();
        let pass = Pass {
            gates: self.clone(),
            chat_id,
            gate: gate.clone(),
            permit: None,
        };
        let mut pass = pass;
        match tokio::time::timeout(self.wait, gate.acquire_owned()).await {
            Ok(Ok(permit)) => {
                pass.permit = Some(permit);
                Ok(pass)
            }
            _ => {
                metrics::counter!("windi_chat_gate_timeouts_total").increment(1);
                Err(Error::Unavailable(
                    "busy: too many changes of this chat at once; nothing was changed, retry in \
                     a few seconds"
                        .into(),
                ))
            }
        }
    }
}

/// A request's turn at one chat (see [`ChatGates`]); dropping it lets the next one in.
#[derive(Debug)]
pub struct Pass {
    gates: Arc<ChatGates>,
    chat_id: i64,
    gate: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut open = self.gates.gates();
        drop(self.permit.take());
        // Every handle on a gate is taken under the map's lock: with only the map's and ours
        // left, no one is inside or waiting, and the chat's entry can go.
        if Arc::strong_count(&self.gate) == 2 {
            open.remove(&self.chat_id);
        }
    }
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
}
