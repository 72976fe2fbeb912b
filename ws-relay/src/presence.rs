//! Presence on one relay, pure: which users this relay holds connections of ([`Local`]), and
//! what each connection is due to be told ([`Batcher`]). The relay's I/O around them writes
//! [`Local::take_changes`] to Postgres with its heartbeat, publishes the users whose state
//! changed across all relays, and sends each connection its [`Batcher::due`] frame.
//!
//! Both are model-tested (`tests` below): random schedules of connects, disconnects, flushes,
//! repeated and reordered offers and time steps, against a reference that only counts.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use windi_shared::domain::presence::Presence;

/// The users this relay holds connections of, counted, and which of them changed since the
/// last flush. A user connecting and leaving between two flushes (a page reload) is no change.
#[derive(Debug, Default)]
pub struct Local {
    connections: HashMap<i64, usize>,
    /// Whether each user was connected here as of the last flush (absent: not).
    flushed: HashMap<i64, bool>,
    /// Users whose count crossed zero since the last flush.
    touched: Vec<i64>,
}

impl Local {
    /// A connection of `user_id` opened.
    pub fn connect(&mut self, user_id: i64) {
        let count = self.connections.entry(user_id).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.touched.push(user_id);
        }
    }

    /// A connection of `user_id` closed. A close without an open is ignored.
    pub fn disconnect(&mut self, user_id: i64) {
        if let Some(count) = self.connections.get_mut(&user_id) {
            *count -= 1;
            if *count == 0 {
                self.connections.remove(&user_id);
                self.touched.push(user_id);
            }
        }
    }

    /// Whether `user_id` has a connection here now.
    pub fn is_connected(&self, user_id: i64) -> bool {
        self.connections.contains_key(&user_id)
    }

    /// The users connected here now.
    pub fn users(&self) -> impl Iterator<Item = i64> + '_ {
        self.connections.keys().copied()
    }

    /// The users whose being connected here differs from the last flush, with their state
    /// now (`true`: connected), ascending; they count as flushed from here on. The caller
    /// writes them; if that fails, [`Local::unflush`] puts them back.
    pub fn take_changes(&mut self) -> Vec<(i64, bool)> {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        let mut changes = Vec::with_capacity(touched.len());
        for user_id in touched {
            let now = self.is_connected(user_id);
            let was = self.flushed.get(&user_id).copied().unwrap_or(false);
            if now != was {
                changes.push((user_id, now));
                if now {
                    self.flushed.insert(user_id, true);
                } else {
                    self.flushed.remove(&user_id);
                }
            }
        }
        changes
    }

    /// Changes taken by [`Local::take_changes`] that were not written: flushed state goes
    /// back, so the next take answers them again (with the state of that moment).
    pub fn unflush(&mut self, changes: &[(i64, bool)]) {
        for &(user_id, connected) in changes {
            if connected {
                self.flushed.remove(&user_id);
            } else {
                self.flushed.insert(user_id, true);
            }
            self.touched.push(user_id);
        }
    }
}

/// What one connection is due to be told: the latest presence of each user that changed since
/// its last frame, at most one frame per `every`.
#[derive(Debug)]
pub struct Batcher {
    every: Duration,
    last_frame: Option<Instant>,
    /// The latest state offered per user since the last frame.
    pending: HashMap<i64, Presence>,
    /// What the connection was last told of each user (or first learned otherwise).
    told: HashMap<i64, Presence>,
}

