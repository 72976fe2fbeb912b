//! One WebSocket connection: its queue from the hub, its frames from the client, and the I/O
//! that carries out what its [`Delivery`] machine decides.
//!
//! Every decision about what to send when (cursors, membership intervals, the reorder window,
//! resume, reconcile, retries) is the machine's, in `delivery.rs`, tested there on its own.
//! This file only feeds it what happens (live events, client frames, signals from the hub,
//! the clock) and does what it asks: write frames, read the change log, the user's chats or
//! chat summaries from Postgres, and route chats in the hub.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_tungstenite::tungstenite;
use windi_shared::{
    AppState,
    domain::{
        model::{Change, MessageOut, Target},
        presence::{FRAME_EVERY, Visibility},
    },
    events::Event,
    http::error::ErrorBody,
    service::{
        auth::TokenSubject,
        send::{Outgoing, send_message},
    },
    store::{blocks, chats, members, messages, presence, users},
};

use crate::{
    RelaySettings,
    delivery::{Action, Delivery, Kind},
    hub::{ConnId, Hub, Item, Signals, Slot, Stats},
    presence::Batcher,
    protocol::{ClientFrame, ServerFrame},
};

/// Close codes (RFC 6455 §7.4.1).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
    /// windi's own (4000–4999 are for applications): the session ended. Reconnecting with the
    /// same token is pointless; refresh (which fails if the session is gone) or log in.
    pub const SESSION_ENDED: u16 = 4001;
    /// The access token the socket was opened with expired: reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4002;
}

/// Live events written before one flush, at most (bounded, so a connection's turn of the
/// loop stays short and its other signals are heard).
const MAX_BATCH: usize = 32;
/// A client may send one typing frame per chat this often; extra ones are dropped.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);

/// What the reader task passes on.
enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// The client sent a Close frame: it is answered, and the connection ends.
    Close,
    /// The socket failed (e.g. a frame over the size limit); the connection ends.
    Failed {
        reason: String,
        too_big: bool,
    },
}

/// The socket was closed or a write failed; the session ends.
struct Closed;

/// What the machine sends: a live event's frame, or a change read from the log.
#[derive(Debug)]
enum Payload {
    Live(Item),
    /// Boxed: a change is ten times the size of a live item.
    Stored(Box<Change>),
}

struct Session {
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    user_id: i64,
    conn: ConnId,
    sink: SplitSink<WebSocket, Message>,
    delivery: Delivery<Payload>,
    /// The machine's clock starts here.
    started: Instant,
    typing_sent: HashMap<i64, Instant>,
    /// While true, [`Session::write`] only buffers; the batch ends with one flush.
    batching: bool,
    /// The presence changes of people this user shares chats with, sent in batches; `None`
    /// when the user hides their own presence (they see no one's).
    presence: Option<Batcher>,
    /// Whether the user shares read receipts: who does not sees no one else's `read` frames.
    receipts: bool,
    /// Messages (chat, seq) written during a batch, noted as delivered once it is flushed.
    handed: Vec<(i64, i64)>,
}

/// Removes the connection from the hub however the session ends.
struct Registered {
    hub: Arc<Hub>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.unregister(self.conn);
    }
}

