//! The delivery machine of one connection: for everything that happens to it (a live event, a
//! page of the change log, a `resume`, the user's chats re-read, a nudge from the poller, a
//! tick of the clock), what to send and what to read next. Pure: no I/O, no clock but the
//! `now` it is given (time since the connection started), so every rule is tested here, and
//! [`crate::connection`] only carries the [`Action`]s out.
//!
//! The promise it keeps: a connection sends each chat's change log, restricted to the user's
//! membership intervals, once, in rev order, with no gap.
//!
//! - **Cursor.** Per chat, `next` is the rev to deliver next and `known` the highest rev known
//!   to exist. A change at `next` is applied; one below was applied already; one above waits a
//!   moment for the ones before it (publishes of concurrent writers can arrive out of commit
//!   order) and then the log is read from `next` on.
//! - **Membership is an interval, not a flag.** The user's own `left` at rev L ends an interval
//!   (`chat_removed`), their own `joined` at rev J starts one (a `chat` frame, then the changes
//!   after J); changes between are not theirs to see. After a removal the chat is only dropped
//!   if the user is not in it now; if they are (they were re-added, perhaps while offline), the
//!   log is read on to their re-join.
//! - **Nothing overtakes the replay.** A new connection holds live changes until the client's
//!   first `resume` (or [`Timing::resume_wait`] without one): every cursor it delivers from is
//!   then the one the client asked for, and the changes committed meanwhile follow the replay.
//!   A `resume` after that may still rewind a cursor; clients resume first.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

pub use windi_shared::store::chats::Position;

/// How a change concerns this connection's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any change that is not the user's own joining or leaving.
    Change,
    /// The user left or was removed.
    OwnLeft,
    /// The user joined (was added back).
    OwnJoined,
}

/// What the connection must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Send this change's frame.
    Send(P),
    /// Send `chat_removed` at `rev`.
    Removed { chat_id: i64, rev: i64 },
    /// Send each chat's summary as a `chat` frame whose changes after `rev` follow, then
    /// report each with [`Delivery::announced`] (nothing more of these chats is asked for
    /// until then). If the summaries cannot be read at all, the connection must end (the
    /// client resumes on a new one).
    Announce(Vec<(i64, i64)>),
    /// Read the chat's changes after `after` and hand them to [`Delivery::page`] (or report
    /// [`Delivery::read_failed`]).
    Read { chat_id: i64, after: i64 },
    /// Subscribe the connection to these chats (with the rev it knows them at).
    Route(Vec<(i64, i64)>),
    /// Stop routing this chat's events to the connection.
    Unroute(i64),
    /// Read the user's chats and hand them to [`Delivery::positions`] (or report
    /// [`Delivery::positions_failed`]).
    ReadPositions,
}

/// The machine's timings and bounds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a new connection holds live changes for the client's first `resume`.
    pub resume_wait: Duration,
    /// How long a change ahead of its chat's next rev waits for the ones before it before the
    /// log is read. Without the wait, every member's connection would read the log for each
    /// pair of publishes that crossed (1,000 queries for a group of 1,000).
    pub reorder_wait: Duration,
    /// Live changes held at most (while waiting for a resume or for a reorder).
    pub max_held: usize,
    /// First and longest wait before a failed read is tried again.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// A client may resume at most once this often (each resume reads the user's chats and
    /// replays; a client that loops on it would cost Postgres without bound).
    pub resume_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resume_wait: Duration::from_secs(2),
            reorder_wait: Duration::from_millis(30),
            max_held: 64,
            retry_first: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            resume_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chat {
    /// The rev to apply next.
    next: i64,
    /// The highest rev known to exist.
    known: i64,
    /// The user is in the chat at `next - 1`: changes are theirs to see.
    member: bool,
    /// The user's current membership as last read (`Some(joined_rev)`), or `None` if they are
    /// not in the chat now.
    member_now: Option<i64>,
    /// The connection receives the chat's live events.
    routed: bool,
    /// Read the log (again) even if no rev beyond the cursor is known: the last page said
    /// there is more, or the user left and the log holds the leaving.
    force: bool,
}

