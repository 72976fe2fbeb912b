//! State plus events equals a fresh fetch (issue 18, the property Zulip tests for every event
//! type): a client that took a snapshot (`GET /chat/list` and each chat's history) and then
//! applied what the relay sent over a real socket holds exactly what a fresh fetch answers —
//! the chat list with unread counts, every message with its read tick.
//!
//! One table, one row per kind of change. Each row runs across a reconnect: some changes while
//! the socket is open, more while it is closed, a few between the new socket's `ready` and its
//! `resume` (the window where a live change could overtake the replay), and the client compares
//! itself with a fresh fetch once it has caught up after each part. A row whose kind the
//! protocol cannot carry says so in its `gap`, and its failure quotes it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use windi_tests::{
    TestApp, TestUser, relay_settings,
    ws::{Received, WsClient},
};

/// How long a client may take to reach every chat's rev after a part of a row.
const WAIT: Duration = Duration::from_secs(15);
/// Once the revs are reached, how long frames that are not changes (`read`, `user_updated`,
/// which no rev announces) may still take to land before the difference counts.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the client waits for a frame before it compares itself with a fresh fetch.
const POLL: Duration = Duration::from_millis(100);
/// The window after the last comparison in which nothing more may change the client.
const QUIET: Duration = Duration::from_millis(600);
/// The name the client shows for a member it knows only by id.
const UNKNOWN_NAME: &str = "(unknown: no frame named this member)";

/// The people of every row. Bob is the client under test; Dave and Erin share no chat with
/// him until a row adds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
    Carol,
    Dave,
    Erin,
}

use Who::{Alice, Bob, Carol, Dave, Erin};

/// One change a row makes through the API. Chats and messages are named by labels: `P` is the
/// private chat of Alice and Bob, `G` the group of Alice (owner), Bob and Carol; a message's
/// label is its text.
#[derive(Debug, Clone, Copy)]
enum Op {
    Send {
        by: Who,
        chat: &'static str,
        label: &'static str,
    },
    Reply {
        by: Who,
        chat: &'static str,
        label: &'static str,
        to: &'static str,
    },
    Edit {
        by: Who,
        msg: &'static str,
        text: &'static str,
    },
    Delete {
        by: Who,
        msg: &'static str,
    },
    React {
        by: Who,
        msg: &'static str,
        emoji: &'static str,
    },
    Unreact {
        by: Who,
        msg: &'static str,
        emoji: &'static str,
    },
    /// `by` pins (`on`) or unpins a message.
    Pin {
        by: Who,
        msg: &'static str,
        on: bool,
    },
    /// `by` (the owner) adds `who` to a group.
    Add {
        by: Who,
        chat: &'static str,
        who: Who,
    },
    /// `by` removes `who` from a group (the owner anyone, a member themself).
    Remove {
        by: Who,
        chat: &'static str,
        who: Who,
    },
    /// `by` marks a message read (for Bob: on another device of his).
    Read {
        by: Who,
        msg: &'static str,
    },
    Rename {
        who: Who,
        name: &'static str,
    },
    /// A new group named `label`, owned by `owner`.
    Group {
        owner: Who,
        label: &'static str,
        members: &'static [Who],
    },
}

use Op::{Add, Delete, Edit, Group, Pin, React, Read, Remove, Rename, Reply, Send, Unreact};

/// One kind of change, spread over the parts of a run.
#[derive(Debug)]
struct Row {
    kind: &'static str,
    /// Part of the state the snapshot finds.
    before_snapshot: &'static [Op],
    /// While the first socket is open.
    online: &'static [Op],
    /// After the first socket closed, before the second connects.
    offline: &'static [Op],
    /// After the second socket's `ready`, before it sends `resume`.
    before_resume: &'static [Op],
    /// What the protocol lacks for this kind to converge, when it does (the row still runs
    /// and fails, quoting this).
    gap: Option<&'static str>,
}

const fn send(by: Who, chat: &'static str, label: &'static str) -> Op {
    Send { by, chat, label }
}

const fn reply(by: Who, chat: &'static str, label: &'static str, to: &'static str) -> Op {
    Reply {
        by,
        chat,
        label,
        to,
    }
}

const fn edit(by: Who, msg: &'static str, text: &'static str) -> Op {
    Edit { by, msg, text }
}

const fn delete(by: Who, msg: &'static str) -> Op {
    Delete { by, msg }
}

const fn react(by: Who, msg: &'static str, emoji: &'static str) -> Op {
    React { by, msg, emoji }
}

const fn unreact(by: Who, msg: &'static str, emoji: &'static str) -> Op {
    Unreact { by, msg, emoji }
}

const fn pin(by: Who, msg: &'static str, on: bool) -> Op {
    Pin { by, msg, on }
}

const fn add(by: Who, chat: &'static str, who: Who) -> Op {
    Add { by, chat, who }
}

const fn remove(by: Who, chat: &'static str, who: Who) -> Op {
    Remove { by, chat, who }
}

const fn read(by: Who, msg: &'static str) -> Op {
    Read { by, msg }
}

const fn rename(who: Who, name: &'static str) -> Op {
    Rename { who, name }
}

const fn group(owner: Who, label: &'static str, members: &'static [Who]) -> Op {
    Group {
        owner,
        label,
        members,
    }
}

