//! The delivery machine against a reference model, under random schedules.
//!
//! A world of three chats and one user: changes are committed to each chat's log (some of them
//! the user's own leaving or re-joining), their live events are delivered late, twice, out of
//! order or never, the user's membership news likewise, reads of the log fail, the clock
//! moves, the client reconnects (a new machine, like a relay restart) and its `resume` arrives
//! after live events. A device applies what the machine sends and checks every frame against
//! the log as it arrives: each change of the user's membership intervals once, in rev order,
//! with no gap; a removal only at the user's own leaving; a summary only while a member. After
//! the schedule, with the faults over and the poller's nudges in, the device must hold every
//! chat the user is in at its current rev, and none they are not in.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const CHATS: i64 = 3;
/// Changes per page of the log (small, so replays take several pages).
const PAGE: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A change of a chat: the user's own leaving or joining (`toggle`), or anyone else's.
    Commit {
        chat: i64,
        toggle: bool,
    },
    /// One pending live event reaches the relay; `again` keeps it pending (a duplicate).
    Deliver {
        pick: usize,
        again: bool,
    },
    /// One pending live event is lost.
    Lose {
        pick: usize,
    },
    /// The user's membership news reaches the relay (or is lost).
    UserNews {
        lost: bool,
    },
    /// The poller finds a chat at its current rev.
    Nudge {
        chat: i64,
    },
    Tick {
        ms: u64,
    },
    /// The socket (or the relay) goes away; the client connects again and sends `resume`.
    Reconnect,
    /// The client's `resume` reaches the relay.
    ResumeArrives,
    /// The next reads of Postgres fail.
    FailReads {
        count: u8,
    },
    /// The next read of the log is a page another connection's read already had under way:
    /// it misses the latest changes.
    StaleRead {
        lag: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CHATS, prop::bool::weighted(0.2)).prop_map(|(chat, toggle)| Op::Commit { chat, toggle }),
        6 => (any::<usize>(), prop::bool::weighted(0.15)).prop_map(|(pick, again)| Op::Deliver { pick, again }),
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        2 => prop::bool::weighted(0.3).prop_map(|lost| Op::UserNews { lost }),
        1 => (0..CHATS).prop_map(|chat| Op::Nudge { chat }),
        2 => (0u64..1500).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Reconnect),
        3 => Just(Op::ResumeArrives),
        1 => (1u8..3).prop_map(|count| Op::FailReads { count }),
        1 => (1u8..3).prop_map(|lag| Op::StaleRead { lag }),
    ]
}

/// A page of the log as the relay reads it: (rev, kind, payload) each, the rev it brings the
/// reader to, and whether the log goes on.
type Page = (Vec<(i64, Kind, (i64, i64))>, i64, bool);

/// The truth: each chat's log, and the user's membership over it.
#[derive(Debug, Default)]
struct World {
    /// Per chat, the kind of each change (rev = index + 1).
    logs: BTreeMap<i64, Vec<Kind>>,
    /// Per chat, whether the user is in it before any change.
    initially: BTreeMap<i64, bool>,
}

impl World {
    fn new() -> Self {
        let mut world = Self::default();
        for chat in 0..CHATS {
            world.logs.insert(chat, Vec::new());
            // The last chat is one the user joins later.
            world.initially.insert(chat, chat != CHATS - 1);
        }
        world
    }

    fn rev(&self, chat: i64) -> i64 {
        self.logs[&chat].len() as i64
    }

    fn kind(&self, chat: i64, rev: i64) -> Kind {
        self.logs[&chat][(rev - 1) as usize]
    }

    /// Whether the user is in the chat after the change at `rev` (0: before any).
    fn member_at(&self, chat: i64, rev: i64) -> bool {
        let mut member = self.initially[&chat];
        for kind in self.logs[&chat].iter().take(rev as usize) {
            match kind {
                Kind::OwnLeft => member = false,
                Kind::OwnJoined => member = true,
                Kind::Change => {}
            }
        }
        member
    }

    /// The rev of the user's latest leaving of the chat.
    fn last_left(&self, chat: i64) -> Option<i64> {
        (1..=self.rev(chat))
            .rev()
            .find(|&r| self.kind(chat, r) == Kind::OwnLeft)
    }

    fn member_now(&self, chat: i64) -> bool {
        self.member_at(chat, self.rev(chat))
    }