impl Chat {
    /// A chat delivered from the change after `rev`, with the user in it since `joined_rev`.
    fn at(rev: i64, joined_rev: i64) -> Self {
        Self {
            next: rev + 1,
            known: rev,
            member: true,
            member_now: Some(joined_rev),
            routed: true,
            force: false,
        }
    }

    /// Changes up to `known` remain to be read from the log: while the user is in the chat,
    /// or while they are out of it but in it again now (their re-join is ahead in the log).
    fn behind(&self) -> bool {
        (self.next <= self.known || self.force) && (self.member || self.rejoins())
    }

    /// The user is out of the chat at the cursor but in it now, from a later join.
    fn rejoins(&self) -> bool {
        !self.member && self.member_now.is_some_and(|joined| joined >= self.next)
    }
}

/// A live change held back: before the first resume, or ahead of its chat's next rev.
#[derive(Debug)]
struct Held<P> {
    chat_id: i64,
    rev: i64,
    kind: Kind,
    payload: P,
}

/// One connection's delivery state.
#[derive(Debug)]
pub struct Delivery<P> {
    timing: Timing,
    chats: BTreeMap<i64, Chat>,
    /// Until when live changes wait for the first resume (`None` once live).
    awaiting_resume: Option<Duration>,
    held: Vec<Held<P>>,
    /// When the held changes stop waiting for the ones before them.
    held_until: Option<Duration>,
    /// Reads asked for and not answered yet (at most one per chat).
    reading: BTreeSet<i64>,
    /// The user's chats are to be re-read (a join or leave happened).
    reconcile: bool,
    retry_at: Option<Duration>,
    retry_delay: Duration,
    last_resume: Option<Duration>,
}

impl<P> Delivery<P> {
    /// A connection of a user in these chats (each at its current rev), holding live changes
    /// until `resume` or `now + resume_wait`.
    pub fn new(timing: Timing, positions: &[Position], now: Duration) -> Self {
        let chats = positions
            .iter()
            .map(|p| (p.chat_id, Chat::at(p.rev, p.joined_rev)))
            .collect();
        Self {
            timing,
            chats,
            awaiting_resume: Some(now + timing.resume_wait),
            held: Vec::new(),
            held_until: None,
            reading: BTreeSet::new(),
            reconcile: false,
            retry_at: None,
            retry_delay: Duration::ZERO,
            last_resume: None,
        }
    }

    /// Whether the connection delivers this chat now (typing and sends check it).
    pub fn delivers(&self, chat_id: i64) -> bool {
        self.chats
            .get(&chat_id)
            .is_some_and(|c| c.member && c.routed)
    }

    /// The rev up to which the chat has been delivered (or, before the first resume, the rev
    /// the connection started from), for news that is not a change (read markers, typing,
    /// names): `None` for a chat the connection does not deliver. News is not held for the
    /// resume: it changes no rev, so it cannot put a client's cursor past a change.
    pub fn position(&self, chat_id: i64) -> Option<i64> {
        self.chats
            .get(&chat_id)
            .filter(|c| c.member && c.routed)
            .map(|c| c.next - 1)
    }