const NEW_MESSAGE: Row = Row {
    kind: "new message",
    before_snapshot: &[],
    online: &[send(Alice, "P", "p4"), send(Carol, "G", "g5")],
    offline: &[
        send(Alice, "G", "g6"),
        send(Alice, "P", "p5"),
        // From another device of Bob's: sending is reading, so g5 and g6 are no longer unread.
        send(Bob, "G", "g7"),
    ],
    before_resume: &[send(Carol, "G", "g8")],
    gap: None,
};

const EDIT: Row = Row {
    kind: "edit",
    before_snapshot: &[],
    online: &[edit(Alice, "p1", "p1 edited online")],
    offline: &[
        edit(Alice, "g4", "g4 edited offline"),
        edit(Carol, "g3", "g3 edited offline"),
        edit(Bob, "g2", "g2 edited on another device"),
    ],
    before_resume: &[edit(Alice, "p3", "p3 edited before the resume")],
    gap: None,
};

const DELETE: Row = Row {
    kind: "delete",
    before_snapshot: &[],
    // p3 and g4 are unread by Bob: their deletion takes them off his unread counts.
    online: &[delete(Alice, "p3")],
    offline: &[
        delete(Alice, "g4"),
        // The owner deletes a member's message.
        delete(Alice, "g2"),
    ],
    before_resume: &[delete(Carol, "g3")],
    gap: None,
};

const REACTION_ADDED: Row = Row {
    kind: "reaction added",
    before_snapshot: &[],
    online: &[react(Carol, "g1", "👍")],
    offline: &[
        react(Alice, "p2", "🎉"),
        react(Bob, "g4", "👍"),
        react(Carol, "g4", "👍"),
    ],
    before_resume: &[react(Alice, "g3", "🎉")],
    gap: None,
};

const PINS: Row = Row {
    kind: "pin and unpin",
    before_snapshot: &[pin(Alice, "g1", true)],
    // The group's owner pins; either member of a private chat may.
    online: &[pin(Alice, "g2", true), pin(Bob, "p1", true)],
    offline: &[
        pin(Alice, "g1", false),
        pin(Alice, "p2", true),
        // A deletion unpins.
        delete(Alice, "g2"),
    ],
    before_resume: &[pin(Alice, "g3", true), pin(Alice, "p1", false)],
    gap: None,
};

const REACTION_REMOVED: Row = Row {
    kind: "reaction removed",
    before_snapshot: &[
        react(Carol, "g1", "👍"),
        react(Alice, "g1", "👍"),
        react(Alice, "p2", "🎉"),
        react(Bob, "g3", "🎉"),
    ],
    online: &[unreact(Carol, "g1", "👍")],
    offline: &[unreact(Alice, "p2", "🎉"), unreact(Alice, "g1", "👍")],
    before_resume: &[unreact(Bob, "g3", "🎉")],
    gap: None,
};

const REPLY: Row = Row {
    kind: "reply",
    before_snapshot: &[],
    online: &[reply(Alice, "P", "p4", "p2")],
    offline: &[reply(Carol, "G", "g5", "g1"), reply(Bob, "G", "g6", "g5")],
    before_resume: &[reply(Alice, "G", "g7", "g2")],
    gap: None,
};

const MEMBER_JOINED: Row = Row {
    kind: "member joined",
    before_snapshot: &[group(Alice, "H", &[Bob])],
    online: &[
        // Carol, whom Bob knows from G, and Dave, whom he has never met.
        add(Alice, "H", Carol),
        add(Alice, "G", Dave),
    ],
    offline: &[add(Alice, "G", Erin), send(Dave, "G", "g5")],
    before_resume: &[send(Erin, "G", "g6")],
    gap: Some(
        "a `member` frame carries the user id only: the newcomer's name in \
         `ChatSummary.members` is unknown to a client that shares no other chat with them",
    ),
};

const MEMBER_LEFT: Row = Row {
    kind: "member left",
    before_snapshot: &[add(Alice, "G", Dave), add(Alice, "G", Erin)],
    online: &[remove(Carol, "G", Carol)],
    offline: &[remove(Alice, "G", Dave)],
    before_resume: &[remove(Erin, "G", Erin)],
    gap: None,
};

/// An owner who leaves hands the group to its longest-standing member: here Bob, who learns it
/// as a `member` frame `promoted` about himself (his `role` becomes `owner`).
const OWNER_LEFT: Row = Row {
    kind: "the owner left, the user promoted",
    before_snapshot: &[
        group(Carol, "H", &[Bob]),
        group(Dave, "J", &[Bob]),
        group(Erin, "K", &[Bob]),
    ],
    online: &[remove(Carol, "H", Carol), send(Bob, "H", "h1")],
    offline: &[remove(Dave, "J", Dave)],
    before_resume: &[remove(Erin, "K", Erin)],
    gap: None,
};

const USER_REMOVED: Row = Row {
    kind: "the user removed from a group",
    before_snapshot: &[
        group(Alice, "H", &[Bob, Carol]),
        send(Alice, "H", "h1"),
        group(Carol, "K", &[Bob]),
        send(Carol, "K", "k1"),
    ],
    online: &[remove(Alice, "G", Bob), send(Alice, "G", "g5")],
    offline: &[remove(Alice, "H", Bob), send(Carol, "H", "h2")],
    // Bob leaves K from another device.
    before_resume: &[remove(Bob, "K", Bob), send(Carol, "K", "k2")],
    gap: None,
};

