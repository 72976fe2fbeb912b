//! One WebSocket connection: its queue from the hub, its frames from the client, and the
//! per-chat position that makes delivery exactly-once and in order.
//!
//! For every chat the connection is in, `positions` holds the next seq it must deliver. A live
//! message with that seq is sent; one below it is a duplicate and dropped; one above it means
//! something was missed, so the gap is filled from Postgres first. The same routine serves
//! `resume`, nudges from the poller, and chats joined while connected.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite;
use windi_shared::{
    AppState,
    db::{chats, messages},
    events::Event,
    model::MessageOut,
    send::{Target, send_message},
};

use crate::{
    RelaySettings,
    hub::{ConnId, Hub, Item, Stats},
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
}

/// Messages read from Postgres per query when backfilling.
const BACKFILL_PAGE: i64 = 200;
/// A client may send one typing frame per chat this often; extra ones are dropped.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);

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

struct Session {
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    user_id: i64,
    sink: SplitSink<WebSocket, Message>,
    /// Next seq to deliver, per chat the user is in.
    positions: HashMap<i64, i64>,
    typing_sent: HashMap<i64, Instant>,
}

/// Removes the connection from the hub however the session ends.
struct Registered {
    hub: Arc<Hub>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let (hub, conn) = (self.hub.clone(), self.conn);
        tokio::spawn(async move { hub.unregister(conn).await });
    }
}

/// Runs a connection to its end.
pub async fn run(
    socket: WebSocket,
    hub: Arc<Hub>,
    state: AppState,
    settings: Arc<RelaySettings>,
    user_id: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let (sink, stream) = socket.split();
    let mut session = Session {
        hub: hub.clone(),
        state,
        settings: settings.clone(),
        user_id,
        sink,
        positions: HashMap::new(),
        typing_sent: HashMap::new(),
    };
    let registration = match hub.register(user_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot register a connection");
            let _ = session
                .close(close_code::INTERNAL, "relay unavailable")
                .await;
            return;
        }
    };
    let _registered = Registered {
        hub: hub.clone(),
        conn: registration.conn,
    };
    let (mut items, kill) = (registration.items, registration.kill);

    let last_heard = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (frames_tx, mut frames) = mpsc::channel(16);
    let reader = tokio::spawn(read_frames(stream, frames_tx, last_heard.clone(), started));

    if session.start(registration.conn).await.is_err() {
        reader.abort();
        return;
    }

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.reset();
    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = session.close(close_code::RESTART, "relay restarting; reconnect and resume").await;
                break;
            }
            () = kill.notified() => {
                Stats::add(&hub.stats.slow_consumers, 1);
                session.slow_consumer().await;
                break;
            }
            frame = frames.recv() => match frame {
                Some(Incoming::Text(text)) => session.on_text(&text).await,
                Some(Incoming::Binary) => session.error("frames must be JSON text", "bad_frame").await,
                Some(Incoming::Failed { reason, too_big }) => {
                    let code = if too_big { close_code::TOO_BIG } else { close_code::PROTOCOL_ERROR };
                    let _ = session.close(code, &reason).await;
                    break;
                }
                None => break,
            },
            item = items.recv() => match item {
                Some(item) => session.on_item(item).await,
                None => break,
            },
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

