//! Events: the news of what was committed, published after the commit.
//!
//! Postgres is the record; an event only tells listeners (the ws-relay) that something changed.
//! So a failed publish is logged and never fails the request that committed: every change has
//! a rev, and the relay catches up from Postgres by rev whatever an event did not carry.
//!
//! One seam, [`EventBus`], with two carriers: NATS JetStream ([`NatsBus`]) for every
//! deployment (Lambda, compose, several relays), and an in-process bus ([`LocalBus`]) for the
//! single local `windi` binary when `NATS_URL` is unset. The relay subscribes through the same
//! trait, so it does not know which one it has.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::{FutureExt, StreamExt, future::BoxFuture, stream::BoxStream};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use crate::domain::model::MessageOut;

/// How long a publish waits for JetStream to take and acknowledge its events before it gives up
/// (and counts it). On Lambda the process may freeze right after the answer, so publishes are
/// awaited, not spawned, and this bounds what a NATS outage can add to a request; a long-running
/// process awaits the acks in the background ([`NatsBus::acknowledge_in_background`]).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long start-up waits for the JetStream stream before going on without it.
const STREAM_WAIT: Duration = Duration::from_secs(5);

/// JetStream's duplicate window: a publish retried within it, with the same `Nats-Msg-Id`, is
/// dropped by the server.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How many events one in-process subscription holds before the bus drops for it (as a full
/// NATS subscription buffer does; the subscriber recovers by rev from Postgres).
const LOCAL_BUS_CAPACITY: usize = 4096;

/// Everything published. Serialised with a `type` tag, e.g. `{"type": "message.created", ...}`.
/// Every change of a chat carries the chat's `rev` of that change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "message.created")]
    MessageCreated {
        chat_id: i64,
        rev: i64,
        seq: i64,
        message: MessageOut,
    },
    /// On `<prefix>.chat.<chat_id>`: an edit, a deletion, or a reaction added or removed
    /// (`change`), with the message as it is after it.
    #[serde(rename = "message.updated")]
    MessageUpdated {
        chat_id: i64,
        rev: i64,
        change: String,
        message: MessageOut,
    },
    /// On `<prefix>.chat.<chat_id>`: a member's read marker moved forward. Not a change of the
    /// chat (no rev of its own); `rev` is the chat's rev when it happened.
    #[serde(rename = "message.read")]
    MessageRead {
        chat_id: i64,
        user_id: i64,
        last_read_seq: i64,
        rev: i64,
        /// The reader does not share read receipts: only their own devices are told.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hidden: bool,
    },
    /// On `<prefix>.chat.<chat_id>`: messages up to `delivered_seq` reached at least one of
    /// `user_id`'s devices (recorded by a relay, in a batch). `senders` are those who sent the
    /// messages it newly covers, the only ones a relay tells (empty when not known: a relay's
    /// poller found the move without its event, and tells every member it serves).
    #[serde(rename = "message.delivered")]
    MessageDelivered {
        chat_id: i64,
        user_id: i64,
        delivered_seq: i64,
        rev: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        senders: Vec<i64>,
    },
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "member.joined")]
    MemberJoined {
        chat_id: i64,
        rev: i64,
        user_id: i64,
        /// The member's name (absent from events published before it was added).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// On `<prefix>.chat.<chat_id>`.
    #[serde(rename = "member.left")]
    MemberLeft {
        chat_id: i64,
        rev: i64,
        user_id: i64,
    },
    /// On `<prefix>.chat.<chat_id>`: the owner left and `user_id`, the longest-standing member,
    /// owns the group now (a change of its own, right after the leaving).
    #[serde(rename = "member.promoted")]
    MemberPromoted {
        chat_id: i64,
        rev: i64,
        user_id: i64,
    },
    /// On `<prefix>.user.<user_id>`: you were added to a chat (or created it) at `rev`;
    /// `member_rev` counts your joins and leaves. Small on purpose: a group of 1000 publishes
    /// 1000 of these, and each relay loads the chat for the users it serves.
    #[serde(rename = "chat.added")]
    ChatAdded {
        user_id: i64,
        chat_id: i64,
        rev: i64,
        member_rev: i64,
    },
    /// On `<prefix>.user.<user_id>`: you left or were removed from a chat at `rev`.
    #[serde(rename = "chat.removed")]
    ChatRemoved {
        user_id: i64,
        chat_id: i64,
        rev: i64,
        member_rev: i64,
    },
    /// On `<prefix>.typing.<chat_id>`, outside the stream: ephemeral, never stored.
    #[serde(rename = "typing")]
    Typing { chat_id: i64, user_id: i64 },
    /// On `<prefix>.typing.<chat_id>`, once per chat of the user: a member changed their name.
    /// Not a change of the chat (no rev): the name lives on the user, and every read of a chat
    /// (list, members) shows the current one, so a lost event costs only a stale label until
    /// the next read.
    #[serde(rename = "user.updated")]
    UserUpdated {
        chat_id: i64,
        user_id: i64,
        name: String,
    },
    /// On `<prefix>.user.<user_id>`: these sessions ended (logout, logout-all, a password
    /// change, a reused refresh token, account deletion); relays close their sockets. The
    /// relay's poller finds an ended session whose event was lost.
    #[serde(rename = "sessions.ended")]
    SessionsEnded { user_id: i64, session_ids: Vec<i64> },
    /// On `<prefix>.presence`, outside the stream: a user's presence changed (their first
    /// connection on any relay opened, their last closed, a relay holding them died). Every
    /// relay hears every change and tells its connections in `chat_ids` (the user's chats), so
    /// a change costs the user's contacts on each relay, never a group's members squared.
    /// Ephemeral: a lost one leaves a stale dot until the next change or `/users/presence`.
    #[serde(rename = "presence")]
    Presence {
        presence: crate::domain::presence::Presence,
        chat_ids: Vec<i64>,
    },
}