const REMOVED_AND_READDED: Row = Row {
    kind: "removed and re-added while connected",
    before_snapshot: &[],
    online: &[
        remove(Alice, "G", Bob),
        send(Alice, "G", "g5"),
        add(Alice, "G", Bob),
        send(Alice, "G", "g6"),
        edit(Alice, "g5", "g5 edited after the re-add"),
    ],
    offline: &[send(Carol, "G", "g7")],
    before_resume: &[send(Alice, "G", "g8")],
    gap: None,
};

const REMOVED_AND_READDED_OFFLINE: Row = Row {
    kind: "removed and re-added while disconnected",
    before_snapshot: &[],
    online: &[send(Alice, "G", "g5")],
    offline: &[
        remove(Alice, "G", Bob),
        send(Alice, "G", "g6"),
        edit(Alice, "g4", "g4 edited while Bob was out"),
        add(Alice, "G", Bob),
        send(Carol, "G", "g7"),
        react(Alice, "g7", "👍"),
        // And once more.
        remove(Alice, "G", Bob),
        add(Alice, "G", Bob),
        send(Alice, "G", "g8"),
    ],
    before_resume: &[send(Carol, "G", "g9")],
    gap: None,
};

const OWN_READ_MARKER: Row = Row {
    kind: "the user's own read marker",
    before_snapshot: &[group(Carol, "H", &[Bob]), send(Carol, "H", "h1")],
    online: &[read(Bob, "p3")],
    // From another device of Bob's. p4 comes back in the replay in its state now, read by
    // Bob, but nothing moves his marker in P or G.
    offline: &[send(Alice, "P", "p4"), read(Bob, "p4"), read(Bob, "g3")],
    // While the new socket waits for its `resume`: a `read` event of a chat held back.
    before_resume: &[read(Bob, "h1")],
    gap: Some(
        "a read marker is not a change: `resume` replays nothing of a `read` event the socket \
         missed, so `last_read_seq`, `unread_count` and the ticks it moved stay stale",
    ),
};

const OTHER_READ_MARKER: Row = Row {
    kind: "another member's read marker (ticks)",
    before_snapshot: &[
        send(Bob, "P", "p4"),
        send(Bob, "G", "g5"),
        // Carol's marker passes g5, but g5 is not read (Alice has not): nothing in the
        // snapshot shows how far Carol has read.
        read(Carol, "g5"),
    ],
    online: &[
        // In the private chat the one other marker decides the tick; in the group Carol's,
        // which the client cannot know, decides it too.
        read(Alice, "p4"),
        read(Alice, "g5"),
        send(Bob, "P", "p5"),
        send(Bob, "G", "g6"),
    ],
    // The client holds p5 already: only the lost `read` event could tick it.
    offline: &[read(Alice, "p5")],
    before_resume: &[read(Alice, "g6"), read(Carol, "g6")],
    gap: Some(
        "a group message is read when every other member's marker passes it, and a client \
         learns only the markers that move while it listens: the snapshot carries the \
         caller's own marker alone (`ChatSummary.last_read_seq`) and no member's, and \
         `resume` replays no `read` event the socket missed",
    ),
};

const NAME_CHANGE: Row = Row {
    kind: "another member's name change",
    before_snapshot: &[],
    online: &[rename(Carol, "Caroline")],
    offline: &[rename(Alice, "Alicia")],
    before_resume: &[rename(Carol, "Carla")],
    gap: Some(
        "a name change is not a change of any chat: `resume` replays no `user_updated` the \
         socket missed, so the private chat's name and the members' names stay stale",
    ),
};

#[tokio::test]
async fn a_new_message_converges_across_a_reconnect() {
    converges(&NEW_MESSAGE).await;
}

#[tokio::test]
async fn an_edit_converges_across_a_reconnect() {
    converges(&EDIT).await;
}

#[tokio::test]
async fn a_deletion_converges_across_a_reconnect() {
    converges(&DELETE).await;
}

#[tokio::test]
async fn a_reaction_added_converges_across_a_reconnect() {
    converges(&REACTION_ADDED).await;
}

#[tokio::test]
async fn pins_converge_across_a_reconnect() {
    converges(&PINS).await;
}

#[tokio::test]
async fn a_reaction_removed_converges_across_a_reconnect() {
    converges(&REACTION_REMOVED).await;
}

#[tokio::test]
async fn a_reply_converges_across_a_reconnect() {
    converges(&REPLY).await;
}

#[tokio::test]
async fn a_member_joining_converges_across_a_reconnect() {
    converges(&MEMBER_JOINED).await;
}

#[tokio::test]
async fn another_member_leaving_converges_across_a_reconnect() {
    converges(&MEMBER_LEFT).await;
}

#[tokio::test]
async fn the_user_promoted_when_an_owner_leaves_converges_across_a_reconnect() {
    converges(&OWNER_LEFT).await;
}

#[tokio::test]
async fn the_user_removed_from_a_group_converges_across_a_reconnect() {
    converges(&USER_REMOVED).await;
}

#[tokio::test]
async fn the_user_removed_and_re_added_while_connected_converges_across_a_reconnect() {
    converges(&REMOVED_AND_READDED).await;
}

#[tokio::test]
async fn the_user_removed_and_re_added_while_disconnected_converges_on_resume() {
    converges(&REMOVED_AND_READDED_OFFLINE).await;
}