    fn commit(&mut self, chat: i64, toggle: bool) -> Kind {
        let kind = match (toggle, self.member_now(chat)) {
            (false, _) => Kind::Change,
            (true, true) => Kind::OwnLeft,
            (true, false) => Kind::OwnJoined,
        };
        self.logs.get_mut(&chat).unwrap().push(kind);
        kind
    }

    /// The user's chats now, as `positions_of_member` reads them.
    fn positions(&self) -> Vec<Position> {
        (0..CHATS)
            .filter(|&chat| self.member_now(chat))
            .map(|chat| {
                let joined_rev = (1..=self.rev(chat))
                    .rev()
                    .find(|&r| self.kind(chat, r) == Kind::OwnJoined)
                    .unwrap_or(0);
                Position {
                    chat_id: chat,
                    rev: self.rev(chat),
                    joined_rev,
                }
            })
            .collect()
    }

    /// A read of the log after `after`, as `changes::after` answers it.
    fn page(&self, chat: i64, after: i64, lag: u8) -> Page {
        let last = (self.rev(chat) - i64::from(lag)).max(after);
        let all: Vec<i64> = (after + 1..=last).collect();
        let more = all.len() > PAGE;
        let revs = &all[..all.len().min(PAGE)];
        let changes = revs
            .iter()
            .map(|&r| (r, self.kind(chat, r), (chat, r)))
            .collect();
        let up_to = if more { revs[PAGE - 1] } else { last };
        (changes, up_to, more)
    }
}

/// The client: its chats (each at the rev it has applied), checking every frame.
#[derive(Debug, Default)]
struct Device {
    chats: BTreeMap<i64, i64>,
    frames: usize,
}

impl Device {
    /// A change of `chat` at `rev`: the next one of the user's after what the device has.
    fn change(&mut self, world: &World, chat: i64, rev: i64) -> Result<(), String> {
        let at = *self.chats.get(&chat).ok_or_else(|| {
            format!("change {rev} of chat {chat}, which the device does not have")
        })?;
        Self::no_gap(world, chat, at, rev)?;
        if !world.member_at(chat, rev - 1) {
            return Err(format!(
                "change {rev} of chat {chat} while the user was out of it"
            ));
        }
        self.chats.insert(chat, rev);
        Ok(())
    }

    fn removed(&mut self, world: &World, chat: i64, rev: i64) -> Result<(), String> {
        match self.chats.get(&chat) {
            // A chat the client listed and the user has left (a resume answer): at the
            // leaving, without the changes before it.
            Some(&at)
                if !world.member_now(chat)
                    && (rev == at || (rev > at && Some(rev) == world.last_left(chat))) => {}
            Some(&at) => {
                Self::no_gap(world, chat, at, rev)?;
                if world.kind(chat, rev) != Kind::OwnLeft {
                    return Err(format!(
                        "chat_removed at {rev} of chat {chat}, not a leaving"
                    ));
                }
            }
            None => {
                return Err(format!(
                    "chat_removed of chat {chat}, which the device does not have"
                ));
            }
        }
        self.chats.remove(&chat);
        Ok(())
    }

    fn announced(&mut self, world: &World, chat: i64, rev: i64) -> Result<(), String> {
        if !world.member_at(chat, rev) {
            return Err(format!(
                "chat {chat} announced at {rev}, where the user is not in it"
            ));
        }
        if let Some(&at) = self.chats.get(&chat)
            && rev < at
        {
            return Err(format!(
                "chat {chat} announced at {rev} behind the device's {at}: a rewind"
            ));
        }
        // The summary is the chat up to `rev`.
        self.chats.insert(chat, rev);
        Ok(())
    }

    /// Nothing of the user's between `at` and `rev` was skipped.
    fn no_gap(world: &World, chat: i64, at: i64, rev: i64) -> Result<(), String> {
        if rev <= at {
            return Err(format!(
                "chat {chat}: rev {rev} again, or out of order, after {at}"
            ));
        }
        for missed in at + 1..rev {
            if world.member_at(chat, missed - 1) || world.kind(chat, missed) == Kind::OwnJoined {
                return Err(format!(
                    "chat {chat}: rev {missed} skipped (got {rev} after {at})"
                ));
            }
        }
        Ok(())
    }
}