    /// When the machine next needs [`Delivery::tick`].
    pub fn deadline(&self) -> Option<Duration> {
        [self.awaiting_resume, self.held_until, self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// A live change of `chat_id` at `rev`.
    pub fn live(
        &mut self,
        chat_id: i64,
        rev: i64,
        kind: Kind,
        payload: P,
        now: Duration,
    ) -> Vec<Action<P>> {
        let mut out = Vec::new();
        let Some(chat) = self.chats.get_mut(&chat_id).filter(|c| c.routed) else {
            return out;
        };
        chat.known = chat.known.max(rev);
        let next = chat.next;
        let live = self.awaiting_resume.is_none();
        if rev < next {
            return out;
        }
        if live && rev == next && !self.reading.contains(&chat_id) {
            self.apply(chat_id, rev, kind, payload, &mut out);
            self.release_held(chat_id, &mut out);
        } else if self.held.len() < self.timing.max_held {
            self.held.push(Held {
                chat_id,
                rev,
                kind,
                payload,
            });
            if live {
                self.held_until
                    .get_or_insert(now + self.timing.reorder_wait);
            }
        } else if live {
            // Too much held: read what is missing now.
            self.read_if_behind(chat_id, &mut out);
        }
        out
    }

    /// The poller found the chat at `rev` in Postgres.
    pub fn nudge(&mut self, chat_id: i64, rev: i64) -> Vec<Action<P>> {
        let mut out = Vec::new();
        if let Some(chat) = self.chats.get_mut(&chat_id) {
            chat.known = chat.known.max(rev);
            if self.awaiting_resume.is_none() {
                self.read_if_behind(chat_id, &mut out);
            }
        }
        out
    }

    /// The user joined or left a chat (news on their own subject): re-read their chats.
    pub fn membership_changed(&mut self) -> Vec<Action<P>> {
        if self.reconcile {
            return Vec::new();
        }
        self.reconcile = true;
        if self.awaiting_resume.is_some() {
            // Nothing about chats goes out before the resume (which reads the user's chats
            // itself), or the resume would rewind what it announced.
            return Vec::new();
        }
        vec![Action::ReadPositions]
    }

    /// `resume` by rev: "I have applied every change up to these revs". `positions` are the
    /// user's chats, read for this resume. Listed chats replay from there; listed chats the
    /// user is not in any more end with `chat_removed` at their leaving (`left`: the rev of
    /// the user's latest leaving of such a chat), without the changes before it, as the
    /// client drops the chat anyway; the user's chats not listed arrive as `chat` frames.
    /// `Err` with the wait when the client resumes too often.
    pub fn resume(
        &mut self,
        revs: &BTreeMap<i64, i64>,
        positions: &[Position],
        left: &BTreeMap<i64, i64>,
        now: Duration,
    ) -> Result<Vec<Action<P>>, Duration> {
        self.admit_resume(now)?;
        // The user's chats were just read.
        self.reconcile = false;
        let mut out = Vec::new();
        let mut routes = Vec::new();
        let mut announce = Vec::new();
        for (&chat_id, &rev) in revs {
            let Some(p) = positions.iter().find(|p| p.chat_id == chat_id) else {
                if self.chats.remove(&chat_id).is_some_and(|c| c.routed) {
                    out.push(Action::Unroute(chat_id));
                }
                let rev = left.get(&chat_id).map_or(rev, |&l| l.max(rev));
                out.push(Action::Removed {
                    chat_id,
                    rev: rev.max(0),
                });
                continue;
            };
            let old = self.chats.get(&chat_id).copied();
            if !old.is_some_and(|c| c.routed) {
                routes.push((chat_id, p.rev));
            }
            // The client had the chat at `rev`, so the user was in it then.
            self.chats.insert(
                chat_id,
                Chat {
                    next: rev.clamp(0, p.rev) + 1,
                    known: p.rev.max(old.map_or(0, |c| c.known)),
                    member: true,
                    member_now: Some(p.joined_rev),
                    routed: true,
                    force: false,
                },
            );
        }
        for p in positions.iter().filter(|p| !revs.contains_key(&p.chat_id)) {
            match self.chats.get(&p.chat_id) {
                // Delivered here already: its changes after the cursor follow the summary.
                Some(c) if c.member && c.routed => announce.push((p.chat_id, c.next - 1)),
                old => {
                    if !old.is_some_and(|c| c.routed) {
                        routes.push((p.chat_id, p.rev));
                    }
                    self.chats.insert(p.chat_id, Chat::at(p.rev, p.joined_rev));
                    announce.push((p.chat_id, p.rev));
                }
            }
        }
        // Chats the client did not list and the user has left since the connection opened:
        // the client never had them.
        let gone: Vec<i64> = self
            .chats
            .keys()
            .copied()
            .filter(|id| !revs.contains_key(id) && !positions.iter().any(|p| p.chat_id == *id))
            .collect();
        for chat_id in gone {
            self.held.retain(|h| h.chat_id != chat_id);
            if self.chats.remove(&chat_id).is_some_and(|c| c.routed) {
                out.push(Action::Unroute(chat_id));
            }
        }
        if !routes.is_empty() {
            out.insert(0, Action::Route(routes));
        }
        if !announce.is_empty() {
            self.reading.extend(announce.iter().map(|&(id, _)| id));
            out.push(Action::Announce(announce));
        }
        self.go_live(&mut out);
        // A resume after live delivery began may rewind a cursor.
        for &chat_id in revs.keys() {
            self.read_if_behind(chat_id, &mut out);
        }
        Ok(out)
    }

    /// `resume` by seq, the message-only form: each listed chat from the change after `after`
    /// (the rev that created the client's last message; `None` for a seq beyond the chat's
    /// last, when nothing is replayed). Chats this connection does not deliver are answered
    /// `Err` by the caller before (see [`Delivery::delivers`]).
    pub fn resume_by_seq(
        &mut self,
        after: &BTreeMap<i64, (Option<i64>, i64)>,
        now: Duration,
    ) -> Result<Vec<Action<P>>, Duration> {
        if !after.is_empty() {
            // One that replays nothing costs nothing.
            self.admit_resume(now)?;
        }
        let mut out = Vec::new();
        for (&chat_id, &(rev, current)) in after {
            if let (Some(rev), Some(chat)) = (rev, self.chats.get_mut(&chat_id))
                && chat.member
            {
                chat.next = rev.clamp(0, current) + 1;
                chat.known = chat.known.max(current);
            }
        }
        self.go_live(&mut out);
        for &chat_id in after.keys() {
            self.read_if_behind(chat_id, &mut out);
        }
        Ok(out)
    }

    /// A page of the chat's log after `after`, as asked by [`Action::Read`]: its changes in rev
    /// order (changes superseded within the page may be missing), `up_to` the rev the reader is
    /// up to date with once applied, `more` whether the log goes on.
    pub fn page(
        &mut self,
        chat_id: i64,
        after: i64,
        changes: Vec<(i64, Kind, P)>,
        up_to: i64,
        more: bool,
    ) -> Vec<Action<P>> {
        let mut out = Vec::new();
        self.reading.remove(&chat_id);
        self.retry_delay = Duration::ZERO;
        match self.chats.get(&chat_id) {
            Some(chat) if chat.next - 1 == after => {}
            // The cursor moved since the read was asked for: read again from where it is.
            Some(_) => {
                self.read_if_behind(chat_id, &mut out);
                return out;
            }
            None => return out,
        }
        for (rev, kind, payload) in changes {
            if self.reading.contains(&chat_id) {
                // The user re-joined: the rest waits for the chat's summary to be sent.
                return out;
            }
            if self.chats.get(&chat_id).is_some_and(|c| rev >= c.next) {
                self.apply(chat_id, rev, kind, payload, &mut out);
            }
        }
        if self.reading.contains(&chat_id) {
            return out;
        }
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return out;
        };
        chat.next = chat.next.max(up_to + 1);
        chat.force = more;
        // A page shared with other connections may have been read before a rev this one knows
        // of: then the chat is still behind, and read again.
        if !more && chat.next > chat.known && chat.member && chat.member_now.is_none() {
            // The user is not in the chat now, and the log did not say when they left (a
            // removal older than the log): it ends here.
            let rev = chat.next - 1;
            self.close(chat_id, rev, &mut out);
        }
        self.release_held(chat_id, &mut out);
        self.read_if_behind(chat_id, &mut out);
        out
    }

    /// A read asked for failed: it is tried again after a backoff.
    pub fn read_failed(&mut self, chat_id: i64, now: Duration) {
        self.reading.remove(&chat_id);
        self.schedule_retry(now);
    }

    /// The user's chats as read for [`Action::ReadPositions`]: chats joined are announced and
    /// delivered from the join, chats left are read up to the user's removal.
    pub fn positions(&mut self, positions: &[Position]) -> Vec<Action<P>> {
        self.reconcile = false;
        let mut out = Vec::new();
        let mut routes = Vec::new();
        let mut announce = Vec::new();
        for chat in self.chats.values_mut() {
            chat.member_now = None;
        }
        for p in positions {
            match self.chats.get_mut(&p.chat_id) {
                None => {
                    // Joined while connected: the changes after the join follow its summary.
                    self.chats
                        .insert(p.chat_id, Chat::at(p.joined_rev, p.joined_rev));
                    routes.push((p.chat_id, p.joined_rev));
                    announce.push((p.chat_id, p.joined_rev));
                    if let Some(chat) = self.chats.get_mut(&p.chat_id) {
                        chat.known = p.rev;
                    }
                }
                Some(chat) => {
                    chat.member_now = Some(p.joined_rev);
                    chat.known = chat.known.max(p.rev);
                    if !chat.routed && chat.rejoins() {
                        // Re-added after a removal seen here: read on to the re-join.
                        chat.routed = true;
                        routes.push((p.chat_id, chat.known));
                    }
                }
            }
        }
        for chat in self.chats.values_mut() {
            if chat.member && chat.member_now.is_none() && chat.routed {
                // Left: read the log up to the removal, which ends the chat.
                chat.force = true;
            }
        }
        if !routes.is_empty() {
            out.push(Action::Route(routes));
        }
        if !announce.is_empty() {
            self.reading.extend(announce.iter().map(|&(id, _)| id));
            out.push(Action::Announce(announce));
        }
        if self.awaiting_resume.is_none() {
            let chats: Vec<i64> = self.chats.keys().copied().collect();
            for chat_id in chats {
                self.read_if_behind(chat_id, &mut out);
            }
        }
        out
    }

    /// Reading the user's chats failed: tried again after a backoff.
    pub fn positions_failed(&mut self, now: Duration) {
        self.reconcile = true;
        self.schedule_retry(now);
    }

    /// The summary of a chat in an [`Action::Announce`] was sent (`found`), or not, because
    /// the user is not in the chat any more: then the client never had it, and nothing more of
    /// it is sent until they join again.
    pub fn announced(&mut self, chat_id: i64, found: bool) -> Vec<Action<P>> {
        let mut out = Vec::new();
        self.reading.remove(&chat_id);
        if found {
            self.release_held(chat_id, &mut out);
            self.read_if_behind(chat_id, &mut out);
        } else {
            self.held.retain(|h| h.chat_id != chat_id);
            if self.chats.remove(&chat_id).is_some_and(|c| c.routed) {
                out.push(Action::Unroute(chat_id));
            }
        }
        out
    }

    /// Time passed: the resume wait, the reorder window or a retry may be due.
    pub fn tick(&mut self, now: Duration) -> Vec<Action<P>> {
        let mut out = Vec::new();
        if self.awaiting_resume.is_some_and(|until| now >= until) {
            self.go_live(&mut out);
        }
        if self.held_until.is_some_and(|until| now >= until) {
            // What the held changes wait for was lost, not late: read their chats (which
            // brings the held ones too).
            self.held_until = None;
            let mut chats: Vec<i64> = self.held.drain(..).map(|h| h.chat_id).collect();
            chats.dedup();
            for chat_id in chats {
                self.read_if_behind(chat_id, &mut out);
            }
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            if self.reconcile {
                out.push(Action::ReadPositions);
            }
            let chats: Vec<i64> = self.chats.keys().copied().collect();
            for chat_id in chats {
                self.read_if_behind(chat_id, &mut out);
            }
        }
        out
    }

    fn admit_resume(&mut self, now: Duration) -> Result<(), Duration> {
        if let Some(last) = self.last_resume {
            let allowed = last + self.timing.resume_interval;
            if now < allowed {
                return Err(allowed - now);
            }
        }
        self.last_resume = Some(now);
        Ok(())
    }

    /// Live delivery starts: what was held is delivered in order, and every chat behind its
    /// cursor is read.
    fn go_live(&mut self, out: &mut Vec<Action<P>>) {
        if self.awaiting_resume.take().is_none() {
            return;
        }
        if self.reconcile {
            out.push(Action::ReadPositions);
        }
        let chats: Vec<i64> = self.chats.keys().copied().collect();
        for chat_id in chats {
            self.release_held(chat_id, out);
            self.read_if_behind(chat_id, out);
        }
        if !self.held.is_empty() {
            self.held_until = Some(Duration::ZERO);
        }
    }

    /// Applies the change at the chat's next rev.
    fn apply(&mut self, chat_id: i64, rev: i64, kind: Kind, payload: P, out: &mut Vec<Action<P>>) {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return;
        };
        chat.next = rev + 1;
        chat.known = chat.known.max(rev);
        match (chat.member, kind) {
            (true, Kind::OwnLeft) => {
                chat.member = false;
                out.push(Action::Removed { chat_id, rev });
                if !chat.rejoins() && chat.routed {
                    chat.routed = false;
                    out.push(Action::Unroute(chat_id));
                }
            }
            (true, _) => out.push(Action::Send(payload)),
            (false, Kind::OwnJoined) => {
                chat.member = true;
                if !chat.routed {
                    chat.routed = true;
                    out.push(Action::Route(vec![(chat_id, rev)]));
                }
                self.reading.insert(chat_id);
                out.push(Action::Announce(vec![(chat_id, rev)]));
            }
            // Outside the user's membership: not theirs to see.
            (false, _) => {}
        }
    }