#[tokio::test]
async fn the_users_own_read_marker_converges_across_a_reconnect() {
    converges(&OWN_READ_MARKER).await;
}

#[tokio::test]
async fn another_members_read_marker_converges_in_the_ticks_across_a_reconnect() {
    converges(&OTHER_READ_MARKER).await;
}

#[tokio::test]
async fn another_members_name_change_converges_across_a_reconnect() {
    converges(&NAME_CHANGE).await;
}

/// Runs one row: snapshot, socket, changes, reconnect with `resume`, and after each part a
/// comparison with a fresh fetch; fails with every difference and broken promise found.
async fn converges(row: &Row) {
    let app = TestApp::spawn_with_nats().await;
    let relay = app.relay(relay_settings()).await;
    let mut scene = Scene::new(&app).await;
    for op in row.before_snapshot {
        scene.run(op).await;
    }
    let bob = scene.user(Bob).clone();
    let mut client = Client::snapshot(&app, &bob).await;
    let mut problems = Vec::new();

    client.part = "online";
    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    ws.send(client.resume()).await;
    for op in row.online {
        scene.run(op).await;
    }
    problems.extend(catch_up(&app, &bob, &mut ws, &mut client).await);
    // The socket closes; the relay learns it when the TCP connection ends.
    drop(ws);

    for op in row.offline {
        scene.run(op).await;
    }
    client.part = "after the reconnect";
    let mut ws = WsClient::connect(relay.addr, &bob.token).await;
    for op in row.before_resume {
        scene.run(op).await;
    }
    ws.send(client.resume()).await;
    problems.extend(catch_up(&app, &bob, &mut ws, &mut client).await);

    // Nothing more arrives that would change the client (a late duplicate, say), and the
    // connection is still open: silence from a closed socket would prove nothing.
    client.part = "quiet after catching up";
    let until = Instant::now() + QUIET;
    let mut late = 0;
    loop {
        match ws
            .next(until.saturating_duration_since(Instant::now()))
            .await
        {
            Received::Frame(frame) => {
                late += 1;
                client.apply(&app, &bob, frame).await;
            }
            Received::Silent => break,
            other => {
                problems.push(format!("[{}] the connection ended: {other:?}", client.part));
                break;
            }
        }
    }
    if late > 0 {
        let (fresh, _) = fresh_fetch(&app, &bob).await;
        problems.extend(differences(client.part, &client.view(), &fresh));
    }
    problems.append(&mut client.violations);
    relay.stop().await;

    if !problems.is_empty() {
        let gap = row.gap.map_or(String::new(), |gap| {
            format!("\nEXPECTED TO FAIL, the protocol cannot carry this kind: {gap}")
        });
        let mut seen = BTreeSet::new();
        let lines: Vec<&str> = problems
            .iter()
            .filter(|p| seen.insert(*p))
            .map(String::as_str)
            .collect();
        panic!(
            "row \"{}\" did not converge with a fresh fetch:{gap}\n  {}",
            row.kind,
            lines.join("\n  ")
        );
    }
}

/// Applies frames until the client holds every chat the user is in at the chat's rev and
/// equals a fresh fetch; answers the differences left when the deadline passes.
async fn catch_up(
    app: &TestApp,
    user: &TestUser,
    ws: &mut WsClient,
    client: &mut Client,
) -> Vec<String> {
    let part = client.part;
    let deadline = Instant::now() + WAIT;
    let mut revs_reached_at: Option<Instant> = None;
    loop {
        if Instant::now() < deadline {
            match ws.next(POLL).await {
                Received::Frame(frame) => {
                    client.apply(app, user, frame).await;
                    continue;
                }
                Received::Silent => {}
                other => {
                    let (fresh, _) = fresh_fetch(app, user).await;
                    let mut out = vec![format!("[{part}] the connection ended: {other:?}")];
                    out.extend(differences(part, &client.view(), &fresh));
                    return out;
                }
            }
        }
        let (fresh, revs) = fresh_fetch(app, user).await;
        let behind = client.behind(&revs);
        let view = client.view();
        if behind.is_empty() {
            if view == fresh {
                return Vec::new();
            }
            let reached = *revs_reached_at.get_or_insert_with(Instant::now);
            if reached.elapsed() > SETTLE || Instant::now() >= deadline {
                let mut out = vec![format!(
                    "[{part}] every chat's rev was reached, but {SETTLE:?} later the state still \
                     differs:"
                )];
                out.extend(differences(part, &view, &fresh));
                return out;
            }
        } else {
            revs_reached_at = None;
            if Instant::now() >= deadline {
                let mut out = vec![format!(
                    "[{part}] not caught up within {WAIT:?}: {}",
                    behind.join("; ")
                )];
                out.extend(differences(part, &view, &fresh));
                return out;
            }
        }
    }
}

/// The world a row changes: the app, its people, and the labels of chats and messages.
struct Scene<'a> {
    app: &'a TestApp,
    users: Vec<TestUser>,
    chats: BTreeMap<&'static str, i64>,
    messages: BTreeMap<&'static str, i64>,
}