/// Where an event goes: a chat's subject or a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Chat(i64),
    User(i64),
    /// Ephemeral chat events (typing): core NATS only, not captured by the stream.
    Typing(i64),
    /// Every presence change, one subject for all (ephemeral, like typing).
    Presence,
}

impl Topic {
    pub fn subject(self, prefix: &str) -> String {
        match self {
            Self::Chat(id) => format!("{prefix}.chat.{id}"),
            Self::User(id) => format!("{prefix}.user.{id}"),
            Self::Typing(id) => format!("{prefix}.typing.{id}"),
            Self::Presence => format!("{prefix}.presence"),
        }
    }
}

impl Event {
    pub fn topic(&self) -> Topic {
        match self {
            Self::MessageCreated { chat_id, .. }
            | Self::MessageUpdated { chat_id, .. }
            | Self::MessageRead { chat_id, .. }
            | Self::MessageDelivered { chat_id, .. }
            | Self::MemberJoined { chat_id, .. }
            | Self::MemberLeft { chat_id, .. }
            | Self::MemberPromoted { chat_id, .. } => Topic::Chat(*chat_id),
            Self::ChatAdded { user_id, .. }
            | Self::ChatRemoved { user_id, .. }
            | Self::SessionsEnded { user_id, .. } => Topic::User(*user_id),
            Self::Typing { chat_id, .. } | Self::UserUpdated { chat_id, .. } => {
                Topic::Typing(*chat_id)
            }
            Self::Presence { .. } => Topic::Presence,
        }
    }

    /// The chat change this event announces, as `(chat_id, rev)`; `None` for news that is not
    /// a change of a chat (markers, typing, a user's own subject).
    pub fn change(&self) -> Option<(i64, i64)> {
        match self {
            Self::MessageCreated { chat_id, rev, .. }
            | Self::MessageUpdated { chat_id, rev, .. }
            | Self::MemberJoined { chat_id, rev, .. }
            | Self::MemberLeft { chat_id, rev, .. }
            | Self::MemberPromoted { chat_id, rev, .. } => Some((*chat_id, *rev)),
            _ => None,
        }
    }