/// Runs a connection to its end; the user's connection slot is given back then.
pub async fn run(
    _slot: Slot,
    socket: WebSocket,
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    subject: TokenSubject,
    mut shutdown: watch::Receiver<bool>,
) {
    let TokenSubject {
        user_id,
        session_id,
        expires_at,
    } = subject;
    // The token's expiry as a point on this process's clock.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token_expires = Instant::now() + Duration::from_secs(expires_at.saturating_sub(unix_now));
    let (mut sink, stream) = socket.split();
    // The user's member_rev before subscribing: a join or leave after this read is either
    // published after the subscription exists or found by the poller.
    let member_rev = match users::member_revs(&state.db, &[user_id]).await {
        Ok(rows) => rows.first().map_or(0, |&(_, r)| r),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the user");
            let _ = close(&mut sink, close_code::INTERNAL, "relay unavailable").await;
            return;
        }
    };
    let registration = hub.register(user_id, session_id, member_rev).await;
    let _registered = Registered {
        hub: hub.clone(),
        conn: registration.conn,
    };
    let started = Instant::now();
    let mut session = Session {
        hub: hub.clone(),
        state,
        settings: settings.clone(),
        user_id,
        conn: registration.conn,
        sink,
        delivery: Delivery::new(settings.delivery, &[], Duration::ZERO),
        started,
        typing_sent: HashMap::new(),
        batching: false,
        presence: None,
        receipts: true,
        handed: Vec::new(),
    };
    let (mut items, signals) = (registration.items, registration.signals);

    let last_heard = Arc::new(AtomicU64::new(0));
    let (frames_tx, mut frames) = mpsc::channel(16);
    let reader = tokio::spawn(read_frames(
        stream,
        frames_tx,
        last_heard.clone(),
        started,
        settings.max_frame_bytes,
    ));

    // The rare paths are boxed (here and in `on_live`): a task's future is as big as its
    // largest state, allocated for the connection's whole life, and the send path and the
    // database reads are most of it (11 KiB per idle connection unboxed).
    if Box::pin(session.start()).await.is_err() {
        reader.abort();
        return;
    }

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.reset();
    // One timer for the connection's life, not a new one registered on every turn of the loop.
    let expiry = tokio::time::sleep_until(token_expires);
    tokio::pin!(expiry);
    loop {
        let deadline = session.delivery.deadline().map(|d| started + d);
        let step = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = session.close(close_code::RESTART, "relay restarting; reconnect and resume").await;
                break;
            }
            () = signals.ended.notified() => {
                let _ = session.close(close_code::SESSION_ENDED, "session ended").await;
                break;
            }
            () = &mut expiry => {
                // The client reconnects with a fresh token (after a refresh) and resumes.
                let _ = session
                    .error("your token expired; reconnect with a fresh one", "token_expired")
                    .await;
                let _ = session.close(close_code::TOKEN_EXPIRED, "token expired").await;
                break;
            }
            () = signals.kill.notified() => {
                Stats::add(&hub.stats.slow_consumers, 1);
                session.slow_consumer().await;
                break;
            }
            frame = frames.recv() => Box::pin(session.on_incoming(frame)).await,
            item = items.recv() => match item {
                Some(item) => session.on_live_batch(item, &mut items).await,
                None => break,
            },
            () = signals.wake.notified() => Box::pin(session.on_signals(&signals)).await,
            () = sleep_until(deadline), if deadline.is_some() => Box::pin(session.on_tick()).await,
            () = sleep_until(session.presence_due()), if session.presence_due().is_some() => {
                Box::pin(session.send_presence()).await
            }
            _ = ping.tick() => {
                let heard = Duration::from_millis(last_heard.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(heard) > settings.idle_timeout {
                    let _ = session.close(close_code::GOING_AWAY, "idle timeout").await;
                    break;
                }
                session.write(Message::Ping(Default::default())).await
            }
        };
        if step.is_err() {
            break;
        }
    }
    reader.abort();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads client frames until the socket ends, noting when the client was last heard from.
/// A frame over `max_frame_bytes` ends the connection.
async fn read_frames(
    mut stream: futures::stream::SplitStream<WebSocket>,
    frames: mpsc::Sender<Incoming>,
    last_heard: Arc<AtomicU64>,
    started: Instant,
    max_frame_bytes: usize,
) {
    while let Some(received) = stream.next().await {
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_heard.store(elapsed, Ordering::Relaxed);
        let incoming = match received {
            Ok(Message::Text(text)) if text.len() > max_frame_bytes => Incoming::Failed {
                reason: format!(
                    "frame of {} bytes; the limit is {max_frame_bytes}",
                    text.len()
                ),
                too_big: true,
            },
            Ok(Message::Binary(data)) if data.len() > max_frame_bytes => Incoming::Failed {
                reason: format!(
                    "frame of {} bytes; the limit is {max_frame_bytes}",
                    data.len()
                ),
                too_big: true,
            },
            Ok(Message::Text(text)) => Incoming::Text(text),
            Ok(Message::Binary(_)) => Incoming::Binary,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => {
                let _ = frames.send(Incoming::Close).await;
                break;
            }
            Err(e) => {
                let reason = e.to_string();
                // A frame over the size limit is tungstenite's capacity error.
                let too_big = matches!(
                    e.into_inner().downcast_ref::<tungstenite::Error>(),
                    Some(tungstenite::Error::Capacity(_))
                );
                Incoming::Failed { reason, too_big }
            }
        };
        let failed = matches!(incoming, Incoming::Failed { .. });
        if frames.send(incoming).await.is_err() || failed {
            break;
        }
    }
}