impl<'a> Scene<'a> {
    /// Every row starts here: P with p1 (Alice), p2 (Bob), p3 (Alice); G with g1 (Alice),
    /// g2 (Bob), g3 (Carol), g4 (Alice). Bob has read up to p2 and g2 (he sent them), Carol
    /// up to g3, Alice everything.
    async fn new(app: &'a TestApp) -> Self {
        let mut users = Vec::new();
        for name in ["Alice", "Bob", "Carol", "Dave", "Erin"] {
            users.push(app.user(name).await);
        }
        let mut scene = Self {
            app,
            users,
            chats: BTreeMap::new(),
            messages: BTreeMap::new(),
        };
        let p1 = app
            .send_to_user(scene.user(Alice), scene.user(Bob), "p1")
            .await;
        scene.chats.insert("P", p1["chat_id"].as_i64().unwrap());
        scene.messages.insert("p1", p1["id"].as_i64().unwrap());
        let g = app
            .group(scene.user(Alice), &[scene.user(Bob), scene.user(Carol)])
            .await;
        scene.chats.insert("G", g);
        for op in [
            send(Bob, "P", "p2"),
            send(Alice, "P", "p3"),
            send(Alice, "G", "g1"),
            send(Bob, "G", "g2"),
            send(Carol, "G", "g3"),
            send(Alice, "G", "g4"),
        ] {
            scene.run(&op).await;
        }
        scene
    }

    fn user(&self, who: Who) -> &TestUser {
        &self.users[who as usize]
    }

    fn chat(&self, label: &str) -> i64 {
        self.chats[label]
    }

    fn message(&self, label: &str) -> i64 {
        self.messages[label]
    }

    async fn run(&mut self, op: &Op) {
        let app = self.app;
        let (status, body) = match *op {
            Send { by, chat, label } => {
                let body = json!({"chat_id": self.chat(chat), "text": label});
                self.post_message(by, label, body).await
            }
            Reply {
                by,
                chat,
                label,
                to,
            } => {
                let (chat, to) = (self.chat(chat), self.message(to));
                let body = json!({"chat_id": chat, "text": label, "reply_to": to});
                self.post_message(by, label, body).await
            }
            Edit { by, msg, text } => {
                let path = format!("/chat/message/{}", self.message(msg));
                app.patch(&path, self.user(by), json!({"text": text})).await
            }
            Delete { by, msg } => {
                let path = format!("/chat/message/{}", self.message(msg));
                app.delete(&path, self.user(by)).await
            }
            React { by, msg, emoji } => {
                let path = format!(
                    "/chat/message/{}/reactions/{}",
                    self.message(msg),
                    enc(emoji)
                );
                app.put(&path, self.user(by)).await
            }
            Unreact { by, msg, emoji } => {
                let path = format!(
                    "/chat/message/{}/reactions/{}",
                    self.message(msg),
                    enc(emoji)
                );
                app.delete(&path, self.user(by)).await
            }
            Pin { by, msg, on } => {
                let path = format!("/chat/message/{}/pin", self.message(msg));
                if on {
                    app.put(&path, self.user(by)).await
                } else {
                    app.delete(&path, self.user(by)).await
                }
            }
            Add { by, chat, who } => {
                let path = format!("/chat/group/{}/members", self.chat(chat));
                let body = json!({"user_ids": [self.user(who).id]});
                app.post(&path, self.user(by), body).await
            }
            Remove { by, chat, who } => {
                let path = format!(
                    "/chat/group/{}/members/{}",
                    self.chat(chat),
                    self.user(who).id
                );
                app.delete(&path, self.user(by)).await
            }
            Read { by, msg } => app.mark_read(self.user(by), self.message(msg)).await,
            Rename { who, name } => {
                app.patch("/auth/me", self.user(who), json!({"name": name}))
                    .await
            }
            Group {
                owner,
                label,
                members,
            } => {
                let ids: Vec<i64> = members.iter().map(|&w| self.user(w).id).collect();
                let body = json!({"name": label, "participant_ids": ids});
                let (status, body) = app.post("/chat/group", self.user(owner), body).await;
                if status == StatusCode::CREATED {
                    self.chats.insert(label, body["chat_id"].as_i64().unwrap());
                }
                (status, body)
            }
        };
        assert!(status.is_success(), "{op:?}: {status} {body}");
    }

    async fn post_message(
        &mut self,
        by: Who,
        label: &'static str,
        body: Value,
    ) -> (StatusCode, Value) {
        let (status, body) = self.app.post("/chat/message", self.user(by), body).await;
        if status == StatusCode::CREATED {
            self.messages.insert(label, body["id"].as_i64().unwrap());
        }
        (status, body)
    }
}

fn enc(emoji: &str) -> String {
    emoji.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// What a fresh fetch answers, in the shape of [`Client::view`], and each chat's rev.
async fn fresh_fetch(app: &TestApp, user: &TestUser) -> (Value, BTreeMap<i64, i64>) {
    let mut view = serde_json::Map::new();
    let mut revs = BTreeMap::new();
    for summary in list(app, user).await {
        let id = summary["id"].as_i64().unwrap();
        revs.insert(id, summary["rev"].as_i64().unwrap());
        // A chat the user was removed from meanwhile answers 404: the next fetch drops it.
        let messages = history(app, user, id).await.unwrap_or_default();
        view.insert(id.to_string(), chat_view(summary, messages.values()));
    }
    (Value::Object(view), revs)
}

async fn list(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let (status, body) = app.get("/chat/list?limit=200", user).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

/// A chat's messages by id (every test chat holds fewer than a page); `None` for a 404.
async fn history(app: &TestApp, user: &TestUser, chat: i64) -> Option<BTreeMap<i64, Value>> {
    let (status, body) = app
        .get(&format!("/chat/history/{chat}?limit=200"), user)
        .await;
    if status == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(status, StatusCode::OK, "{body}");
    Some(
        body.as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_i64().unwrap(), m.clone()))
            .collect(),
    )
}

