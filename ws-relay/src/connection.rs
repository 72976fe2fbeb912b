//! One WebSocket connection: its queue from the hub, its frames from the client, and the
//! [`Cursor`] that makes delivery exactly-once, in rev order, with no gap.
//!
//! The socket loop only moves frames; what to send when is the cursor's call. Everything the
//! connection sends about a chat comes either from a live event at the cursor's next rev or
//! from `chat_changes` in Postgres (a backfill), which serves `resume`, gaps, nudges from the
//! poller and chats joined while connected alike. A removal is a change like any other: the
//! member's delivery of the chat stops exactly at its rev, whichever path brings it.

use std::{
    collections::{HashMap, HashSet},
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
    auth::TokenSubject,
    db::{changes, chats, messages, users},
    events::Event,
    model::Change,
    send::{Outgoing, Target, send_message},
};

use crate::{
    RelaySettings,
    cursor::{Cursor, Live},
    hub::{ConnId, Hub, Item, Signals, Slot, Stats},
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

/// How long a live change ahead of its chat's next rev waits for the ones before it before
/// they are read from Postgres. Publishes of concurrent sends can reach NATS out of commit
/// order; without the wait, every connected member of the chat would query `chat_changes`
/// for each such pair (1,000 queries for a group of 1,000), starving the pool.
const REORDER_WAIT: Duration = Duration::from_millis(30);
/// Live changes held per connection at most; beyond, a gap is backfilled at once.
const MAX_HELD: usize = 64;
/// Live events written before one flush, at most (bounded, so a connection's turn of the
/// loop stays short and its other signals are heard).
const MAX_BATCH: usize = 32;
/// Changes read from Postgres per query when backfilling.
const BACKFILL_PAGE: i64 = 200;
/// A client may send one typing frame per chat this often; extra ones are dropped.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);
/// First and longest wait before retrying a failed backfill or chat list read.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a new connection waits for the client's first frame (its `resume`, sent on
/// `ready`) before delivering live changes. Taking the resume first keeps the replay ahead of
/// every live change committed meanwhile, which would otherwise overtake it: a client that
/// keeps its highest rev would then resume past revs it never applied. One round trip covers
/// it; a client that does not resume starts live at most this late.
const RESUME_GRACE: Duration = Duration::from_millis(500);

/// What the reader task passes on.
enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// The socket failed (e.g. a frame over the size limit); the connection ends.
    Failed {
        reason: String,
        too_big: bool,
    },
}

/// The socket was closed or a write failed; the session ends.
struct Closed;

/// Database work that failed and is tried again after a backoff.
#[derive(Debug, Default)]
struct Retry {
    at: Option<Instant>,
    delay: Duration,
    reconcile: bool,
}

impl Retry {
    fn schedule(&mut self) {
        self.delay = (self.delay * 2).clamp(RETRY_FIRST, RETRY_MAX);
        self.at = Some(Instant::now() + self.delay);
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

struct Session {
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    user_id: i64,
    conn: ConnId,
    sink: SplitSink<WebSocket, Message>,
    cursor: Cursor,
    typing_sent: HashMap<i64, Instant>,
    retry: Retry,
    /// While true, [`Session::write`] only buffers; the batch ends with one flush.
    batching: bool,
    /// Live changes that came ahead of their chat's next rev, held for [`REORDER_WAIT`] in
    /// case the missing ones are only late (see [`Session::on_live`]).
    held: Vec<Item>,
    /// When the held changes stop waiting and their chats are backfilled.
    held_until: Option<Instant>,
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
    let mut session = Session {
        hub: hub.clone(),
        state,
        settings: settings.clone(),
        user_id,
        conn: registration.conn,
        sink,
        cursor: Cursor::default(),
        typing_sent: HashMap::new(),
        retry: Retry::default(),
        batching: false,
        held: Vec::new(),
        held_until: None,
    };
    let (mut items, signals) = (registration.items, registration.signals);

    let last_heard = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
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

    // Live changes wait in the connection's queue meanwhile (see RESUME_GRACE).
    if let Ok(first) = tokio::time::timeout(RESUME_GRACE, frames.recv()).await
        && Box::pin(session.on_incoming(first)).await.is_err()
    {
        reader.abort();
        return;
    }

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.reset();
    // One timer for the connection's life, not a new one registered on every turn of the loop.
    let expiry = tokio::time::sleep_until(token_expires);
    tokio::pin!(expiry);
    loop {
        let retry_at = session.retry.at;
        let held_until = session.held_until;
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
            () = sleep_until(retry_at), if retry_at.is_some() => Box::pin(session.on_retry()).await,
            () = sleep_until(held_until), if held_until.is_some() => Box::pin(session.on_held_timeout()).await,
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
            Ok(Message::Close(_)) => break,
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
        for p in &now {
            self.cursor.open(p.chat_id, p.rev, p.rev);
        }
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
        self.frame(&ServerFrame::Ready {
            user_id: self.user_id,
        })
        .await
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
        let mut done = self.on_live(&first).await;
        for _ in 1..MAX_BATCH {
            if done.is_err() {
                break;
            }
            match items.try_recv() {
                Ok(item) => done = self.on_live(&item).await,
                Err(_) => break,
            }
        }
        self.batching = false;
        done?;
        match tokio::time::timeout(self.settings.write_timeout, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                Stats::add(&self.hub.stats.slow_consumers, 1);
                Err(Closed)
            }
        }
    }

    /// Delivers the held changes that are next now (in rev order; one delivered can make the
    /// next one deliverable), and drops those already delivered.
    async fn release_held(&mut self) -> Result<(), Closed> {
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|item| item.event.change().map(|(_, rev)| rev));
        for item in held {
            // Still ahead: held again (on_live pushes it back); else delivered or dropped.
            Box::pin(self.on_live(&item)).await?;
        }
        if self.held.is_empty() {
            self.held_until = None;
        }
        Ok(())
    }