/// The relay around the machine: the hub's routing, the pending events, and the I/O.
struct Run {
    world: World,
    device: Device,
    machine: Delivery<(i64, i64)>,
    routed: BTreeMap<i64, bool>,
    now: Duration,
    connected_at: Duration,
    /// The revs the client sent in its `resume`, not arrived yet.
    resume: Option<BTreeMap<i64, i64>>,
    /// Live events published and not yet delivered or lost.
    bus: Vec<(i64, i64, Kind)>,
    /// Membership news pending for the user's subject.
    user_news: bool,
    failing_reads: u8,
    stale_by: u8,
    timing: Timing,
}

impl Run {
    fn new() -> Self {
        let world = World::new();
        let timing = Timing::default();
        let mut run = Self {
            machine: Delivery::new(timing, &[], Duration::ZERO),
            device: Device::default(),
            routed: BTreeMap::new(),
            now: Duration::ZERO,
            connected_at: Duration::ZERO,
            resume: None,
            bus: Vec::new(),
            user_news: false,
            failing_reads: 0,
            stale_by: 0,
            world,
            timing,
        };
        // The client starts from a snapshot: the user's chats at rev 0.
        for p in run.world.positions() {
            run.device.chats.insert(p.chat_id, p.rev);
        }
        run.connect();
        run
    }