/// The compared shape of one chat: its list entry and its messages keyed by id. The list's
/// order is left out (keyed by chat id): it is a sort of fields compared here.
fn chat_view<'m>(summary: Value, messages: impl Iterator<Item = &'m Value>) -> Value {
    let messages: serde_json::Map<String, Value> =
        messages.map(|m| (m["id"].to_string(), m.clone())).collect();
    json!({"summary": summary, "messages": messages})
}

/// The reference client: what a client holds after a snapshot and the frames it applied.
#[derive(Debug)]
struct Client {
    me: i64,
    chats: BTreeMap<i64, ChatState>,
    /// Display names of the people the client has met in any chat (for members who join).
    names: BTreeMap<i64, String>,
    /// Broken delivery promises: a change at or below a rev already applied (a duplicate, or
    /// one out of order), a change of a chat the client does not hold, an error frame.
    violations: Vec<String>,
    /// The part of the run, for the messages.
    part: &'static str,
}

#[derive(Debug)]
struct ChatState {
    /// The chat's list entry (`ChatSummary`) as of the rev in its own `rev` field, moved on
    /// by later changes. `unread_count` and `last_message` are derived in [`Client::view`].
    summary: Value,
    /// Every message of the chat by id, in its latest known state.
    messages: BTreeMap<i64, Value>,
    /// Every change up to here is applied: what `resume` sends.
    applied_rev: i64,
    /// How far each member has read at least, as far as the frames and the snapshot tell: the
    /// `read` tick of a message follows from these.
    read_at_least: BTreeMap<i64, i64>,
}

impl ChatState {
    fn new(me: i64, summary: Value, messages: BTreeMap<i64, Value>, applied_rev: i64) -> Self {
        let mut chat = Self {
            summary,
            messages,
            applied_rev,
            read_at_least: BTreeMap::new(),
        };
        chat.infer_markers(me);
        chat
    }

    fn summary_rev(&self) -> i64 {
        self.summary["rev"].as_i64().unwrap()
    }

    fn members(&self) -> Vec<i64> {
        ids(&self.summary["member_ids"])
    }

    fn is_private(&self) -> bool {
        self.summary["kind"] == "private"
    }

    /// Lower bounds of the members' markers from what a snapshot shows: a sender has read
    /// their own message (sending is reading); a read message has been read by every member
    /// but its sender; the caller's own marker is in the summary.
    fn infer_markers(&mut self, me: i64) {
        let members = self.members();
        for &member in &members {
            self.read_at_least.entry(member).or_insert(0);
        }
        for m in self.messages.values() {
            let (sender, seq) = (m["sender_id"].as_i64().unwrap(), m["seq"].as_i64().unwrap());
            let mut readers = vec![sender];
            if m["read"] == true {
                readers.extend(members.iter().filter(|&&r| r != sender));
            }
            for r in readers {
                if members.contains(&r) {
                    let at = self.read_at_least.entry(r).or_insert(0);
                    *at = (*at).max(seq);
                }
            }
        }
        let own = self.summary["last_read_seq"].as_i64().unwrap();
        let at = self.read_at_least.entry(me).or_insert(0);
        *at = (*at).max(own);
    }

    /// Keeps the newer of two copies of a message (each change raises its `rev`); a tick once
    /// shown stays (markers never move back, and a member joins having read everything).
    fn store(&mut self, message: &Value) {
        let id = message["id"].as_i64().unwrap();
        let read = message["read"] == true;
        match self.messages.get_mut(&id) {
            Some(held) if held["rev"].as_i64() > message["rev"].as_i64() => {
                if read {
                    held["read"] = json!(true);
                }
            }
            held => {
                let was_read = held.is_some_and(|h| h["read"] == true);
                let mut message = message.clone();
                if was_read {
                    message["read"] = json!(true);
                }
                self.messages.insert(id, message);
            }
        }
    }

    fn marker_at_least(&mut self, user: i64, seq: i64) {
        let at = self.read_at_least.entry(user).or_insert(0);
        *at = (*at).max(seq);
    }

    /// A message is read once every member but its sender has read up to it.
    fn update_ticks(&mut self) {
        let members = self.members();
        for m in self.messages.values_mut() {
            if m["read"] == true {
                continue;
            }
            let (sender, seq) = (m["sender_id"].as_i64().unwrap(), m["seq"].as_i64().unwrap());
            if members
                .iter()
                .filter(|&&r| r != sender)
                .all(|r| self.read_at_least.get(r).copied().unwrap_or(0) >= seq)
            {
                m["read"] = json!(true);
            }
        }
    }
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

impl Client {
    /// The snapshot: the chat list, then each chat's history (nothing changes meanwhile).
    async fn snapshot(app: &TestApp, user: &TestUser) -> Self {
        let mut client = Self {
            me: user.id,
            chats: BTreeMap::new(),
            names: BTreeMap::new(),
            violations: Vec::new(),
            part: "snapshot",
        };
        for summary in list(app, user).await {
            let id = summary["id"].as_i64().unwrap();
            let messages = history(app, user, id).await.unwrap();
            client.learn_names(&summary);
            let rev = summary["rev"].as_i64().unwrap();
            client
                .chats
                .insert(id, ChatState::new(user.id, summary, messages, rev));
        }
        client
    }

