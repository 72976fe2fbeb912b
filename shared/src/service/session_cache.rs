//! Which sessions this process has recently found live, so that an authenticated request does
//! not pay a Postgres round trip for the session check each time.
//!
//! Checking the session on every request is what makes logout take effect everywhere, but it
//! is one more statement per request: the send benchmark lost a quarter of its throughput to it
//! (`bench/send.sh`, docs/shell-benchmarks.md). Mattermost and Synapse keep a per-node cache of
//! sessions for the same reason; this one keeps revocation exact where it can be and bounded
//! where it cannot:
//!
//! - **In this process, at once.** Whatever ends sessions here calls [`SessionCache::forget`]
//!   after commit. A check that read "live" before that commit and finishes after it cannot
//!   put the session back: [`SessionCache::remember`] refuses an entry whose check started
//!   before the last forget (a generation counter).
//! - **Ended elsewhere (another API process, the admin CLI), within about a second.** A poller
//!   ([`spawn_sync`]) asks Postgres once a second for the sessions ended lately
//!   ([`crate::store::sessions::ended_since`]) and forgets them. Its window overlaps the previous
//!   poll by [`SYNC_OVERLAP`], so a session ended by a transaction that committed late (its
//!   `ended_at` is the transaction's start) is still seen.
//! - **Fail closed.** The cache answers only while the poller is in sync: if a poll fails or
//!   none succeeded for [`SYNC_GRACE`], every entry is dropped and each request checks
//!   Postgres again until a poll succeeds. A process without the poller (a Lambda instance,
//!   which is frozen between invocations) therefore never trusts the cache at all.
//! - An entry is trusted for [`ENTRY_TTL`] and then checked again; that check also moves the
//!   session's `last_used_at` (which moves at most once a minute anyway).
//! - **A disabled account** is an ending elsewhere: `windi admin disable` ends its sessions in
//!   the disabling transaction, so its access tokens are refused within about a second here
//!   (at most [`SYNC_GRACE`] if polls fail). The check reads the account too, so an account
//!   disabled without ending its sessions (by hand) is refused once its entries expire, within
//!   [`ENTRY_TTL`].
//!
//! The logic is pure (time is passed in) so the unit tests below drive it without a clock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::sessions;

/// How long a successful check is trusted before the session is read again.
const ENTRY_TTL: Duration = Duration::from_secs(60);
/// How often the poller looks for sessions ended elsewhere.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// With no successful poll for this long, the cache stops answering.
const SYNC_GRACE: Duration = Duration::from_secs(3);
/// How far back each poll reaches before the previous one's start: longer than any
/// transaction that ends sessions can run (requests have a 5 s deadline).
pub(crate) const SYNC_OVERLAP: Duration = Duration::from_secs(60);
/// At most this many sessions are remembered; beyond it, requests check Postgres.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    user_id: i64,
    checked_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<i64, Entry>,
    /// Bumped by every forget: a check that started before it may have read a stale "live".
    generation: u64,
    /// When the last poll succeeded; `None` until one has (or after one failed).
    synced_at: Option<Instant>,
    /// Postgres's `now()` at the start of the last successful poll.
    watermark: Option<DateTime<Utc>>,
}

/// See the module docs. One per process, shared through [`crate::AppState`].
#[derive(Debug, Default)]
pub struct SessionCache {
    inner: Mutex<Inner>,
}