impl Session {
    /// When the next `presence` frame may go, if one is waiting.
    fn presence_due(&self) -> Option<Instant> {
        self.presence
            .as_ref()
            .and_then(Batcher::next_at)
            .map(Instant::from_std)
    }

    /// The presence changes gathered since the last frame, in one frame.
    async fn send_presence(&mut self) -> Result<(), Closed> {
        let Some(frame) = self
            .presence
            .as_mut()
            .and_then(|b| b.due(std::time::Instant::now()))
        else {
            return Ok(());
        };
        self.frame(&ServerFrame::Presence { presence: &frame })
            .await
    }

    /// Subscribes to the user's chats, then takes each chat's current rev as the starting
    /// point: anything committed later is published after the subscription exists. A user in
    /// 2,000 chats costs two queries and one batch of subscriptions here, and no queue slots.
    async fn start(&mut self) -> Result<(), Closed> {
        let positions = match chats::positions_of_member(&self.state.db, self.user_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the user's chats");
                return self.close(close_code::INTERNAL, "relay unavailable").await;
            }
        };
        let routes: Vec<(i64, i64)> = positions.iter().map(|p| (p.chat_id, p.rev)).collect();
        self.hub.join(self.conn, &routes).await;
        let now = chats::positions_of_member(&self.state.db, self.user_id)
            .await
            .unwrap_or(positions);
        // Chats joined between the two reads are routed too.
        let routed: HashSet<i64> = routes.iter().map(|&(id, _)| id).collect();
        let late: Vec<(i64, i64)> = now
            .iter()
            .filter(|p| !routed.contains(&p.chat_id))
            .map(|p| (p.chat_id, p.rev))
            .collect();
        if !late.is_empty() {
            self.hub.join(self.conn, &late).await;
        }
        self.delivery = Delivery::new(self.settings.delivery, &now, self.now());
        // Who hides their own presence sees no one's (read once: a change applies from the
        // next connection).
        // The same for read receipts.
        let (sees, receipts) = match presence::privacy_of(&self.state.db, self.user_id).await {
            Ok(privacy) => privacy.map_or((true, true), |p| {
                (p.presence == Visibility::Contacts, p.read_receipts)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the user's privacy; no presence frames");
                (false, false)
            }
        };
        self.presence = sees.then(|| Batcher::new(FRAME_EVERY));
        self.receipts = receipts;
        self.frame(&ServerFrame::Ready {
            user_id: self.user_id,
        })
        .await
    }