    fn learn_names(&mut self, summary: &Value) {
        for member in summary["members"].as_array().unwrap() {
            self.names.insert(
                member["id"].as_i64().unwrap(),
                member["name"].as_str().unwrap().to_owned(),
            );
        }
    }

    /// The `resume` frame: every chat held, at the highest rev applied.
    fn resume(&self) -> Value {
        let revs: serde_json::Map<String, Value> = self
            .chats
            .iter()
            .map(|(id, chat)| (id.to_string(), json!(chat.applied_rev)))
            .collect();
        json!({"type": "resume", "revs": revs})
    }

    /// The chats that are not where the API says they are (missing, extra, or behind).
    fn behind(&self, revs: &BTreeMap<i64, i64>) -> Vec<String> {
        let mut out = Vec::new();
        for (id, rev) in revs {
            match self.chats.get(id) {
                None => out.push(format!("chat {id} (rev {rev}) not held")),
                Some(chat) if chat.applied_rev != *rev => out.push(format!(
                    "chat {id} applied up to rev {}, the chat is at {rev}",
                    chat.applied_rev
                )),
                Some(_) => {}
            }
        }
        for id in self.chats.keys().filter(|id| !revs.contains_key(id)) {
            out.push(format!("chat {id} held, but the user is not in it"));
        }
        out
    }

    fn violation(&mut self, what: String) {
        self.violations.push(format!("[{}] {what}", self.part));
    }

    /// Checks and records the rev of a change of a held chat: the promise is once, in order.
    fn note_change(&mut self, chat_id: i64, rev: i64, frame: &Value) {
        let applied = self.chats[&chat_id].applied_rev;
        if rev <= applied && frame["type"] == "chat_removed" {
            // A client that drops frames at or below its cursor as duplicates would keep the
            // chat for good.
            self.violation(format!(
                "chat {chat_id}: chat_removed at rev {rev}, not above the rev already applied \
                 ({applied}): it should carry the removal's own rev"
            ));
        } else if rev <= applied {
            self.violation(format!(
                "chat {chat_id}: change at rev {rev} after rev {applied} was applied (a \
                 duplicate, or out of order): {}",
                short(frame)
            ));
        }
        let chat = self.chats.get_mut(&chat_id).unwrap();
        chat.applied_rev = chat.applied_rev.max(rev);
    }