    /// The `Nats-Msg-Id`: the same fact always gets the same id, so a retried publish of it is
    /// dropped by JetStream. A message's creation is its id in Postgres; other changes are the
    /// chat's rev.
    fn msg_id(&self) -> String {
        match self {
            Self::MessageCreated { message, .. } => format!("msg.{}", message.id),
            Self::MessageUpdated { chat_id, rev, .. }
            | Self::MemberJoined { chat_id, rev, .. }
            | Self::MemberLeft { chat_id, rev, .. }
            | Self::MemberPromoted { chat_id, rev, .. } => format!("rev.{chat_id}.{rev}"),
            Self::MessageRead {
                chat_id,
                user_id,
                last_read_seq,
                ..
            } => format!("read.{chat_id}.{user_id}.{last_read_seq}"),
            Self::MessageDelivered {
                chat_id,
                user_id,
                delivered_seq,
                ..
            } => format!("delivered.{chat_id}.{user_id}.{delivered_seq}"),
            Self::ChatAdded {
                user_id,
                chat_id,
                rev,
                ..
            } => format!("added.{chat_id}.{user_id}.{rev}"),
            Self::ChatRemoved {
                user_id,
                chat_id,
                rev,
                ..
            } => format!("removed.{chat_id}.{user_id}.{rev}"),
            Self::Typing { chat_id, user_id } => format!("typing.{chat_id}.{user_id}"),
            Self::UserUpdated {
                chat_id, user_id, ..
            } => format!("user.{chat_id}.{user_id}"),
            // Session ids are never reused, so the first and the count name the fact.
            Self::SessionsEnded {
                user_id,
                session_ids,
            } => format!(
                "ended.{user_id}.{}.{}",
                session_ids.first().copied().unwrap_or(0),
                session_ids.len()
            ),
            Self::Presence { presence, .. } => format!(
                "presence.{}.{:?}.{}",
                presence.user_id,
                presence.status,
                presence.last_seen.map_or(0, |t| t.timestamp_millis())
            ),
        }
    }
}

/// The events of one topic, as they arrive. Dropping it unsubscribes.
pub type EventStream = BoxStream<'static, Arc<Event>>;

/// Publishes events after commit and delivers them to subscribers: the one seam between windi's
/// writers and its relays. Publishing never fails the caller (see the module docs).
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Publishes every event, in order; failures are logged, never returned.
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, ()>;
    /// Publishes an ephemeral event (typing): fire and forget, not stored, not acknowledged.
    fn publish_ephemeral(&self, event: Event) -> BoxFuture<'_, ()>;
    /// Subscribes to a topic. The subscription is registered with the carrier once the next
    /// [`EventBus::flush`] returns, so several can be made and flushed together.
    fn subscribe(&self, topic: Topic) -> BoxFuture<'_, Result<EventStream, String>>;
    /// Waits until the carrier has every subscription made so far.
    fn flush(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Whether the carrier can take events now (for `/ready`).
    fn is_connected(&self) -> bool;
    /// Events this process's subscriptions lost because they were full.
    fn dropped(&self) -> u64;
    /// `in-process` or `nats`.
    fn describe(&self) -> &'static str;
}

/// The bus a process shares between its handlers and its relay.
pub type Bus = Arc<dyn EventBus>;

/// The in-process carrier: per-topic subscriptions with bounded queues. A subscriber that falls
/// [`LOCAL_BUS_CAPACITY`] events behind loses the next ones (counted in [`EventBus::dropped`])
/// and recovers them by rev from Postgres, exactly as with a full NATS subscription.
#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    inner: Arc<LocalInner>,
}

/// Each topic's subscribers, by subscription id.
type Subscribers = HashMap<Topic, Vec<(u64, mpsc::Sender<Arc<Event>>)>>;

#[derive(Debug, Default)]
struct LocalInner {
    topics: Mutex<Subscribers>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl LocalInner {
    fn topics(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // The map stays consistent whatever a panicking holder was doing: take it over.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, event: Event) {
        let event = Arc::new(event);
        let topics = self.topics();
        for (_, tx) in topics.get(&event.topic()).into_iter().flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event.clone()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Removes a local subscription when its stream is dropped.
struct LocalGuard {
    inner: Arc<LocalInner>,
    topic: Topic,
    id: u64,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        let mut topics = self.inner.topics();
        if let Some(subs) = topics.get_mut(&self.topic) {
            subs.retain(|(id, _)| *id != self.id);
            if subs.is_empty() {
                topics.remove(&self.topic);
            }
        }
    }
}

impl EventBus for LocalBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, ()> {
        events.into_iter().for_each(|e| self.inner.send(e));
        futures::future::ready(()).boxed()
    }

    fn publish_ephemeral(&self, event: Event) -> BoxFuture<'_, ()> {
        self.inner.send(event);
        futures::future::ready(()).boxed()
    }

    fn subscribe(&self, topic: Topic) -> BoxFuture<'_, Result<EventStream, String>> {
        let (tx, rx) = mpsc::channel(LOCAL_BUS_CAPACITY);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.topics().entry(topic).or_default().push((id, tx));
        let guard = LocalGuard {
            inner: self.inner.clone(),
            topic,
            id,
        };
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|event| (event, (rx, guard)))
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), String>> {
        // A local subscription is live as soon as `subscribe` returns.
        futures::future::ready(Ok(())).boxed()
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn describe(&self) -> &'static str {
        "in-process"
    }
}