impl Batcher {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last_frame: None,
            pending: HashMap::new(),
            told: HashMap::new(),
        }
    }

    /// A user's presence now. Only a change from what the connection was told goes out.
    pub fn offer(&mut self, presence: Presence) {
        if self.told.get(&presence.user_id) == Some(&presence) {
            self.pending.remove(&presence.user_id);
        } else {
            self.pending.insert(presence.user_id, presence);
        }
    }

    /// When a frame can go next, if one is waiting.
    pub fn next_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(
            self.last_frame
                .map_or_else(Instant::now, |at| at + self.every),
        )
    }

    /// The frame due at `now`, ascending by user: none when nothing changed or the last went
    /// out less than `every` ago.
    pub fn due(&mut self, now: Instant) -> Option<Vec<Presence>> {
        if self.pending.is_empty() {
            return None;
        }
        if self
            .last_frame
            .is_some_and(|at| now.saturating_duration_since(at) < self.every)
        {
            return None;
        }
        let mut frame: Vec<Presence> = self.pending.drain().map(|(_, p)| p).collect();
        frame.sort_unstable_by_key(|p| p.user_id);
        for presence in &frame {
            self.told.insert(presence.user_id, *presence);
        }
        self.last_frame = Some(now);
        Some(frame)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::DateTime;
    use proptest::prelude::*;
    use windi_shared::domain::presence::Status;

    use super::*;

    #[derive(Debug, Clone)]
    enum LocalOp {
        Connect(i64),
        Disconnect(i64),
        Flush,
        FailedFlush,
    }

    fn local_op() -> impl Strategy<Value = LocalOp> {
        prop_oneof![
            3 => (1i64..6).prop_map(LocalOp::Connect),
            3 => (1i64..6).prop_map(LocalOp::Disconnect),
            2 => Just(LocalOp::Flush),
            1 => Just(LocalOp::FailedFlush),
        ]
    }

    #[derive(Debug, Clone)]
    enum BatchOp {
        Offer(i64, u8),
        Advance(u64),
        Poll,
    }

    fn batch_op() -> impl Strategy<Value = BatchOp> {
        prop_oneof![
            4 => (1i64..5, 0u8..4).prop_map(|(u, s)| BatchOp::Offer(u, s)),
            2 => (0u64..3_000).prop_map(BatchOp::Advance),
            3 => Just(BatchOp::Poll),
        ]
    }

    /// State `s` of user `u`: a few statuses and last-seen times, so repeats happen.
    fn state(user_id: i64, s: u8) -> Presence {
        let status = [
            Status::Online,
            Status::Away,
            Status::Offline,
            Status::Offline,
        ][s as usize];
        Presence {
            user_id,
            status,
            last_seen: DateTime::from_timestamp(i64::from(s) * 100, 0),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Against a reference that only counts connections: after every flush, what was
        /// written (all changes so far, the failed ones redone) says of each user exactly
        /// whether they have a connection; no change repeats the state written before it;
        /// a disconnect without a connect changes nothing.
        #[test]
        fn local_writes_each_users_state_once_per_change(
            ops in proptest::collection::vec(local_op(), 0..80)
        ) {
            let mut local = Local::default();
            let mut count: BTreeMap<i64, i64> = BTreeMap::new();
            let mut written: BTreeMap<i64, bool> = BTreeMap::new();
            for op in ops {
                match op {
                    LocalOp::Connect(u) => {
                        local.connect(u);
                        *count.entry(u).or_default() += 1;
                    }
                    LocalOp::Disconnect(u) => {
                        local.disconnect(u);
                        if let Some(c) = count.get_mut(&u) {
                            *c = (*c - 1).max(0);
                        }
                    }
                    LocalOp::FailedFlush => {
                        let changes = local.take_changes();
                        local.unflush(&changes);
                    }
                    LocalOp::Flush => {
                        for (u, connected) in local.take_changes() {
                            let before = written.get(&u).copied().unwrap_or(false);
                            prop_assert_ne!(before, connected, "user {} repeated", u);
                            written.insert(u, connected);
                        }
                        for (u, c) in &count {
                            prop_assert_eq!(
                                written.get(u).copied().unwrap_or(false),
                                *c > 0,
                                "user {} after a flush", u
                            );
                            prop_assert_eq!(local.is_connected(*u), *c > 0);
                        }
                    }
                }
            }
        }

        /// Against a reference of the latest state offered per user: frames are at least
        /// `every` apart; a frame holds each user once, ascending, in the latest state offered
        /// before it, and only users whose state differs from what the connection was last
        /// told; once offers stop and `every` passes, the connection has been told the latest
        /// state of every user offered.
        #[test]
        fn batched_frames_are_spaced_changes_only_and_converge(
            ops in proptest::collection::vec(batch_op(), 0..80)
        ) {
            let every = Duration::from_millis(2_000);
            let start = Instant::now();
            let mut now = start;
            let mut batcher = Batcher::new(every);
            let mut latest: BTreeMap<i64, Presence> = BTreeMap::new();
            let mut told: BTreeMap<i64, Presence> = BTreeMap::new();
            let mut last_frame: Option<Instant> = None;
            let mut check = |batcher: &mut Batcher, now: Instant,
                             latest: &BTreeMap<i64, Presence>,
                             told: &mut BTreeMap<i64, Presence>| -> Result<(), TestCaseError> {
                if let Some(frame) = batcher.due(now) {
                    if let Some(at) = last_frame {
                        prop_assert!(now - at >= every, "frames {:?} apart", now - at);
                    }
                    last_frame = Some(now);
                    prop_assert!(!frame.is_empty());
                    prop_assert!(frame.windows(2).all(|w| w[0].user_id < w[1].user_id));
                    for p in frame {
                        prop_assert_eq!(Some(&p), latest.get(&p.user_id), "the latest");
                        prop_assert_ne!(Some(&p), told.get(&p.user_id), "a change");
                        told.insert(p.user_id, p);
                    }
                }
                Ok(())
            };
            for op in ops {
                match op {
                    BatchOp::Offer(u, s) => {
                        let p = state(u, s);
                        batcher.offer(p);
                        latest.insert(u, p);
                    }
                    BatchOp::Advance(ms) => now += Duration::from_millis(ms),
                    BatchOp::Poll => check(&mut batcher, now, &latest, &mut told)?,
                }
            }
            now += every;
            check(&mut batcher, now, &latest, &mut told)?;
            for (u, p) in &latest {
                prop_assert_eq!(told.get(u), Some(p), "user {} converged", u);
            }
            prop_assert!(batcher.due(now + every).is_none(), "nothing left");
        }
    }
}
