//! Events: the news of what was committed, published after the commit.
//!
//! Postgres is the record; an event only tells listeners (the ws-relay) that something changed.
//! So a failed publish is logged and never fails the request that committed: the relay's
//! seq-based backfill recovers anything an event did not carry.
//!
//! Two carriers: NATS JetStream for every deployment (Lambda, compose, several relays), and an
//! in-process broadcast for the single local `windi` binary when `NATS_URL` is unset.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::{ChatSummary, MessageOut};

/// How long a request waits for JetStream to take and acknowledge its events before it answers
/// anyway. On Lambda the process may freeze right after the answer, so publishes are awaited,
/// not spawned; this bounds what a NATS outage can add to a request.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// JetStream's duplicate window: a publish retried within it, with the same `Nats-Msg-Id`, is
/// dropped by the server.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How many events the in-process bus holds for a slow listener before it lags (and backfills).
pub const LOCAL_BUS_CAPACITY: usize = 4096;

/// Everything published. Serialised with a `type` tag, e.g. `{"type": "message.created", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "message.created")]
    MessageCreated {
        chat_id: i64,
        seq: i64,
        message: MessageOut,
    },
    /// On `<prefix>.chat.<chat_id>`: a member's read marker moved forward.
    #[serde(rename = "message.read")]
    MessageRead {
        chat_id: i64,
        user_id: i64,
        last_read_seq: i64,
    },
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "member.joined")]
    MemberJoined { chat_id: i64, user_id: i64 },
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "member.left")]
    MemberLeft { chat_id: i64, user_id: i64 },
    /// On `<prefix>.user.<user_id>`: you were added to a chat (or created it). Messages with a
    /// seq above `joined_seq` are the ones a relay delivers to the new member live.
    #[serde(rename = "chat.added")]
    ChatAdded {
        user_id: i64,
        joined_seq: i64,
        chat: ChatSummary,
    },
    /// On `<prefix>.user.<user_id>`: you left or were removed from a chat.
    #[serde(rename = "chat.removed")]
    ChatRemoved { user_id: i64, chat_id: i64 },
    /// On `<prefix>.typing.<chat_id>`, outside the stream: ephemeral, never stored.
    #[serde(rename = "typing")]
    Typing { chat_id: i64, user_id: i64 },
}

/// Where an event goes: a chat's subject or a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Chat(i64),
    User(i64),
    /// Ephemeral chat events (typing): core NATS only, not captured by the stream.
    Typing(i64),
}

impl Topic {
    pub fn subject(self, prefix: &str) -> String {
        match self {
            Self::Chat(id) => format!("{prefix}.chat.{id}"),
            Self::User(id) => format!("{prefix}.user.{id}"),
            Self::Typing(id) => format!("{prefix}.typing.{id}"),
        }
    }
}

impl Event {
    pub fn topic(&self) -> Topic {
        match self {
            Self::MessageCreated { chat_id, .. }
            | Self::MessageRead { chat_id, .. }
            | Self::MemberJoined { chat_id, .. }
            | Self::MemberLeft { chat_id, .. } => Topic::Chat(*chat_id),
            Self::ChatAdded { user_id, .. } | Self::ChatRemoved { user_id, .. } => {
                Topic::User(*user_id)
            }
            Self::Typing { chat_id, .. } => Topic::Typing(*chat_id),
        }
    }

    /// The `Nats-Msg-Id`: the same fact always gets the same id, so a retried publish of it is
    /// dropped by JetStream. For a message this is its id in Postgres.
    pub fn msg_id(&self) -> String {
        match self {
            Self::MessageCreated { message, .. } => format!("msg.{}", message.id),
            Self::MessageRead {
                chat_id,
                user_id,
                last_read_seq,
            } => format!("read.{chat_id}.{user_id}.{last_read_seq}"),
            Self::MemberJoined { chat_id, user_id } => format!("joined.{chat_id}.{user_id}"),
            Self::MemberLeft { chat_id, user_id } => format!("left.{chat_id}.{user_id}"),
            Self::ChatAdded { user_id, chat, .. } => format!("added.{}.{user_id}", chat.id),
            Self::ChatRemoved { user_id, chat_id } => format!("removed.{chat_id}.{user_id}"),
            Self::Typing { chat_id, user_id } => format!("typing.{chat_id}.{user_id}"),
        }
    }
}