    /// The held changes waited long enough: what is missing before them was lost, not late.
    /// Their chats are read from Postgres, which brings the held ones too; if that read
    /// fails, the retry (or the poller) reads them later, so the held copies are dropped.
    async fn on_held_timeout(&mut self) -> Result<(), Closed> {
        self.held_until = None;
        let held = std::mem::take(&mut self.held);
        let mut chats: Vec<i64> = held
            .iter()
            .filter_map(|item| item.event.change().map(|(chat, _)| chat))
            .collect();
        chats.sort_unstable();
        chats.dedup();
        drop(held);
        for chat_id in chats {
            Stats::add(&self.hub.stats.gaps, 1);
            self.backfill(chat_id).await?;
        }
        Ok(())
    }

    /// A live event from the hub.
    async fn on_live(&mut self, item: &Item) -> Result<(), Closed> {
        let event = &*item.event;
        if let Some((chat_id, rev)) = event.change() {
            return match self.cursor.live(chat_id, rev) {
                Live::Deliver => {
                    if let Event::MemberLeft { user_id, .. } = event
                        && *user_id == self.user_id
                    {
                        return Box::pin(self.removed(chat_id, rev)).await;
                    }
                    if let Some(frame) = item.frame() {
                        self.write(Message::Text(frame.clone())).await?;
                        Stats::add(&self.hub.stats.delivered, 1);
                    }
                    self.cursor.delivered(chat_id, rev);
                    if self.held.is_empty() {
                        Ok(())
                    } else {
                        Box::pin(self.release_held()).await
                    }
                }
                Live::Gap if self.held.len() < MAX_HELD => {
                    self.held.push(item.clone());
                    self.held_until
                        .get_or_insert_with(|| Instant::now() + REORDER_WAIT);
                    Ok(())
                }
                Live::Gap => {
                    Stats::add(&self.hub.stats.gaps, 1);
                    Box::pin(self.backfill(chat_id)).await
                }
                Live::Duplicate | Live::NotHere => Ok(()),
            };
        }
        match event {
            Event::MessageRead {
                chat_id,
                user_id,
                last_read_seq,
                ..
            } => match self.cursor.position(*chat_id) {
                Some(rev) => {
                    self.frame(&ServerFrame::Read {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        last_read_seq: *last_read_seq,
                        rev,
                    })
                    .await
                }
                None => Ok(()),
            },
            Event::Typing { chat_id, user_id } if *user_id != self.user_id => {
                match self.cursor.position(*chat_id) {
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
            } => match self.cursor.position(*chat_id) {
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
            // The user joined or left a chat: which one the chat list says.
            Event::ChatAdded { .. } | Event::ChatRemoved { .. } => Box::pin(self.reconcile()).await,
            _ => Ok(()),
        }
    }

    /// Nudges from the poller, and requests to re-read the chat list.
    async fn on_signals(&mut self, signals: &Signals) -> Result<(), Closed> {
        let pending = signals.take();
        for (chat_id, rev) in pending.nudges {
            if self.cursor.known(chat_id, rev) {
                self.backfill(chat_id).await?;
            }
        }
        if pending.reconcile {
            self.reconcile().await?;
        }
        Ok(())
    }

    /// Tries again what failed: every chat still behind, and the chat list.
    async fn on_retry(&mut self) -> Result<(), Closed> {
        self.retry.at = None;
        if std::mem::take(&mut self.retry.reconcile) {
            self.reconcile().await?;
        }
        for chat_id in self.cursor.behind() {
            self.backfill(chat_id).await?;
        }
        Ok(())
    }

    /// Sends the chat's changes from the cursor on, from Postgres, until it has what Postgres
    /// has. A failed query leaves the chat behind and schedules a retry.
    async fn backfill(&mut self, chat_id: i64) -> Result<(), Closed> {
        while let Some(after) = self.cursor.backfill_from(chat_id) {
            let page = match changes::after(&self.state.db, chat_id, after, BACKFILL_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    Stats::add(&self.hub.stats.backfill_failures, 1);
                    tracing::warn!(error = %e, chat_id, "backfill failed; retrying with backoff");
                    self.retry.schedule();
                    return Ok(());
                }
            };
            self.retry.succeeded();
            for change in &page.changes {
                if self.is_own_removal(change) {
                    return self.removed(chat_id, change.rev).await;
                }
                if let Some(frame) = ServerFrame::of_change(change) {
                    self.frame(&frame).await?;
                    Stats::add(&self.hub.stats.backfilled, 1);
                }
                self.cursor.delivered(chat_id, change.rev);
            }
            if page.more {
                self.cursor.covered(chat_id, page.rev);
            } else {
                self.cursor.caught_up(chat_id, page.rev);
            }
        }
        Ok(())
    }

    fn is_own_removal(&self, change: &Change) -> bool {
        change.kind == "member"
            && change.change.as_deref() == Some("left")
            && change.user_id == Some(self.user_id)
    }

    /// The user left the chat at `rev`: say so, and deliver nothing more of it.
    async fn removed(&mut self, chat_id: i64, rev: i64) -> Result<(), Closed> {
        self.cursor.close(chat_id);
        self.hub.leave(self.conn, chat_id);
        self.frame(&ServerFrame::ChatRemoved { chat_id, rev }).await
    }

    /// Re-reads the user's chats: chats joined are routed and announced (their changes after
    /// the join follow), chats left are caught up to the removal, which ends them.
    async fn reconcile(&mut self) -> Result<(), Closed> {
        Stats::add(&self.hub.stats.reconciles, 1);
        let positions = match chats::positions_of_member(&self.state.db, self.user_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the user's chats; retrying");
                self.retry.reconcile = true;
                self.retry.schedule();
                return Ok(());
            }
        };
        let member_of: HashSet<i64> = positions.iter().map(|p| p.chat_id).collect();
        let joined: Vec<_> = positions
            .iter()
            .filter(|p| !self.cursor.contains(p.chat_id))
            .copied()
            .collect();
        let left: Vec<i64> = self
            .cursor
            .chats()
            .filter(|id| !member_of.contains(id))
            .collect();
        if !joined.is_empty() {
            let routes: Vec<(i64, i64)> = joined.iter().map(|p| (p.chat_id, p.rev)).collect();
            self.hub.join(self.conn, &routes).await;
            let ids: Vec<i64> = joined.iter().map(|p| p.chat_id).collect();
            let summaries = match chats::summaries_of(&self.state.db, self.user_id, &ids).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load joined chats; retrying");
                    self.hub_leave_all(&ids);
                    self.retry.reconcile = true;
                    self.retry.schedule();
                    return Ok(());
                }
            };
            let joined: HashMap<i64, chats::Position> =
                joined.iter().map(|p| (p.chat_id, *p)).collect();
            for chat in &summaries {
                let Some(p) = joined.get(&chat.id) else {
                    continue;
                };
                self.cursor.open(p.chat_id, p.joined_rev, p.rev);
                self.frame(&ServerFrame::Chat {
                    chat,
                    rev: p.joined_rev,
                })
                .await?;
                // What happened between the join and this relay's subscription.
                self.backfill(p.chat_id).await?;
            }
        }
        if !left.is_empty() {
            let revs = match chats::revs(&self.state.db, &left).await {
                Ok(revs) => revs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read left chats; retrying");
                    self.retry.reconcile = true;
                    self.retry.schedule();
                    return Ok(());
                }
            };
            for (chat_id, rev) in revs {
                // The removal is in the log after the cursor: the backfill stops there.
                self.cursor.known(chat_id, rev);
                self.backfill(chat_id).await?;
                if !self.cursor.contains(chat_id) {
                    continue;
                }
                if self.cursor.backfill_from(chat_id).is_none() {
                    // Caught up without meeting the removal (it predates the change log):
                    // end it here all the same.
                    self.removed(chat_id, rev).await?;
                } else {
                    // The backfill failed: look again when it is retried.
                    self.retry.reconcile = true;
                }
            }
        }
        Ok(())
    }

    fn hub_leave_all(&self, chat_ids: &[i64]) {
        for &chat_id in chat_ids {
            self.hub.leave(self.conn, chat_id);
        }
    }

    /// A client frame, or the end of the client's side (`None`).
    async fn on_incoming(&mut self, frame: Option<Incoming>) -> Result<(), Closed> {
        match frame {
            Some(Incoming::Text(text)) => self.on_text(&text).await,
            Some(Incoming::Binary) => self.error("frames must be JSON text", "bad_frame").await,
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
            } => {
                self.send(recipient_id, chat_id, &text, dedup_key, reply_to)
                    .await
            }
            ClientFrame::Typing { chat_id } => self.typing(chat_id).await,
        }
    }

    /// Replays every change after each listed rev, and reconciles membership: the user's chats
    /// that are not listed arrive as `chat` frames, listed ones they left as `chat_removed`.
    async fn resume_by_rev(&mut self, revs: HashMap<String, i64>) -> Result<(), Closed> {
        let positions = match chats::positions_of_member(&self.state.db, self.user_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the user's chats for resume");
                return self.error("resume failed; try again", "unavailable").await;
            }
        };
        let by_chat: HashMap<i64, chats::Position> =
            positions.iter().map(|p| (p.chat_id, *p)).collect();
        let mut listed = HashSet::with_capacity(revs.len());
        for (key, rev) in revs {
            let Ok(chat_id) = key.parse::<i64>() else {
                self.error(&format!("revs: {key:?} is not a chat id"), "bad_frame")
                    .await?;
                continue;
            };
            listed.insert(chat_id);
            match by_chat.get(&chat_id) {
                Some(p) => {
                    if !self.cursor.contains(chat_id) {
                        self.hub.join(self.conn, &[(chat_id, p.rev)]).await;
                    }
                    self.cursor.open(chat_id, rev.min(p.rev), p.rev);
                    self.backfill(chat_id).await?;
                }
                None => {
                    if self.cursor.close(chat_id) {
                        self.hub.leave(self.conn, chat_id);
                    }
                    let rev = rev.max(0);
                    self.frame(&ServerFrame::ChatRemoved { chat_id, rev })
                        .await?;
                }
            }
        }
        let unlisted: Vec<_> = positions
            .iter()
            .filter(|p| !listed.contains(&p.chat_id))
            .copied()
            .collect();
        if unlisted.is_empty() {
            return Ok(());
        }
        let new_routes: Vec<(i64, i64)> = unlisted
            .iter()
            .filter(|p| !self.cursor.contains(p.chat_id))
            .map(|p| (p.chat_id, p.rev))
            .collect();
        if !new_routes.is_empty() {
            self.hub.join(self.conn, &new_routes).await;
        }
        let ids: Vec<i64> = unlisted.iter().map(|p| p.chat_id).collect();
        match chats::summaries_of(&self.state.db, self.user_id, &ids).await {
            Ok(summaries) => {
                for chat in &summaries {
                    // The summary is the chat now: changes after it follow.
                    if !self.cursor.contains(chat.id) {
                        self.cursor.open(chat.id, chat.rev, chat.rev);
                    }
                    let rev = self.cursor.position(chat.id).unwrap_or(chat.rev);
                    self.frame(&ServerFrame::Chat { chat, rev }).await?;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load chats for resume");
                self.error("resume failed; try again", "unavailable").await
            }
        }
    }

    /// The message-only form: each listed chat from the message after this seq, in rev order.
    async fn resume_by_seq(&mut self, chats: HashMap<String, i64>) -> Result<(), Closed> {
        for (key, last_seq) in chats {
            let chat_id = match key.parse::<i64>() {
                Ok(id) if self.cursor.contains(id) => id,
                _ => {
                    self.error(&format!("chat {key}: not found"), "not_found")
                        .await?;
                    continue;
                }
            };
            let db = &self.state.db;
            let found = match messages::created_rev_of_seq(db, chat_id, last_seq).await {
                Ok(Some(rev)) => chats::revs(db, &[chat_id])
                    .await
                    .map(|r| r.first().map(|&(_, current)| (rev, current))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some((after, current))) => {
                    self.cursor.open(chat_id, after, current);
                    self.backfill(chat_id).await?;
                }
                // A seq beyond the chat's last: nothing to replay.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, chat_id, "resume failed");
                    self.error("resume failed; try again", "unavailable")
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        recipient_id: Option<i64>,
        chat_id: Option<i64>,
        text: &str,
        dedup_key: Option<String>,
        reply_to: Option<i64>,
    ) -> Result<(), Closed> {
        let key = dedup_key.as_deref();
        let out = Outgoing {
            text,
            dedup_key: key,
            reply_to,
        };
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
                let body = e.body();
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
        if !self.cursor.contains(chat_id) {
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
            let body = e.body();
            return self.error(&body.detail, &body.code).await;
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