    async fn apply(&mut self, app: &TestApp, user: &TestUser, frame: Value) {
        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
        let chat_id = frame["chat_id"].as_i64().unwrap_or_default();
        let rev = frame["rev"].as_i64().unwrap_or_default();
        let held = self.chats.contains_key(&chat_id);
        match kind.as_str() {
            // Not state: the connection's greeting, answers to sends, and typing notices.
            "ready" | "ack" | "typing" => {}
            "message" | "message_updated" | "member" | "chat_removed" if !held => {
                self.violation(format!(
                    "a change of chat {chat_id}, which the client does not hold (not announced \
                     by a `chat` frame, or after its `chat_removed`): {}",
                    short(&frame)
                ));
            }
            "message" | "message_updated" => {
                self.note_change(chat_id, rev, &frame);
                let me = self.me;
                let chat = self.chats.get_mut(&chat_id).unwrap();
                let message = &frame["message"];
                chat.store(message);
                if kind == "message" {
                    // Sending is reading: the server moved the sender's marker to the message.
                    let (sender, seq) = (
                        message["sender_id"].as_i64().unwrap(),
                        message["seq"].as_i64().unwrap(),
                    );
                    // Both only grow, so a summary that counts the message already is unmoved.
                    chat.marker_at_least(sender, seq);
                    let last = chat.summary["last_seq"].as_i64().unwrap();
                    chat.summary["last_seq"] = json!(last.max(seq));
                    if sender == me {
                        let own = chat.summary["last_read_seq"].as_i64().unwrap();
                        chat.summary["last_read_seq"] = json!(own.max(seq));
                    }
                }
                if rev > chat.summary_rev() {
                    chat.summary["rev"] = json!(rev);
                }
                chat.update_ticks();
            }
            "member" => {
                self.note_change(chat_id, rev, &frame);
                let user_id = frame["user_id"].as_i64().unwrap();
                if frame["change"] == "promoted" {
                    // The member is the group's owner now; only their role changes.
                    let chat = self.chats.get_mut(&chat_id).unwrap();
                    if rev > chat.summary_rev() {
                        if user_id == self.me {
                            chat.summary["role"] = json!("owner");
                        }
                        chat.summary["rev"] = json!(rev);
                    }
                    return;
                }
                if user_id == self.me {
                    self.violation(format!(
                        "a member frame about the user themself: {}",
                        short(&frame)
                    ));
                }
                // A joiner's name comes with the frame; one the client knows otherwise is
                // kept for a leaver.
                if let Some(name) = frame["name"].as_str() {
                    self.names.insert(user_id, name.to_owned());
                }
                let name = self
                    .names
                    .get(&user_id)
                    .cloned()
                    .unwrap_or_else(|| UNKNOWN_NAME.to_owned());
                let chat = self.chats.get_mut(&chat_id).unwrap();
                // A summary newer than the change counts it already.
                if rev > chat.summary_rev() {
                    let mut members: BTreeMap<i64, Value> = chat.summary["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| (m["id"].as_i64().unwrap(), m.clone()))
                        .collect();
                    if frame["change"] == "joined" {
                        members.insert(user_id, json!({"id": user_id, "name": name}));
                        // A member joins having read everything up to now.
                        let last = chat.summary["last_seq"].as_i64().unwrap();
                        chat.read_at_least.insert(user_id, last);
                    } else {
                        members.remove(&user_id);
                        chat.read_at_least.remove(&user_id);
                    }
                    chat.summary["member_ids"] = json!(members.keys().collect::<Vec<_>>());
                    chat.summary["members"] = json!(members.values().collect::<Vec<_>>());
                    chat.summary["rev"] = json!(rev);
                }
                chat.update_ticks();
            }
            "chat_removed" => {
                self.note_change(chat_id, rev, &frame);
                self.chats.remove(&chat_id);
            }
            "chat" => {
                let summary = frame["chat"].clone();
                let id = summary["id"].as_i64().unwrap();
                self.learn_names(&summary);
                let known = self.chats.get(&id).map(|c| c.applied_rev);
                if known.is_some_and(|applied| rev <= applied) {
                    // Nothing new: the changes after `rev` that follow were applied already.
                    return;
                }
                // A chat the client does not hold arrives as its list entry only; its
                // messages are read as a snapshot reads them. Changes after `rev` follow, and
                // those the summary already counts (up to its own `rev`) leave it unchanged.
                let messages = history(app, user, id).await.unwrap_or_default();
                let chat = ChatState::new(self.me, summary, messages, rev);
                self.chats.insert(id, chat);
                self.chats.get_mut(&id).unwrap().update_ticks();
            }
            "read" => {
                let (user_id, seq) = (
                    frame["user_id"].as_i64().unwrap(),
                    frame["last_read_seq"].as_i64().unwrap(),
                );
                let me = self.me;
                if let Some(chat) = self.chats.get_mut(&chat_id) {
                    chat.marker_at_least(user_id, seq);
                    if user_id == me {
                        let own = chat.summary["last_read_seq"].as_i64().unwrap();
                        chat.summary["last_read_seq"] = json!(own.max(seq));
                    }
                    chat.update_ticks();
                }
            }
            "user_updated" => {
                let user_id = frame["user_id"].as_i64().unwrap();
                let name = frame["name"].clone();
                self.names
                    .insert(user_id, name.as_str().unwrap_or_default().to_owned());
                let me = self.me;
                if let Some(chat) = self.chats.get_mut(&chat_id) {
                    for member in chat.summary["members"].as_array_mut().unwrap() {
                        if member["id"] == user_id {
                            member["name"] = name.clone();
                        }
                    }
                    // A private chat is named after the other member.
                    if chat.is_private() && user_id != me {
                        chat.summary["name"] = name;
                    }
                }
            }
            _ => self.violation(format!("an unexpected frame: {}", short(&frame))),
        }
    }

    /// What the client shows, in the shape of [`fresh_fetch`]. The unread count and the last
    /// message follow from the messages held (every test chat is held whole), as the server
    /// defines them: messages after the caller's marker up to `last_seq`, deleted ones aside;
    /// the message at `last_seq` in its latest state.
    fn view(&self) -> Value {
        let mut view = serde_json::Map::new();
        for (id, chat) in &self.chats {
            let mut summary = chat.summary.clone();
            let last_seq = summary["last_seq"].as_i64().unwrap();
            let own = summary["last_read_seq"].as_i64().unwrap();
            let by_seq = |seq: i64| chat.messages.values().find(|m| m["seq"] == seq);
            let unread = chat
                .messages
                .values()
                .filter(|m| {
                    let seq = m["seq"].as_i64().unwrap();
                    seq > own && seq <= last_seq && m["deleted"] != true
                })
                .count();
            summary["unread_count"] = json!(unread);
            summary["last_message"] = by_seq(last_seq).cloned().unwrap_or(Value::Null);
            view.insert(id.to_string(), chat_view(summary, chat.messages.values()));
        }
        Value::Object(view)
    }
}

/// Every place where the client and a fresh fetch differ, one line each.
fn differences(part: &str, client: &Value, fresh: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", client, fresh, &mut out);
    out.into_iter().map(|d| format!("[{part}] {d}")).collect()
}

fn diff(path: &str, client: &Value, fresh: &Value, out: &mut Vec<String>) {
    match (client, fresh) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let here = if path.is_empty() {
                    format!("chat {key}")
                } else if path.ends_with("messages") {
                    format!("{path} {key}")
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&here, x, y, out),
                    (Some(x), None) => {
                        out.push(format!("{here}: only the client has {}", short(x)))
                    }
                    (None, Some(y)) => {
                        out.push(format!("{here}: the client lacks {}", short(y)));
                    }
                    (None, None) => {}
                }
            }
        }
        (Value::Object(_), _) | (_, Value::Object(_)) | (Value::Array(_), _) if client != fresh => {
            out.push(format!(
                "{path}: client {}, fresh fetch {}",
                short(client),
                short(fresh)
            ));
        }
        _ if client != fresh => out.push(format!("{path}: client {client}, fresh fetch {fresh}")),
        _ => {}
    }
}

/// A value for a message, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text
    }
}