/// Publishes events after commit, to NATS or to the in-process bus.
#[derive(Debug, Clone)]
pub enum Publisher {
    Nats(Box<NatsPublisher>),
    Local(LocalBus),
}

#[derive(Debug, Clone)]
pub struct NatsPublisher {
    pub client: async_nats::Client,
    js: jetstream::Context,
    prefix: Arc<str>,
}

/// The in-process carrier: a bounded broadcast channel. A listener that falls more than
/// [`LOCAL_BUS_CAPACITY`] behind sees `Lagged` and must backfill from Postgres. It carries the
/// events themselves: its only listener (the relay in the same process) routes by
/// [`Event::topic`], so there are no subjects to build.
#[derive(Debug, Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for LocalBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(LOCAL_BUS_CAPACITY);
        Self { tx }
    }
}

impl LocalBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    fn send(&self, event: Event) {
        // An error only means nobody listens right now, which is fine.
        let _ = self.tx.send(Arc::new(event));
    }
}

/// The JetStream stream that captures `<prefix>.chat.*` and `<prefix>.user.*`: `WINDI` for the
/// default prefix.
pub fn stream_name(prefix: &str) -> String {
    prefix.to_ascii_uppercase().replace('-', "_")
}

/// Connects to NATS and makes sure the stream exists (idempotent; safe from many processes).
pub async fn connect_nats(url: &str, prefix: &str, name: &str) -> Result<NatsPublisher, String> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream_name(prefix),
        // Chat and user events only: `<prefix>.typing.*` stays outside, never stored.
        subjects: vec![format!("{prefix}.chat.*"), format!("{prefix}.user.*")],
        duplicate_window: DUPLICATE_WINDOW,
        // The stream is a short-lived log of news, not the record: Postgres is.
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(|e| {
        format!(
            "cannot create JetStream stream {}: {e}",
            stream_name(prefix)
        )
    })?;
    Ok(NatsPublisher {
        client,
        js,
        prefix: prefix.into(),
    })
}

impl From<NatsPublisher> for Publisher {
    fn from(nats: NatsPublisher) -> Self {
        Self::Nats(Box::new(nats))
    }
}

impl Publisher {
    /// Publishes every event; failures are logged, never returned (see the module docs).
    pub async fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        match self {
            Self::Local(bus) => events.into_iter().for_each(|event| bus.send(event)),
            Self::Nats(nats) => {
                let count = events.len();
                if tokio::time::timeout(PUBLISH_TIMEOUT, nats.publish(events))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        count,
                        "publishing timed out; the relay's backfill covers it"
                    );
                }
            }
        }
    }

    /// Publishes an ephemeral event (typing): fire and forget, not stored, not acknowledged.
    pub async fn publish_ephemeral(&self, event: Event) {
        match self {
            Self::Local(bus) => bus.send(event),
            Self::Nats(nats) => {
                let subject = event.topic().subject(&nats.prefix);
                match serde_json::to_vec(&event) {
                    Ok(payload) => {
                        if let Err(e) = nats.client.publish(subject, payload.into()).await {
                            tracing::debug!(error = %e, "ephemeral publish failed");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "event not serialisable"),
                }
            }
        }
    }

    /// Whether the carrier can take events now (for `/ready`).
    pub fn is_connected(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Nats(nats) => {
                nats.client.connection_state() == async_nats::connection::State::Connected
            }
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::Local(_) => "in-process",
            Self::Nats(_) => "nats",
        }
    }
}

impl NatsPublisher {
    /// The subject prefix events are published under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn publish(&self, events: Vec<Event>) {
        // Send all, then await all acks: one round trip for the batch, not one per event.
        let mut acks = Vec::with_capacity(events.len());
        for event in &events {
            let subject = event.topic().subject(&self.prefix);
            let payload = match serde_json::to_vec(event) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "event not serialisable");
                    continue;
                }
            };
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(event.msg_id());
            match self.js.send_publish(subject, publish).await {
                Ok(ack) => acks.push((event.msg_id(), ack)),
                Err(e) => tracing::warn!(msg_id = %event.msg_id(), error = %e, "publish failed"),
            }
        }
        for (msg_id, ack) in acks {
            if let Err(e) = ack.await {
                tracing::warn!(%msg_id, error = %e, "publish not acknowledged");
            }
        }
    }
}