    /// A new connection: the hub routes the user's chats, the machine starts, the client sends
    /// its resume (which arrives later).
    fn connect(&mut self) {
        let positions = self.world.positions();
        self.routed = positions.iter().map(|p| (p.chat_id, true)).collect();
        self.connected_at = self.now;
        self.machine = Delivery::new(self.timing, &positions, self.now);
        self.resume = Some(self.device.chats.clone());
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Commit { chat, toggle } => {
                let kind = self.world.commit(chat, toggle);
                self.bus.push((chat, self.world.rev(chat), kind));
                if kind != Kind::Change {
                    self.user_news = true;
                }
                Ok(())
            }
            Op::Deliver { pick, again } if !self.bus.is_empty() => {
                let i = pick % self.bus.len();
                let (chat, rev, kind) = self.bus[i];
                if !again {
                    self.bus.remove(i);
                }
                if self.routed.get(&chat).copied().unwrap_or(false) {
                    let actions = self.machine.live(chat, rev, kind, (chat, rev), self.now);
                    self.carry_out(actions)?;
                }
                Ok(())
            }
            Op::Lose { pick } if !self.bus.is_empty() => {
                let i = pick % self.bus.len();
                self.bus.remove(i);
                Ok(())
            }
            Op::UserNews { lost } if self.user_news => {
                self.user_news = false;
                if !lost {
                    let actions = self.machine.membership_changed();
                    self.carry_out(actions)?;
                }
                Ok(())
            }
            Op::Nudge { chat } if self.routed.get(&chat).copied().unwrap_or(false) => {
                let actions = self.machine.nudge(chat, self.world.rev(chat));
                self.carry_out(actions)
            }
            Op::Tick { ms } => {
                let mut now = self.now + Duration::from_millis(ms);
                if self.resume.is_some() {
                    // The client resumes within the wait (see the module doc of `delivery`).
                    let limit =
                        self.connected_at + self.timing.resume_wait - Duration::from_millis(1);
                    now = now.min(limit).max(self.now);
                }
                self.now = now;
                let actions = self.machine.tick(now);
                self.carry_out(actions)
            }
            Op::Reconnect => {
                self.connect();
                Ok(())
            }
            Op::ResumeArrives => match self.resume.take() {
                Some(revs) => {
                    let left = (0..CHATS)
                        .filter_map(|chat| Some((chat, self.world.last_left(chat)?)))
                        .collect();
                    let actions = self
                        .machine
                        .resume(&revs, &self.world.positions(), &left, self.now)
                        .map_err(|wait| format!("first resume refused for {wait:?}"))?;
                    self.carry_out(actions)
                }
                None => Ok(()),
            },
            Op::FailReads { count } => {
                self.failing_reads = count;
                Ok(())
            }
            Op::StaleRead { lag } => {
                self.stale_by = lag;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Does what the machine asks, in order, feeding back what reads return.
    fn carry_out(&mut self, actions: Vec<Action<(i64, i64)>>) -> Result<(), String> {
        let mut queue: std::collections::VecDeque<_> = actions.into();
        while let Some(action) = queue.pop_front() {
            self.device.frames += 1;
            if self.device.frames > 100_000 {
                return Err("the machine does not settle".into());
            }
            match action {
                Action::Send((chat, rev)) => self.device.change(&self.world, chat, rev)?,
                Action::Removed { chat_id, rev } => {
                    self.device.removed(&self.world, chat_id, rev)?
                }
                Action::Announce(chats) => {
                    if self.take_failure() {
                        // The connection ends; the client resumes on a new one.
                        self.connect();
                        return Ok(());
                    }
                    for (chat, rev) in chats {
                        // `summaries_of` leaves out chats the user is not in any more.
                        let found = self.world.member_now(chat);
                        if found {
                            self.device.announced(&self.world, chat, rev)?;
                        }
                        queue.extend(self.machine.announced(chat, found));
                    }
                }
                Action::Read { chat_id, after } => {
                    if self.take_failure() {
                        self.machine.read_failed(chat_id, self.now);
                        continue;
                    }
                    let lag = std::mem::take(&mut self.stale_by);
                    let (changes, up_to, more) = self.world.page(chat_id, after, lag);
                    queue.extend(self.machine.page(chat_id, after, changes, up_to, more));
                }
                Action::Route(chats) => {
                    for (chat, _) in chats {
                        self.routed.insert(chat, true);
                    }
                }
                Action::Unroute(chat) => {
                    self.routed.insert(chat, false);
                }
                Action::ReadPositions => {
                    if self.take_failure() {
                        self.machine.positions_failed(self.now);
                        continue;
                    }
                    queue.extend(self.machine.positions(&self.world.positions()));
                }
            }
        }
        Ok(())
    }

    fn take_failure(&mut self) -> bool {
        if self.failing_reads > 0 {
            self.failing_reads -= 1;
            true
        } else {
            false
        }
    }

    /// The faults stop: the resume arrives, pending events are delivered, the poller nudges
    /// and reports membership news, time passes beyond every timer.
    fn settle(&mut self) -> Result<(), String> {
        self.failing_reads = 0;
        self.stale_by = 0;
        self.step(&Op::ResumeArrives)?;
        while !self.bus.is_empty() {
            self.step(&Op::Deliver {
                pick: 0,
                again: false,
            })?;
        }
        for _ in 0..3 {
            let actions = self.machine.membership_changed();
            self.carry_out(actions)?;
            for chat in 0..CHATS {
                if self.routed.get(&chat).copied().unwrap_or(false) {
                    let actions = self.machine.nudge(chat, self.world.rev(chat));
                    self.carry_out(actions)?;
                }
            }
            self.now += Duration::from_secs(10);
            let actions = self.machine.tick(self.now);
            self.carry_out(actions)?;
        }
        Ok(())
    }

    /// The device holds exactly the user's chats, each at its current rev.
    fn converged(&self) -> Result<(), String> {
        for chat in 0..CHATS {
            let want = self.world.member_now(chat).then(|| self.world.rev(chat));
            let got = self.device.chats.get(&chat).copied();
            if want != got {
                return Err(format!(
                    "chat {chat}: device at {got:?}, the log at {want:?}"
                ));
            }
        }
        Ok(())
    }
}

fn play(ops: &[Op]) -> Result<(), String> {
    let mut run = Run::new();
    for (i, op) in ops.iter().enumerate() {
        run.step(op)
            .map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    run.settle().map_err(|e| format!("settling: {e}"))?;
    run.converged()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_schedule_delivers_each_chats_log_within_the_users_membership_once_in_order(
        ops in prop::collection::vec(op(), 1..120),
    ) {
        if let Err(e) = play(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The schedules of the reports, spelled out.
#[test]
fn a_live_change_before_the_resume_waits_for_the_replay() {
    let ops = [
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Reconnect,
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Deliver {
            pick: 1,
            again: false,
        },
        Op::Tick { ms: 400 },
        Op::ResumeArrives,
    ];
    play(&ops).unwrap();
}

#[test]
fn a_member_removed_and_re_added_while_offline_gets_the_chat_back_on_resume() {
    let ops = [
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Deliver {
            pick: 0,
            again: false,
        },
        Op::ResumeArrives,
        // Offline: removed, more messages than a page holds, re-added, a message.
        Op::Reconnect,
        Op::Commit {
            chat: 0,
            toggle: true,
        },
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::Commit {
            chat: 0,
            toggle: true,
        },
        Op::Commit {
            chat: 0,
            toggle: false,
        },
        Op::UserNews { lost: true },
        Op::Reconnect,
        Op::ResumeArrives,
    ];
    let mut run = Run::new();
    for op in &ops {
        run.step(op).unwrap();
    }
    // No poller, no more news: the resume alone brings the chat back.
    run.bus.clear();
    run.converged().unwrap();
}