    /// The machine's clock: time since the connection started.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A live event, and those queued behind it (up to [`MAX_BATCH`]), written with one
    /// flush: a message and its sender's read marker, or a burst into a big group, then cost
    /// one system call per connection instead of one per frame.
    async fn on_live_batch(
        &mut self,
        first: Item,
        items: &mut mpsc::Receiver<Item>,
    ) -> Result<(), Closed> {
        self.batching = true;
        let mut done = self.on_live(first).await;
        for _ in 1..MAX_BATCH {
            if done.is_err() {
                break;
            }
            match items.try_recv() {
                Ok(item) => done = self.on_live(item).await,
                Err(_) => break,
            }
        }
        self.batching = false;
        done?;
        match tokio::time::timeout(self.settings.write_timeout, self.sink.flush()).await {
            Ok(Ok(())) => {
                if !self.handed.is_empty() {
                    self.hub.note_delivered(self.user_id, self.handed.drain(..));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                Stats::add(&self.hub.stats.slow_consumers, 1);
                Err(Closed)
            }
        }
    }

    /// Whether `reader`'s read marker is shown to this user: their own always (every device
    /// keeps the unread count); another's only if both share read receipts.
    fn sees_read(&self, reader: i64, hidden: bool) -> bool {
        reader == self.user_id || (self.receipts && !hidden)
    }

    /// A live event from the hub: a change goes to the machine; news that is not a change
    /// (read markers, typing, names) is sent as it comes, with how far the chat is delivered.
    async fn on_live(&mut self, item: Item) -> Result<(), Closed> {
        if let Some((chat_id, rev)) = item.event.change() {
            let kind = self.kind_of_event(&item.event);
            let now = self.now();
            let actions = self
                .delivery
                .live(chat_id, rev, kind, Payload::Live(item), now);
            self.count_gaps(&actions);
            return Box::pin(self.carry_out(actions)).await;
        }
        match &*item.event {
            Event::MessageRead {
                chat_id,
                user_id,
                last_read_seq,
                hidden,
                ..
            } => match self.delivery.position(*chat_id) {
                Some(rev) if self.sees_read(*user_id, *hidden) => {
                    self.frame(&ServerFrame::Read {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        last_read_seq: *last_read_seq,
                        rev,
                    })
                    .await
                }
                _ => Ok(()),
            },
            Event::MessageDelivered {
                chat_id,
                user_id,
                delivered_seq,
                ..
            } => match self.delivery.position(*chat_id) {
                Some(rev) if *user_id != self.user_id => {
                    self.frame(&ServerFrame::Delivered {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        delivered_seq: *delivered_seq,
                        rev,
                    })
                    .await
                }
                _ => Ok(()),
            },
            Event::Typing { chat_id, user_id } if *user_id != self.user_id => {
                match self.delivery.position(*chat_id) {
                    Some(rev) => {
                        self.frame(&ServerFrame::Typing {
                            chat_id: *chat_id,
                            user_id: *user_id,
                            rev,
                        })
                        .await
                    }
                    None => Ok(()),
                }
            }
            Event::UserUpdated {
                chat_id,
                user_id,
                name,
            } => match self.delivery.position(*chat_id) {
                Some(rev) => {
                    self.frame(&ServerFrame::UserUpdated {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        name,
                        rev,
                    })
                    .await
                }
                None => Ok(()),
            },
            Event::Presence { presence, .. } => {
                if let Some(batcher) = &mut self.presence {
                    batcher.offer(*presence);
                }
                Ok(())
            }
            // The user joined or left a chat: which one the chat list says.
            Event::ChatAdded { .. } | Event::ChatRemoved { .. } => {
                let actions = self.delivery.membership_changed();
                Box::pin(self.carry_out(actions)).await
            }
            _ => Ok(()),
        }
    }

    /// How a live change concerns this connection's user.
    fn kind_of_event(&self, event: &Event) -> Kind {
        match event {
            Event::MemberLeft { user_id, .. } if *user_id == self.user_id => Kind::OwnLeft,
            Event::MemberJoined { user_id, .. } if *user_id == self.user_id => Kind::OwnJoined,
            _ => Kind::Change,
        }
    }

    /// How a change read from the log concerns this connection's user.
    fn kind_of_change(&self, change: &Change) -> Kind {
        if change.kind != "member" || change.user_id != Some(self.user_id) {
            return Kind::Change;
        }
        match change.change.as_deref() {
            Some("left") => Kind::OwnLeft,
            Some("joined") => Kind::OwnJoined,
            _ => Kind::Change,
        }
    }

    /// Reads the machine asks for right after a live change or a timer are gaps: changes that
    /// did not come (or not in time) as events.
    fn count_gaps(&self, actions: &[Action<Payload>]) {
        let reads = actions
            .iter()
            .filter(|a| matches!(a, Action::Read { .. }))
            .count();
        Stats::add(&self.hub.stats.gaps, reads as u64);
    }

    /// Nudges from the poller, and requests to re-read the chat list.
    async fn on_signals(&mut self, signals: &Signals) -> Result<(), Closed> {
        let pending = signals.take();
        let mut actions = Vec::new();
        for (chat_id, rev) in pending.nudges {
            actions.extend(self.delivery.nudge(chat_id, rev));
        }
        if pending.reconcile {
            actions.extend(self.delivery.membership_changed());
        }
        self.carry_out(actions).await
    }

    /// One of the machine's timers is due (the resume wait, the reorder window, a retry).
    async fn on_tick(&mut self) -> Result<(), Closed> {
        let now = self.now();
        let actions = self.delivery.tick(now);
        self.count_gaps(&actions);
        self.carry_out(actions).await
    }

    /// Does what the machine asks, in order, handing it back what each read returns.
    async fn carry_out(&mut self, actions: Vec<Action<Payload>>) -> Result<(), Closed> {
        let mut queue: VecDeque<Action<Payload>> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(Payload::Live(item)) => {
                    if let Some(frame) = item.frame() {
                        self.write(Message::Text(frame.clone())).await?;
                        Stats::add(&self.hub.stats.delivered, 1);
                        if let Event::MessageCreated { message, .. } = &*item.event {
                            self.handed(message);
                        }
                    }
                }
                Action::Send(Payload::Stored(change)) => {
                    if let Some(frame) = ServerFrame::of_change(&change) {
                        self.frame(&frame).await?;
                        Stats::add(&self.hub.stats.backfilled, 1);
                        if let ServerFrame::Message { message, .. } = &frame {
                            self.handed(message);
                        }
                    }
                }
                Action::Removed { chat_id, rev } => {
                    self.frame(&ServerFrame::ChatRemoved { chat_id, rev })
                        .await?;
                }
                Action::Announce(chats) => queue.extend(self.announce(&chats).await?),
                Action::Read { chat_id, after } => {
                    queue.extend(self.read(chat_id, after).await);
                }
                Action::Route(routes) => self.hub.join(self.conn, &routes).await,
                Action::Unroute(chat_id) => self.hub.leave(self.conn, chat_id),
                Action::ReadPositions => {
                    Stats::add(&self.hub.stats.reconciles, 1);
                    match chats::positions_of_member(&self.state.db, self.user_id).await {
                        Ok(positions) => queue.extend(self.delivery.positions(&positions)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot re-read the user's chats; retrying");
                            let now = self.now();
                            self.delivery.positions_failed(now);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One page of a chat's log after `after`, handed to the machine. Read through the hub, so
    /// every connection of this relay asking for the same page at once shares one query.
    async fn read(&mut self, chat_id: i64, after: i64) -> Vec<Action<Payload>> {
        match self.hub.catch_up(chat_id, after).await {
            Ok(page) => {
                let entries = page
                    .changes
                    .iter()
                    .map(|change| {
                        let kind = self.kind_of_change(change);
                        (change.rev, kind, Payload::Stored(Box::new(change.clone())))
                    })
                    .collect();
                self.delivery
                    .page(chat_id, after, entries, page.rev, page.more)
            }
            Err(e) => {
                Stats::add(&self.hub.stats.backfill_failures, 1);
                tracing::warn!(error = %e, chat_id, "backfill failed; retrying with backoff");
                let now = self.now();
                self.delivery.read_failed(chat_id, now);
                Vec::new()
            }
        }
    }

    /// Sends these chats' summaries as `chat` frames, and tells the machine which were sent.
    /// If the summaries cannot be read the connection ends (the client resumes).
    async fn announce(&mut self, chats: &[(i64, i64)]) -> Result<Vec<Action<Payload>>, Closed> {
        let ids: Vec<i64> = chats.iter().map(|&(id, _)| id).collect();
        let summaries = match chats::summaries_of(&self.state.db, self.user_id, &ids).await {
            Ok(summaries) => summaries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load chat summaries; closing to resume");
                self.close(
                    close_code::INTERNAL,
                    "relay unavailable; reconnect and resume",
                )
                .await?;
                return Err(Closed);
            }
        };
        let mut actions = Vec::new();
        for &(chat_id, rev) in chats {
            // A chat the user has left since is missing.
            let found = summaries.iter().find(|c| c.id == chat_id);
            if let Some(chat) = found {
                self.frame(&ServerFrame::Chat { chat, rev }).await?;
            }
            actions.extend(self.delivery.announced(chat_id, found.is_some()));
        }
        Ok(actions)
    }

    /// A client frame, or the end of the client's side (`None`).
    async fn on_incoming(&mut self, frame: Option<Incoming>) -> Result<(), Closed> {
        match frame {
            Some(Incoming::Text(text)) => self.on_text(&text).await,
            Some(Incoming::Binary) => self.error("frames must be JSON text", "bad_frame").await,
            // The client said goodbye: say it back (a normal closure, not a dropped socket).
            // Reading the client's Close queued tungstenite's answer, which echoes its code;
            // closing the sink sends it.
            Some(Incoming::Close) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
                Err(Closed)
            }
            Some(Incoming::Failed { reason, too_big }) => {
                let code = if too_big {
                    close_code::TOO_BIG
                } else {
                    close_code::PROTOCOL_ERROR
                };
                let _ = self.close(code, &reason).await;
                Err(Closed)
            }
            None => Err(Closed),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closed> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                return self
                    .error(&format!("unreadable frame: {e}"), "bad_frame")
                    .await;
            }
        };
        match frame {
            ClientFrame::Resume {
                revs: Some(revs), ..
            } => self.resume_by_rev(revs).await,
            ClientFrame::Resume {
                chats: Some(chats), ..
            } => self.resume_by_seq(chats).await,
            ClientFrame::Resume { .. } => {
                self.error("resume needs `revs` (or `chats`)", "bad_frame")
                    .await
            }
            ClientFrame::Send {
                chat_id,
                recipient_id,
                text,
                dedup_key,
                reply_to,
                attachments,
                mentions,
            } => {
                let out = Outgoing {
                    text: &text,
                    dedup_key: dedup_key.as_deref(),
                    reply_to,
                    attachments: &attachments,
                    mentions: &mentions,
                };
                self.send(recipient_id, chat_id, out).await
            }
            ClientFrame::Typing { chat_id } => self.typing(chat_id).await,
            ClientFrame::Away { away } => self.away(away).await,
        }
    }

    /// Replays every change after each listed rev, and reconciles membership: the user's chats
    /// that are not listed arrive as `chat` frames, listed ones they left as `chat_removed`.
    async fn resume_by_rev(&mut self, revs: HashMap<String, i64>) -> Result<(), Closed> {
        let mut listed = BTreeMap::new();
        for (key, rev) in revs {
            match key.parse::<i64>() {
                Ok(chat_id) => {
                    listed.insert(chat_id, rev);
                }
                Err(_) => {
                    self.error(&format!("revs: {key:?} is not a chat id"), "bad_frame")
                        .await?;
                }
            }
        }
        let positions = match chats::positions_of_member(&self.state.db, self.user_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the user's chats for resume");
                return self.error("resume failed; try again", "unavailable").await;
            }
        };
        let gone: Vec<i64> = listed
            .keys()
            .copied()
            .filter(|id| !positions.iter().any(|p| p.chat_id == *id))
            .collect();
        let left = if gone.is_empty() {
            BTreeMap::new()
        } else {
            match members::left_revs(&self.state.db, self.user_id, &gone).await {
                Ok(rows) => rows.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the chats left for resume");
                    return self.error("resume failed; try again", "unavailable").await;
                }
            }
        };
        let now = self.now();
        match self.delivery.resume(&listed, &positions, &left, now) {
            Ok(actions) => self.carry_out(actions).await?,
            Err(wait) => return self.resume_refused(wait).await,
        }
        self.news_since(&listed).await
    }