    /// Ends the user's delivery of a chat at `rev`.
    fn close(&mut self, chat_id: i64, rev: i64, out: &mut Vec<Action<P>>) {
        if let Some(chat) = self.chats.get_mut(&chat_id) {
            chat.member = false;
            out.push(Action::Removed { chat_id, rev });
            if chat.routed {
                chat.routed = false;
                out.push(Action::Unroute(chat_id));
            }
        }
    }

    /// Delivers the chat's held changes that are next now, in rev order, and drops those
    /// already delivered.
    fn release_held(&mut self, chat_id: i64, out: &mut Vec<Action<P>>) {
        if self.awaiting_resume.is_some() || !self.held.iter().any(|h| h.chat_id == chat_id) {
            return;
        }
        let (mut mine, rest): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|h| h.chat_id == chat_id);
        self.held = rest;
        mine.sort_by_key(|h| h.rev);
        for h in mine {
            let Some(chat) = self.chats.get(&chat_id).filter(|c| c.routed) else {
                break;
            };
            if h.rev < chat.next {
                continue;
            }
            if h.rev == chat.next && !self.reading.contains(&chat_id) {
                self.apply(chat_id, h.rev, h.kind, h.payload, out);
            } else {
                self.held.push(h);
            }
        }
        if self.held.is_empty() {
            self.held_until = None;
        }
    }

    /// Asks for a read of the chat's log if it is behind and none is asked for yet.
    fn read_if_behind(&mut self, chat_id: i64, out: &mut Vec<Action<P>>) {
        if self.awaiting_resume.is_some() || self.reading.contains(&chat_id) {
            return;
        }
        if let Some(chat) = self.chats.get(&chat_id).filter(|c| c.behind()) {
            self.reading.insert(chat_id);
            out.push(Action::Read {
                chat_id,
                after: chat.next - 1,
            });
        }
    }

    fn schedule_retry(&mut self, now: Duration) {
        self.retry_delay =
            (self.retry_delay * 2).clamp(self.timing.retry_first, self.timing.retry_max);
        self.retry_at.get_or_insert(now + self.retry_delay);
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(chat_id: i64, rev: i64, joined_rev: i64) -> Position {
        Position {
            chat_id,
            rev,
            joined_rev,
        }
    }

    /// A connection of a user in chat 1 (at rev 5), live after an empty resume of it.
    fn live_at_5() -> Delivery<i64> {
        let mut d = Delivery::new(Timing::default(), &[at(1, 5, 0)], Duration::ZERO);
        let out = d
            .resume(
                &BTreeMap::from([(1, 5)]),
                &[at(1, 5, 0)],
                &BTreeMap::new(),
                MS,
            )
            .unwrap();
        assert!(out.is_empty(), "{out:?}");
        d
    }

    #[test]
    fn live_changes_wait_for_the_resume_and_follow_its_replay() {
        let mut d = Delivery::new(Timing::default(), &[at(1, 5, 0)], Duration::ZERO);
        assert_eq!(d.live(1, 6, Kind::Change, 6, MS), vec![]);
        // The client has rev 3: 4..=6 are read, the held 6 is not sent twice.
        let out = d
            .resume(
                &BTreeMap::from([(1, 3)]),
                &[at(1, 6, 0)],
                &BTreeMap::new(),
                2 * MS,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Action::Read {
                chat_id: 1,
                after: 3
            }]
        );
        let out = d.page(
            1,
            3,
            vec![
                (4, Kind::Change, 4),
                (5, Kind::Change, 5),
                (6, Kind::Change, 6),
            ],
            6,
            false,
        );
        assert_eq!(out, vec![Action::Send(4), Action::Send(5), Action::Send(6)]);
        assert_eq!(d.live(1, 7, Kind::Change, 7, 3 * MS), vec![Action::Send(7)]);
        assert_eq!(d.position(1), Some(7));
    }

    #[test]
    fn without_a_resume_live_delivery_starts_after_the_wait_in_order() {
        let timing = Timing::default();
        let mut d = Delivery::new(timing, &[at(1, 5, 0)], Duration::ZERO);
        assert_eq!(d.live(1, 7, Kind::Change, 7, MS), vec![]);
        assert_eq!(d.live(1, 6, Kind::Change, 6, MS), vec![]);
        assert_eq!(d.deadline(), Some(timing.resume_wait));
        assert_eq!(d.tick(timing.resume_wait - MS), vec![]);
        assert_eq!(
            d.tick(timing.resume_wait),
            vec![Action::Send(6), Action::Send(7)]
        );
    }

    #[test]
    fn a_change_ahead_waits_the_reorder_window_then_the_log_is_read() {
        let mut d = live_at_5();
        assert_eq!(d.live(1, 7, Kind::Change, 7, MS), vec![]);
        let until = d.deadline().unwrap();
        // The late one arrives within the window: both go out in order, no read.
        assert_eq!(
            d.live(1, 6, Kind::Change, 6, 2 * MS),
            vec![Action::Send(6), Action::Send(7)]
        );
        assert_eq!(d.live(1, 9, Kind::Change, 9, 3 * MS), vec![]);
        assert_eq!(
            d.tick(until + Duration::from_secs(1)),
            vec![Action::Read {
                chat_id: 1,
                after: 7
            }]
        );
        assert_eq!(
            d.live(1, 8, Kind::Change, 8, until),
            vec![],
            "a read is under way"
        );
    }

    #[test]
    fn a_removal_ends_the_chat_unless_the_user_is_in_it_again() {
        let mut d = live_at_5();
        let out = d.live(1, 6, Kind::OwnLeft, 6, MS);
        assert_eq!(
            out,
            vec![Action::Removed { chat_id: 1, rev: 6 }, Action::Unroute(1)]
        );
        assert!(!d.delivers(1));
        assert_eq!(d.live(1, 7, Kind::Change, 7, MS), vec![]);
        // Re-added at 8: the log is read from the removal on, to the re-join.
        assert_eq!(d.membership_changed(), vec![Action::ReadPositions]);
        let out = d.positions(&[at(1, 9, 8)]);
        assert_eq!(
            out,
            vec![
                Action::Route(vec![(1, 9)]),
                Action::Read {
                    chat_id: 1,
                    after: 6
                }
            ]
        );
        let out = d.page(
            1,
            6,
            vec![
                (7, Kind::Change, 7),
                (8, Kind::OwnJoined, 8),
                (9, Kind::Change, 9),
            ],
            9,
            false,
        );
        assert_eq!(out, vec![Action::Announce(vec![(1, 8)])]);
        assert_eq!(
            d.announced(1, true),
            vec![Action::Read {
                chat_id: 1,
                after: 8
            }]
        );
        assert_eq!(
            d.page(1, 8, vec![(9, Kind::Change, 9)], 9, false),
            vec![Action::Send(9)]
        );
        assert!(d.delivers(1));
    }

    #[test]
    fn a_resume_from_before_a_removal_and_re_add_crosses_both() {
        let mut d = Delivery::new(Timing::default(), &[at(1, 10, 8)], Duration::ZERO);
        let out = d
            .resume(
                &BTreeMap::from([(1, 5)]),
                &[at(1, 10, 8)],
                &BTreeMap::new(),
                MS,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Action::Read {
                chat_id: 1,
                after: 5
            }]
        );
        let page = vec![
            (6, Kind::OwnLeft, 6),
            (7, Kind::Change, 7),
            (8, Kind::OwnJoined, 8),
        ];
        let out = d.page(1, 5, page, 8, true);
        assert_eq!(
            out,
            vec![
                Action::Removed { chat_id: 1, rev: 6 },
                Action::Announce(vec![(1, 8)])
            ]
        );
        assert_eq!(
            d.announced(1, true),
            vec![Action::Read {
                chat_id: 1,
                after: 8
            }]
        );
        let out = d.page(
            1,
            8,
            vec![(9, Kind::Change, 9), (10, Kind::Change, 10)],
            10,
            false,
        );
        assert_eq!(out, vec![Action::Send(9), Action::Send(10)]);
    }

    #[test]
    fn a_chat_left_while_connected_is_read_up_to_the_removal() {
        let mut d = live_at_5();
        d.membership_changed();
        assert_eq!(
            d.positions(&[]),
            vec![Action::Read {
                chat_id: 1,
                after: 5
            }]
        );
        let out = d.page(
            1,
            5,
            vec![(6, Kind::Change, 6), (7, Kind::OwnLeft, 7)],
            7,
            false,
        );
        assert_eq!(
            out,
            vec![
                Action::Send(6),
                Action::Removed { chat_id: 1, rev: 7 },
                Action::Unroute(1)
            ]
        );
    }

    #[test]
    fn a_chat_joined_while_connected_is_announced_and_read_from_the_join() {
        let mut d = live_at_5();
        d.membership_changed();
        let out = d.positions(&[at(1, 5, 0), at(2, 4, 3)]);
        assert_eq!(
            out,
            vec![Action::Route(vec![(2, 3)]), Action::Announce(vec![(2, 3)])]
        );
        assert_eq!(
            d.announced(2, true),
            vec![Action::Read {
                chat_id: 2,
                after: 3
            }]
        );
        // Left again before its summary was read: nothing of it is sent.
        let mut d = live_at_5();
        d.membership_changed();
        d.positions(&[at(1, 5, 0), at(2, 4, 3)]);
        assert_eq!(d.announced(2, false), vec![Action::Unroute(2)]);
        assert!(!d.delivers(2));
    }

    #[test]
    fn a_resume_announces_unlisted_chats_and_removes_listed_ones_left() {
        let mut d: Delivery<i64> = Delivery::new(
            Timing::default(),
            &[at(1, 5, 0), at(2, 3, 0)],
            Duration::ZERO,
        );
        let out = d
            .resume(
                &BTreeMap::from([(1, 5), (9, 4)]),
                &[at(1, 5, 0), at(2, 3, 0)],
                &BTreeMap::from([(9, 6)]),
                MS,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![
                Action::Removed { chat_id: 9, rev: 6 },
                Action::Announce(vec![(2, 3)])
            ]
        );
    }

    #[test]
    fn a_failed_read_is_tried_again_after_a_growing_backoff() {
        let timing = Timing::default();
        let mut d = live_at_5();
        assert_eq!(
            d.nudge(1, 7),
            vec![Action::Read {
                chat_id: 1,
                after: 5
            }]
        );
        d.read_failed(1, MS);
        assert_eq!(d.deadline(), Some(MS + timing.retry_first));
        assert_eq!(
            d.tick(MS + timing.retry_first),
            vec![Action::Read {
                chat_id: 1,
                after: 5
            }]
        );
        d.read_failed(1, Duration::from_secs(1));
        assert_eq!(
            d.deadline(),
            Some(Duration::from_secs(1) + 2 * timing.retry_first)
        );
    }

    #[test]
    fn a_resume_after_live_delivery_began_replays_from_its_revs() {
        let timing = Timing::default();
        let mut d = live_at_5();
        let out = d.resume(
            &BTreeMap::from([(1, 3)]),
            &[at(1, 5, 0)],
            &BTreeMap::new(),
            MS + timing.resume_interval,
        );
        assert_eq!(
            out.unwrap(),
            vec![Action::Read {
                chat_id: 1,
                after: 3
            }]
        );
    }

    #[test]
    fn a_client_may_not_resume_more_often_than_the_interval() {
        let timing = Timing::default();
        let mut d = live_at_5();
        let again = d.resume(
            &BTreeMap::from([(1, 5)]),
            &[at(1, 5, 0)],
            &BTreeMap::new(),
            2 * MS,
        );
        assert_eq!(again.unwrap_err(), timing.resume_interval - MS);
        assert!(
            d.resume(
                &BTreeMap::from([(1, 5)]),
                &[at(1, 5, 0)],
                &BTreeMap::new(),
                MS + timing.resume_interval
            )
            .is_ok()
        );
    }
}