/// NATS: events to JetStream (acknowledged, deduplicated by `Nats-Msg-Id`), subscriptions on
/// core NATS subjects.
#[derive(Debug, Clone)]
pub struct NatsBus {
    pub client: async_nats::Client,
    js: jetstream::Context,
    prefix: Arc<str>,
    dropped: Arc<AtomicU64>,
    acks: Acks,
}

/// The JetStream stream that captures `<prefix>.chat.*` and `<prefix>.user.*`: `WINDI` for the
/// default prefix.
pub fn stream_name(prefix: &str) -> String {
    prefix.to_ascii_uppercase().replace('-', "_")
}

/// Connects to NATS for publishing and makes sure the stream exists (idempotent; safe from
/// many processes).
pub async fn connect_nats(url: &str, prefix: &str, name: &str) -> Result<NatsBus, String> {
    let options = async_nats::ConnectOptions::new().name(name);
    NatsBus::connect(url, prefix, options, Arc::default()).await
}

impl NatsBus {
    /// Connects with these options. `dropped` is the counter the options' event callback
    /// increments on a slow-consumer event, if the caller installed one.
    pub async fn connect(
        url: &str,
        prefix: &str,
        options: async_nats::ConnectOptions,
        dropped: Arc<AtomicU64>,
    ) -> Result<Self, String> {
        // A NATS that is not up yet (compose starting everything at once, a broker restart)
        // does not stop the process: the client keeps connecting in the background, events
        // published meanwhile are lost (the relay catches up by rev), and `/ready` says so.
        let client = options
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let js = jetstream::new(client.clone());
        let config = jetstream::stream::Config {
            name: stream_name(prefix),
            // Chat and user events only: `<prefix>.typing.*` stays outside, never stored.
            subjects: vec![format!("{prefix}.chat.*"), format!("{prefix}.user.*")],
            duplicate_window: DUPLICATE_WINDOW,
            // The stream is a short-lived log of news, not the record: Postgres is.
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        match tokio::time::timeout(STREAM_WAIT, js.get_or_create_stream(config.clone())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if client.connection_state() == async_nats::connection::State::Connected => {
                // Connected, and the server refused: a real misconfiguration.
                return Err(format!(
                    "cannot create JetStream stream {}: {e}",
                    stream_name(prefix)
                ));
            }
            _ => {
                tracing::warn!(
                    %url,
                    "NATS is not reachable yet; connecting and creating the stream in the background"
                );
                let js = js.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if js.get_or_create_stream(config.clone()).await.is_ok() {
                            tracing::info!("NATS reached; the JetStream stream is in place");
                            break;
                        }
                    }
                });
            }
        }
        Ok(Self {
            client,
            js,
            prefix: prefix.into(),
            dropped,
            acks: Acks::Inline,
        })
    }

    /// The subject prefix events are published under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Publishes in the background from now on (see [`Acks::Background`]): for long-running
    /// processes, never for Lambda. Spawns the publisher task, so call it inside the runtime.
    pub fn acknowledge_in_background(mut self) -> Self {
        let (queue, mut batches) = mpsc::channel::<Vec<Event>>(PUBLISH_QUEUE);
        let publisher = self.clone();
        let permits = Arc::new(Semaphore::new(MAX_BACKGROUND_ACKS));
        tokio::spawn(async move {
            // One task, so batches reach NATS in the order their changes were answered.
            while let Some(events) = batches.recv().await {
                publisher.publish_all(events, Some(&permits)).await;
            }
        });
        self.acks = Acks::Background(queue);
        self
    }

    /// Hands every event to the connection, in order, and returns their pending acks: the
    /// sends are pipelined, so a batch costs one round trip, not one per event.
    async fn send_all(&self, events: Vec<Event>) -> Vec<(String, PublishAckFuture)> {
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
            let msg_id = event.msg_id();
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(msg_id.as_str());
            match self.js.send_publish(subject, publish).await {
                Ok(ack) => acks.push((msg_id, ack)),
                Err(e) => {
                    publish_failed("send");
                    tracing::warn!(%msg_id, error = %e, "publish failed");
                }
            }
        }
        acks
    }

    /// Sends the events and awaits their acks: inline, or with `permits`, in a task of their
    /// own while a permit is free.
    async fn publish_all(&self, events: Vec<Event>, permits: Option<&Arc<Semaphore>>) {
        let count = events.len();
        let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
        let Ok(acks) = tokio::time::timeout_at(deadline, self.send_all(events)).await else {
            publish_timed_out(count);
            return;
        };
        if acks.is_empty() {
            return;
        }
        if let Some(permits) = permits {
            // With no permit free (NATS is slow to acknowledge), the publisher waits: its queue
            // fills, and what does not fit is dropped and counted (the relays catch up by rev).
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    await_acks(acks, deadline).await;
                    drop(permit);
                });
                return;
            }
        }
        await_acks(acks, deadline).await;
    }
}