    /// A message was written to this device: its delivered receipt is noted (the keeper
    /// writes it within a second), once the bytes are flushed: at the end of a batch, or now
    /// outside one (where each write flushes). The sender's own messages need none.
    fn handed(&mut self, message: &MessageOut) {
        if message.sender_id == self.user_id {
            return;
        }
        let handed = (message.chat_id, message.seq);
        if self.batching {
            self.handed.push(handed);
        } else {
            self.hub.note_delivered(self.user_id, [handed]);
        }
    }

    /// Read markers and names are not changes, so a replay does not carry them: after it, the
    /// markers of the listed chats that moved at or after the client's rev are sent as `read`
    /// and `delivered` frames, and the names of their members changed since as `user_updated`.
    async fn news_since(&mut self, listed: &BTreeMap<i64, i64>) -> Result<(), Closed> {
        let chats: Vec<(i64, i64)> = listed
            .iter()
            .filter(|&(&chat_id, _)| self.delivery.delivers(chat_id))
            .map(|(&chat_id, &rev)| (chat_id, rev))
            .collect();
        if chats.is_empty() {
            return Ok(());
        }
        let db = &self.state.db;
        let news = match members::markers_since(db, &chats).await {
            Ok(markers) => users::renamed_since(db, &chats)
                .await
                .map(|names| (markers, names)),
            Err(e) => Err(e),
        };
        let (markers, names) = match news {
            Ok(news) => news,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read markers and names for resume");
                return self
                    .error(
                        "read markers and names could not be loaded; resume again",
                        "unavailable",
                    )
                    .await;
            }
        };
        for n in names {
            if let Some(rev) = self.delivery.position(n.chat_id) {
                self.frame(&ServerFrame::UserUpdated {
                    chat_id: n.chat_id,
                    user_id: n.user_id,
                    name: &n.name,
                    rev,
                })
                .await?;
            }
        }
        for m in markers {
            let Some(rev) = self.delivery.position(m.chat_id) else {
                continue;
            };
            if let Some(last_read_seq) = m.last_read_seq
                && self.sees_read(m.user_id, m.hidden)
            {
                self.frame(&ServerFrame::Read {
                    chat_id: m.chat_id,
                    user_id: m.user_id,
                    last_read_seq,
                    rev,
                })
                .await?;
            }
            if let Some(delivered_seq) = m.delivered_seq
                && m.user_id != self.user_id
            {
                self.frame(&ServerFrame::Delivered {
                    chat_id: m.chat_id,
                    user_id: m.user_id,
                    delivered_seq,
                    rev,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The message-only form: each listed chat from the message after this seq, in rev order.
    async fn resume_by_seq(&mut self, chats: HashMap<String, i64>) -> Result<(), Closed> {
        let mut after = BTreeMap::new();
        for (key, last_seq) in chats {
            let chat_id = match key.parse::<i64>() {
                Ok(id) if self.delivery.delivers(id) => id,
                _ => {
                    self.error(&format!("chat {key}: not found"), "not_found")
                        .await?;
                    continue;
                }
            };
            let db = &self.state.db;
            let found = match messages::created_rev_of_seq(db, chat_id, last_seq).await {
                Ok(rev) => chats::revs(db, &[chat_id])
                    .await
                    .map(|r| r.first().map(|&(_, current)| (rev, current))),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some(position)) => {
                    after.insert(chat_id, position);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, chat_id, "resume failed");
                    self.error("resume failed; try again", "unavailable")
                        .await?;
                }
            }
        }
        let now = self.now();
        match self.delivery.resume_by_seq(&after, now) {
            Ok(actions) => self.carry_out(actions).await,
            Err(wait) => self.resume_refused(wait).await,
        }
    }

    async fn resume_refused(&mut self, wait: Duration) -> Result<(), Closed> {
        let detail = format!(
            "too many resumes; try again in {} ms",
            wait.as_millis().max(1)
        );
        self.error(&detail, "rate_limited").await
    }

    async fn send(
        &mut self,
        recipient_id: Option<i64>,
        chat_id: Option<i64>,
        out: Outgoing<'_>,
    ) -> Result<(), Closed> {
        let key = out.dedup_key;
        let sent = match Target::from_fields(recipient_id, chat_id) {
            Ok(target) => send_message(&self.state, self.user_id, target, out).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(sent) => {
                self.frame(&ServerFrame::Ack {
                    dedup_key: key,
                    created: sent.created,
                    message: &sent.message,
                })
                .await
            }
            // The key tells the client which of its sends this was.
            Err(e) => {
                let body = ErrorBody::of(&e);
                self.frame(&ServerFrame::Error {
                    detail: &body.detail,
                    code: &body.code,
                    dedup_key: key,
                })
                .await
            }
        }
    }

    async fn typing(&mut self, chat_id: i64) -> Result<(), Closed> {
        if !self.delivery.delivers(chat_id) {
            return self
                .error(&format!("chat {chat_id}: not found"), "not_found")
                .await;
        }
        let now = Instant::now();
        if self
            .typing_sent
            .get(&chat_id)
            .is_some_and(|&last| now.duration_since(last) < TYPING_INTERVAL)
        {
            return Ok(());
        }
        if let Err(e) = self.state.limits.typing.check(self.user_id) {
            let body = ErrorBody::of(&e);
            return self.error(&body.detail, &body.code).await;
        }
        // A private chat closed by a block carries no typing either way, as it carries no
        // messages (one indexed read, at most once per chat per TYPING_INTERVAL).
        match blocks::in_private_chat(&self.state.db, chat_id).await {
            Ok(false) => {}
            Ok(true) => return self.error("blocked", "blocked").await,
            Err(e) => {
                tracing::debug!(error = %e, "typing not sent: the block check failed");
                return Ok(());
            }
        }
        self.typing_sent.insert(chat_id, now);
        self.state
            .events
            .publish_ephemeral(Event::Typing {
                chat_id,
                user_id: self.user_id,
            })
            .await;
        Ok(())
    }

    /// The client says the user is away (or back): stored, and announced to their contacts
    /// at once (a presence change like a connection's, batched on each receiving side).
    /// Limited like typing, per user.
    async fn away(&mut self, away: bool) -> Result<(), Closed> {
        if let Err(e) = self.state.limits.typing.check(self.user_id) {
            let body = ErrorBody::of(&e);
            return self.error(&body.detail, &body.code).await;
        }
        let db = &self.state.db;
        let done = async {
            presence::set_away(db, self.user_id, away).await?;
            crate::keeper::announce(db, &self.state.events, vec![self.user_id]).await
        }
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot set away");
            return self
                .error("away could not be stored; try again", "unavailable")
                .await;
        }
        Ok(())
    }

    async fn error(&mut self, detail: &str, code: &str) -> Result<(), Closed> {
        self.frame(&ServerFrame::Error {
            detail,
            code,
            dedup_key: None,
        })
        .await
    }

    /// Tells a client that fell behind why it is being closed, without waiting on it long.
    async fn slow_consumer(&mut self) {
        let frame = ServerFrame::Error {
            detail: "you are too far behind; reconnect and resume from your last rev",
            code: "slow_consumer",
            dedup_key: None,
        };
        let farewell = self.sink.send(Message::Text(frame.to_json().into()));
        let _ = tokio::time::timeout(Duration::from_secs(1), farewell).await;
        let _ = self.close(close_code::POLICY, "slow consumer").await;
    }

    async fn frame(&mut self, frame: &ServerFrame<'_>) -> Result<(), Closed> {
        self.write(Message::Text(frame.to_json().into())).await
    }

    /// Writes one frame; a client that does not take it within the write timeout is too slow.
    async fn write(&mut self, message: Message) -> Result<(), Closed> {
        let write = async {
            if self.batching {
                self.sink.feed(message).await
            } else {
                self.sink.send(message).await
            }
        };
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                Stats::add(&self.hub.stats.slow_consumers, 1);
                Err(Closed)
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Closed> {
        close(&mut self.sink, code, reason).await
    }
}

async fn close(
    sink: &mut SplitSink<WebSocket, Message>,
    code: u16,
    reason: &str,
) -> Result<(), Closed> {
    let frame = CloseFrame {
        code,
        reason: reason.chars().take(120).collect::<String>().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
    Err(Closed)
}