/// Reads client frames until the socket ends, noting when the client was last heard from.
async fn read_frames(
    mut stream: futures::stream::SplitStream<WebSocket>,
    frames: mpsc::Sender<Incoming>,
    last_heard: Arc<AtomicU64>,
    started: Instant,
) {
    while let Some(received) = stream.next().await {
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_heard.store(elapsed, Ordering::Relaxed);
        let incoming = match received {
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
    /// Subscribes to the user's chats, then takes each chat's current seq as the starting
    /// position: anything committed later is published after the subscription exists.
    async fn start(&mut self, conn: ConnId) -> Result<(), Closed> {
        let chats = match chats::positions_of_member(&self.state.db, self.user_id, None).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the user's chats");
                return self.close(close_code::INTERNAL, "relay unavailable").await;
            }
        };
        let ids: Vec<i64> = chats.iter().map(|&(id, _)| id).collect();
        if let Err(e) = self.hub.join(conn, &ids).await {
            tracing::error!(error = %e, "cannot subscribe");
            return self.close(close_code::INTERNAL, "relay unavailable").await;
        }
        let now = chats::positions_of_member(&self.state.db, self.user_id, Some(&ids))
            .await
            .unwrap_or(chats);
        self.positions = now.into_iter().map(|(id, last)| (id, last + 1)).collect();
        self.frame(&ServerFrame::Ready {
            user_id: self.user_id,
        })
        .await
    }

    async fn on_item(&mut self, item: Item) -> Result<(), Closed> {
        match item {
            Item::Event(event) => self.on_event(&event).await,
            Item::Joined { chat, next_seq } => {
                let chat_id = chat.id;
                if self.positions.contains_key(&chat_id) {
                    return Ok(());
                }
                self.positions.insert(chat_id, next_seq);
                self.frame(&ServerFrame::Chat { chat: &chat }).await?;
                // Messages published before this relay subscribed to the chat.
                self.catch_up(chat_id, None).await
            }
            Item::Left { chat_id } => {
                if self.positions.remove(&chat_id).is_some() {
                    self.frame(&ServerFrame::ChatRemoved { chat_id }).await?;
                }
                Ok(())
            }
            Item::Nudge { chat_id, last_seq } => self.catch_up(chat_id, Some(last_seq)).await,
        }
    }

    async fn on_event(&mut self, event: &Event) -> Result<(), Closed> {
        match event {
            Event::MessageCreated {
                chat_id,
                seq,
                message,
            } => self.on_message(*chat_id, *seq, message).await,
            Event::MessageRead {
                chat_id,
                user_id,
                last_read_seq,
            } if self.positions.contains_key(chat_id) => {
                self.frame(&ServerFrame::Read {
                    chat_id: *chat_id,
                    user_id: *user_id,
                    last_read_seq: *last_read_seq,
                })
                .await
            }
            Event::Typing { chat_id, user_id }
                if *user_id != self.user_id && self.positions.contains_key(chat_id) =>
            {
                self.frame(&ServerFrame::Typing {
                    chat_id: *chat_id,
                    user_id: *user_id,
                })
                .await
            }
            Event::MemberJoined { chat_id, user_id } | Event::MemberLeft { chat_id, user_id }
                if *user_id != self.user_id && self.positions.contains_key(chat_id) =>
            {
                let change = if matches!(event, Event::MemberJoined { .. }) {
                    "joined"
                } else {
                    "left"
                };
                self.frame(&ServerFrame::Member {
                    chat_id: *chat_id,
                    user_id: *user_id,
                    change,
                })
                .await
            }
            _ => Ok(()),
        }
    }

    /// A live message: deliver it if it is the next one, fill the gap first if it is ahead,
    /// drop it if it was already delivered.
    async fn on_message(
        &mut self,
        chat_id: i64,
        seq: i64,
        message: &MessageOut,
    ) -> Result<(), Closed> {
        let Some(&next) = self.positions.get(&chat_id) else {
            return Ok(());
        };
        if seq < next {
            return Ok(());
        }
        if seq > next {
            Stats::add(&self.hub.stats.gaps, 1);
            self.backfill(chat_id, seq - 1).await?;
        }
        // If the backfill could not reach it (a database error), the poller's nudge will.
        if self.positions.get(&chat_id) == Some(&seq) {
            self.deliver(message).await?;
        }
        Ok(())
    }

    /// Brings a chat up to `last_seq` (or to what Postgres has now) from Postgres.
    async fn catch_up(&mut self, chat_id: i64, last_seq: Option<i64>) -> Result<(), Closed> {
        let Some(&next) = self.positions.get(&chat_id) else {
            return Ok(());
        };
        let last = match last_seq {
            Some(last) => last,
            None => match chats::last_seqs(&self.state.db, &[chat_id]).await {
                Ok(rows) => rows.first().map_or(0, |&(_, last)| last),
                Err(e) => {
                    tracing::warn!(error = %e, chat_id, "cannot read last_seq; the poller retries");
                    return Ok(());
                }
            },
        };
        if next <= last {
            self.backfill(chat_id, last).await?;
        }
        Ok(())
    }

    /// Sends the chat's messages from its position up to `to` (inclusive), in order.
    async fn backfill(&mut self, chat_id: i64, to: i64) -> Result<(), Closed> {
        loop {
            let Some(&next) = self.positions.get(&chat_id) else {
                return Ok(());
            };
            if next > to {
                return Ok(());
            }
            let range = messages::SeqRange {
                after: next - 1,
                before: to + 1,
                limit: BACKFILL_PAGE,
                offset: 0,
                from_newest: false,
            };
            let page = match messages::page(&self.state.db, chat_id, range).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, chat_id, "backfill failed; the poller retries");
                    return Ok(());
                }
            };
            if page.is_empty() {
                return Ok(());
            }
            Stats::add(&self.hub.stats.backfilled, page.len() as u64);
            for message in &page {
                self.deliver(message).await?;
            }
        }
    }

    async fn deliver(&mut self, message: &MessageOut) -> Result<(), Closed> {
        self.frame(&ServerFrame::Message {
            chat_id: message.chat_id,
            seq: message.seq,
            message,
        })
        .await?;
        self.positions.insert(message.chat_id, message.seq + 1);
        Stats::add(&self.hub.stats.delivered, 1);
        Ok(())
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
            ClientFrame::Resume { chats } => self.resume(chats).await,
            ClientFrame::Send {
                chat_id,
                recipient_id,
                text,
                dedup_key,
            } => self.send(recipient_id, chat_id, &text, dedup_key).await,
            ClientFrame::Typing { chat_id } => self.typing(chat_id).await,
        }
    }

    /// Replays each listed chat from the client's seq. `resume` means "send me everything
    /// after this seq": sent first after connecting, it never repeats a message.
    async fn resume(&mut self, chats: HashMap<String, i64>) -> Result<(), Closed> {
        for (key, last_seq) in chats {
            let chat_id = match key.parse::<i64>() {
                Ok(id) if self.positions.contains_key(&id) => id,
                _ => {
                    self.error(&format!("chat {key}: not found"), "not_found")
                        .await?;
                    continue;
                }
            };
            self.positions.insert(chat_id, last_seq.max(0) + 1);
            self.catch_up(chat_id, None).await?;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        recipient_id: Option<i64>,
        chat_id: Option<i64>,
        text: &str,
        dedup_key: Option<String>,
    ) -> Result<(), Closed> {
        let key = dedup_key.as_deref();
        let sent = match Target::from_fields(recipient_id, chat_id) {
            Ok(target) => send_message(&self.state, self.user_id, target, text, key).await,
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
        if !self.positions.contains_key(&chat_id) {
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
            detail: "you are too far behind; reconnect and resume from your last seq",
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
        match tokio::time::timeout(self.settings.write_timeout, self.sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                Stats::add(&self.hub.stats.slow_consumers, 1);
                Err(Closed)
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Closed> {
        let frame = CloseFrame {
            code,
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.sink.send(Message::Close(Some(frame))),
        )
        .await;
        Err(Closed)
    }
}