/// Where a publish runs.
#[derive(Debug, Clone)]
enum Acks {
    /// Before the request answers: on Lambda the process may freeze right after the answer,
    /// so an event not acknowledged by then may never be sent. Bounded by the request's
    /// remaining time ([`crate::service::write::announce`]).
    Inline,
    /// On one publisher task fed by a bounded queue of [`PUBLISH_QUEUE`] batches: a
    /// long-running process keeps running after the answer, so a request never waits on NATS
    /// (a paused NATS cannot delay an answer), and batches keep their order. A batch that
    /// finds the queue full is dropped and counted (`stage="backlog"`); the relays recover it
    /// by rev from Postgres. Acks are awaited on tasks of their own, at most
    /// [`MAX_BACKGROUND_ACKS`] batches at once.
    Background(mpsc::Sender<Vec<Event>>),
}

/// Batches waiting for the background publisher. At a few thousand sends a second and a
/// healthy NATS the queue is near empty; 4,096 absorbs a NATS pause of a second or two.
const PUBLISH_QUEUE: usize = 4096;

/// Batches whose acks a long-running process awaits in the background at once; beyond it, the
/// publisher waits for its own. At a few thousand sends a second and sub-millisecond acks, a
/// few dozen are pending; 1,024 absorbs a NATS pause of a fraction of a second.
const MAX_BACKGROUND_ACKS: usize = 1024;

/// Awaits each ack until `deadline`, counting what was not acknowledged.
async fn await_acks(acks: Vec<(String, PublishAckFuture)>, deadline: tokio::time::Instant) {
    let count = acks.len();
    let all = async {
        for (msg_id, ack) in acks {
            match ack.await {
                Ok(_) => metrics::counter!("windi_events_published_total").increment(1),
                Err(e) => {
                    publish_failed("ack");
                    tracing::warn!(%msg_id, error = %e, "publish not acknowledged");
                }
            }
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        publish_timed_out(count);
    }
}

fn publish_timed_out(count: usize) {
    publish_failed("timeout");
    tracing::warn!(count, "publishing timed out; the relay catches up by rev");
}

/// `windi_event_publish_failures_total{stage}`: a publish that was not sent, not acknowledged,
/// or not finished in time. Each is recovered by the relay's backfill, but a rising rate means
/// NATS is unwell.
fn publish_failed(stage: &'static str) {
    metrics::counter!("windi_event_publish_failures_total", "stage" => stage).increment(1);
}

impl EventBus for NatsBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, ()> {
        async move {
            if events.is_empty() {
                return;
            }
            match &self.acks {
                Acks::Inline => self.publish_all(events, None).await,
                Acks::Background(queue) => {
                    if let Err(e) = queue.try_send(events) {
                        publish_failed("backlog");
                        tracing::warn!(
                            error = %e,
                            "publish queue full; the relays catch up by rev"
                        );
                    }
                }
            }
        }
        .boxed()
    }

    fn publish_ephemeral(&self, event: Event) -> BoxFuture<'_, ()> {
        async move {
            let subject = event.topic().subject(&self.prefix);
            match serde_json::to_vec(&event) {
                Ok(payload) => {
                    if let Err(e) = self.client.publish(subject, payload.into()).await {
                        tracing::debug!(error = %e, "ephemeral publish failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "event not serialisable"),
            }
        }
        .boxed()
    }

    fn subscribe(&self, topic: Topic) -> BoxFuture<'_, Result<EventStream, String>> {
        async move {
            let subject = topic.subject(&self.prefix);
            let sub = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("subscribe {subject}: {e}"))?;
            let stream = sub.filter_map(|msg| async move {
                match serde_json::from_slice::<Event>(&msg.payload) {
                    Ok(event) => Some(Arc::new(event)),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable event skipped");
                        None
                    }
                }
            });
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), String>> {
        async move { self.client.flush().await.map_err(|e| e.to_string()) }.boxed()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn describe(&self) -> &'static str {
        "nats"
    }
}