/// Where a check stood when it began; hand it back to [`SessionCache::remember`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl SessionCache {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is this session of this user known live? `Err` means "ask Postgres", with the ticket
    /// to remember the answer by.
    pub fn lookup(&self, session_id: i64, user_id: i64, now: Instant) -> Result<(), Ticket> {
        let inner = self.inner();
        let in_sync = inner
            .synced_at
            .is_some_and(|at| now.saturating_duration_since(at) < SYNC_GRACE);
        match inner.live.get(&session_id) {
            Some(e)
                if in_sync
                    && e.user_id == user_id
                    && now.saturating_duration_since(e.checked_at) < ENTRY_TTL =>
            {
                Ok(())
            }
            _ => Err(Ticket(inner.generation)),
        }
    }

    /// Postgres found the session live in a check that began at `ticket`.
    pub(crate) fn remember(&self, ticket: Ticket, session_id: i64, user_id: i64, now: Instant) {
        let mut inner = self.inner();
        if ticket.0 != inner.generation || inner.synced_at.is_none() {
            return;
        }
        if inner.live.len() >= MAX_ENTRIES {
            inner
                .live
                .retain(|_, e| now.saturating_duration_since(e.checked_at) < ENTRY_TTL);
            if inner.live.len() >= MAX_ENTRIES {
                return;
            }
        }
        inner.live.insert(
            session_id,
            Entry {
                user_id,
                checked_at: now,
            },
        );
    }

    /// These sessions ended (here, after commit, or as a poll found).
    pub(crate) fn forget(&self, session_ids: &[i64]) {
        let mut inner = self.inner();
        inner.generation += 1;
        for id in session_ids {
            inner.live.remove(id);
        }
    }

    /// A poll that began when Postgres's clock read `db_now` succeeded and found `ended`.
    fn synced(&self, ended: &[i64], db_now: DateTime<Utc>, now: Instant) {
        self.forget(ended);
        let mut inner = self.inner();
        inner.synced_at = Some(now);
        inner.watermark = Some(db_now);
    }

    /// A poll failed: nothing cached is trusted until one succeeds.
    fn sync_failed(&self) {
        let mut inner = self.inner();
        inner.generation += 1;
        inner.live.clear();
        inner.synced_at = None;
    }

    /// Where the next poll starts looking.
    fn since(&self) -> Option<DateTime<Utc>> {
        let overlap = chrono::Duration::from_std(SYNC_OVERLAP).unwrap_or_default();
        self.inner().watermark.map(|w| w - overlap)
    }

    /// How many sessions are remembered (for `/metrics`).
    pub fn len(&self) -> usize {
        self.inner().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts the poller that keeps `cache` in sync with sessions ended elsewhere; it stops when
/// the cache is dropped. Long-running servers call this; Lambda does not (see the module docs).
pub(crate) fn spawn_sync(cache: &Arc<SessionCache>, db: PgPool) {
    let weak: Weak<SessionCache> = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cache) = weak.upgrade() else { return };
            match sessions::ended_since(&db, cache.since()).await {
                Ok((db_now, ended)) => cache.synced(&ended, db_now, Instant::now()),
                Err(e) => {
                    if cache.inner().synced_at.is_some() {
                        tracing::warn!(error = %e, "session sync failed; checking every request");
                    }
                    cache.sync_failed();
                }
            }
            metrics::gauge!("windi_session_cache_entries").set(cache.len() as f64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced_cache(now: Instant) -> SessionCache {
        let cache = SessionCache::default();
        cache.synced(&[], Utc::now(), now);
        cache
    }

    #[test]
    fn answers_only_what_a_check_found_for_that_user() {
        let t0 = Instant::now();
        let cache = synced_cache(t0);
        let ticket = cache.lookup(7, 1, t0).expect_err("nothing known yet");
        cache.remember(ticket, 7, 1, t0);
        assert!(cache.lookup(7, 1, t0).is_ok());
        assert!(cache.lookup(7, 2, t0).is_err(), "another user's token");
        assert!(cache.lookup(8, 1, t0).is_err());
    }

    #[test]
    fn entries_expire() {
        let t0 = Instant::now();
        let cache = synced_cache(t0);
        let ticket = cache.lookup(7, 1, t0).expect_err("unknown");
        cache.remember(ticket, 7, 1, t0);
        // Keep the cache in sync past the entry's lifetime.
        cache.synced(&[], Utc::now(), t0 + ENTRY_TTL);
        assert!(cache.lookup(7, 1, t0 + ENTRY_TTL).is_err());
    }

    #[test]
    fn a_forgotten_session_is_not_put_back_by_a_check_that_started_before() {
        let t0 = Instant::now();
        let cache = synced_cache(t0);
        let stale = cache.lookup(7, 1, t0).expect_err("unknown");
        cache.forget(&[7]); // logout committed while the check was in flight
        cache.remember(stale, 7, 1, t0);
        assert!(cache.lookup(7, 1, t0).is_err());

        let fresh = cache.lookup(7, 1, t0).expect_err("still unknown");
        cache.remember(fresh, 7, 1, t0);
        cache.forget(&[7]);
        assert!(
            cache.lookup(7, 1, t0).is_err(),
            "forget removes a remembered session"
        );
    }

    #[test]
    fn out_of_sync_means_no_answers() {
        let t0 = Instant::now();
        let never = SessionCache::default();
        let ticket = never.lookup(7, 1, t0).expect_err("unknown");
        never.remember(ticket, 7, 1, t0);
        assert!(
            never.is_empty(),
            "nothing is remembered before a first poll"
        );

        let cache = synced_cache(t0);
        let ticket = cache.lookup(7, 1, t0).expect_err("unknown");
        cache.remember(ticket, 7, 1, t0);
        assert!(
            cache.lookup(7, 1, t0 + SYNC_GRACE).is_err(),
            "poller stalled"
        );

        let cache = synced_cache(t0);
        let ticket = cache.lookup(7, 1, t0).expect_err("unknown");
        cache.remember(ticket, 7, 1, t0);
        cache.sync_failed();
        cache.synced(&[], Utc::now(), t0);
        assert!(
            cache.lookup(7, 1, t0).is_err(),
            "a failed poll dropped everything"
        );
    }

    #[test]
    fn a_poll_forgets_what_it_found_ended_and_reaches_back() {
        let t0 = Instant::now();
        let cache = synced_cache(t0);
        for id in [7, 8] {
            let ticket = cache.lookup(id, 1, t0).expect_err("unknown");
            cache.remember(ticket, id, 1, t0);
        }
        let db_now = Utc::now();
        cache.synced(&[8], db_now, t0);
        assert!(cache.lookup(7, 1, t0).is_ok());
        assert!(cache.lookup(8, 1, t0).is_err());
        let overlap = chrono::Duration::from_std(SYNC_OVERLAP).expect("fits");
        assert_eq!(cache.since(), Some(db_now - overlap));
    }

    #[test]
    fn stays_bounded() {
        let t0 = Instant::now();
        let cache = synced_cache(t0);
        for id in 0..(MAX_ENTRIES as i64 + 10) {
            let ticket = cache.lookup(id, 1, t0).expect_err("unknown");
            cache.remember(ticket, id, 1, t0);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
    }
}
