//! The hub: which connection wants which chat, the broker subscriptions that serve them, and
//! the fan-out of events into each connection's bounded queue.
//!
//! Subscriptions follow connections: a relay subscribes to `<prefix>.chat.<id>` (and the
//! ephemeral `<prefix>.typing.<id>`) only while a connected user is in that chat, and to
//! `<prefix>.user.<id>` while that user is connected. Any number of relays can therefore run
//! side by side with no sticky sessions; NATS carries each event to the relays that need it.
//!
//! Nothing here is trusted to be complete. A broker may drop an event (a full subscription
//! buffer, a restart, a handler that died between commit and publish), so a poller compares
//! each subscribed chat's `last_seq` in Postgres with the highest seq seen and nudges the
//! connections of any chat that is behind; they backfill from Postgres. That bounds how late a
//! committed message can be: [`crate::RelaySettings::poll_interval`] plus one query.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use serde::Serialize;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, broadcast, mpsc},
    task::AbortHandle,
};
use windi_shared::{
    events::{Event, Topic},
    model::ChatSummary,
};

/// How long a join waits for NATS to confirm its subscriptions.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Identifies one WebSocket connection (one device) within this relay.
pub type ConnId = u64;

/// What the hub puts in a connection's queue.
#[derive(Debug)]
pub enum Item {
    /// An event of a chat the connection is in (or of its user).
    Event(Arc<Event>),
    /// The user joined a chat while connected; deliver messages from `next_seq` on.
    Joined {
        chat: Box<ChatSummary>,
        next_seq: i64,
    },
    /// The user left or was removed from a chat: stop delivering it at once.
    Left { chat_id: i64 },
    /// Postgres has messages up to `last_seq` in this chat: backfill if behind.
    Nudge { chat_id: i64, last_seq: i64 },
}

/// Counters for `/health` and the tests; all monotonic except `connections`.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections closed because their queue filled or a write timed out.
    pub slow_consumers: AtomicU64,
    /// Events the NATS client dropped because a subscription buffer was full.
    pub broker_dropped: AtomicU64,
    /// Events the in-process bus skipped because this relay lagged behind it.
    pub bus_lagged: AtomicU64,
    /// Messages sent from Postgres rather than from a live event.
    pub backfilled: AtomicU64,
    /// Live events that arrived with a seq beyond the next expected one.
    pub gaps: AtomicU64,
    /// Nudges from the poller: chats found behind Postgres.
    pub nudges: AtomicU64,
    pub delivered: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub slow_consumers: u64,
    pub broker_dropped: u64,
    pub bus_lagged: u64,
    pub backfilled: u64,
    pub gaps: u64,
    pub nudges: u64,
    pub delivered: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            slow_consumers: get(&self.slow_consumers),
            broker_dropped: get(&self.broker_dropped),
            bus_lagged: get(&self.bus_lagged),
            backfilled: get(&self.backfilled),
            gaps: get(&self.gaps),
            nudges: get(&self.nudges),
            delivered: get(&self.delivered),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// NATS: one core subscription per chat (plus its typing subject) and per connected user.
    Nats {
        client: async_nats::Client,
        prefix: String,
    },
    /// The in-process bus of the local `windi` binary: every event passes by; the hub filters.
    Local,
}

/// A live broker subscription: its forwarding tasks end (and unsubscribe) when this drops.
#[derive(Debug)]
struct Subscription(Vec<AbortHandle>);

impl Drop for Subscription {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct ConnEntry {
    user_id: i64,
    tx: mpsc::Sender<Item>,
    kill: Arc<Notify>,
    chats: HashSet<i64>,
}

#[derive(Debug, Default)]
struct Route {
    conns: HashSet<ConnId>,
    /// Highest message seq seen for this chat (events or polls); unused for user routes.
    max_seen: i64,
    sub: Option<Subscription>,
}

#[derive(Debug, Default)]
struct Tables {
    conns: HashMap<ConnId, ConnEntry>,
    chats: HashMap<i64, Route>,
    users: HashMap<i64, Route>,
}

/// What a new connection gets from [`Hub::register`].
#[derive(Debug)]
pub struct Registration {
    pub conn: ConnId,
    pub items: mpsc::Receiver<Item>,
    /// Notified when the connection must close because it fell behind.
    pub kill: Arc<Notify>,
}

#[derive(Debug)]
pub struct Hub {
    tables: Mutex<Tables>,
    /// Serialises changes of routes that (un)subscribe, so a subscription is never created
    /// twice or dropped while another connection is joining. Fan-out does not take it.
    membership: tokio::sync::Mutex<()>,
    source: Source,
    queue_capacity: usize,
    next_conn: AtomicU64,
    pub db: PgPool,
    pub stats: Arc<Stats>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Hub {
    pub fn new(db: PgPool, source: Source, queue_capacity: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::default(),
            membership: tokio::sync::Mutex::new(()),
            source,
            queue_capacity,
            next_conn: AtomicU64::new(1),
            db,
            stats,
            tasks: Mutex::default(),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the relay, so a poisoned lock is simply taken over.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the poller, and for the in-process source the task that reads the bus.
    pub fn start(
        self: &Arc<Self>,
        poll_interval: Duration,
        bus: Option<broadcast::Receiver<Arc<Event>>>,
    ) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.push(tokio::spawn(poll_loop(Arc::downgrade(self), poll_interval)).abort_handle());
        if let Some(bus) = bus {
            tasks.push(tokio::spawn(bus_loop(Arc::downgrade(self), bus)).abort_handle());
        }
    }

    /// Stops the hub's own tasks and drops every subscription.
    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let mut tables = self.tables();
        tables.chats.clear();
        tables.users.clear();
    }

    /// How many connections this user has on this relay.
    pub fn user_connections(&self, user_id: i64) -> usize {
        self.tables()
            .users
            .get(&user_id)
            .map_or(0, |route| route.conns.len())
    }

    /// Adds a connection of `user_id`, subscribed to the user's own subject.
    pub async fn register(self: &Arc<Self>, user_id: i64) -> Result<Registration, String> {
        let _membership = self.membership.lock().await;
        let needs_sub = !self.tables().users.contains_key(&user_id);
        let sub = if needs_sub {
            let sub = self.subscribe(&[Topic::User(user_id)]).await?;
            self.flush().await;
            sub
        } else {
            None
        };
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, items) = mpsc::channel(self.queue_capacity);
        let kill = Arc::new(Notify::new());
        let mut tables = self.tables();
        let route = tables.users.entry(user_id).or_default();
        if route.sub.is_none() {
            route.sub = sub;
        }
        route.conns.insert(conn);
        tables.conns.insert(
            conn,
            ConnEntry {
                user_id,
                tx,
                kill: kill.clone(),
                chats: HashSet::new(),
            },
        );
        Stats::add(&self.stats.connections, 1);
        Ok(Registration { conn, items, kill })
    }

    /// Routes these chats to the connection, subscribing where needed. Returns once the broker
    /// has the subscriptions, so anything published afterwards reaches the connection.
    pub async fn join(self: &Arc<Self>, conn: ConnId, chat_ids: &[i64]) -> Result<(), String> {
        let _membership = self.membership.lock().await;
        self.join_locked(conn, chat_ids).await
    }

    async fn join_locked(self: &Arc<Self>, conn: ConnId, chat_ids: &[i64]) -> Result<(), String> {
        let missing: Vec<i64> = {
            let tables = self.tables();
            chat_ids
                .iter()
                .copied()
                .filter(|id| !tables.chats.contains_key(id))
                .collect()
        };
        let mut subs = HashMap::with_capacity(missing.len());
        for &chat_id in &missing {
            let topics = [Topic::Chat(chat_id), Topic::Typing(chat_id)];
            subs.insert(chat_id, self.subscribe(&topics).await?);
        }
        if !missing.is_empty() {
            self.flush().await;
        }
        let mut tables = self.tables();
        if !tables.conns.contains_key(&conn) {
            return Ok(());
        }
        for &chat_id in chat_ids {
            let route = tables.chats.entry(chat_id).or_default();
            if let Some(sub) = subs.remove(&chat_id) {
                route.sub = sub;
            }
            route.conns.insert(conn);
            if let Some(entry) = tables.conns.get_mut(&conn) {
                entry.chats.insert(chat_id);
            }
        }
        Ok(())
    }

    /// Removes a connection everywhere, dropping subscriptions nobody needs any more.
    pub async fn unregister(&self, conn: ConnId) {
        let _membership = self.membership.lock().await;
        let mut tables = self.tables();
        let Some(entry) = tables.conns.remove(&conn) else {
            return;
        };
        for chat_id in entry.chats {
            remove_from(&mut tables.chats, chat_id, conn);
        }
        remove_from(&mut tables.users, entry.user_id, conn);
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Handles one event from the broker or the bus. Boxed because it is recursive through
    /// the subscription tasks it may create (a `chat.added` subscribes to a chat).
    pub fn dispatch(self: &Arc<Self>, event: Arc<Event>) -> BoxFuture<'_, ()> {
        Box::pin(self.dispatch_inner(event))
    }

    async fn dispatch_inner(self: &Arc<Self>, event: Arc<Event>) {
        match &*event {
            Event::ChatAdded {
                user_id,
                joined_seq,
                chat,
            } => return self.joined(*user_id, chat, *joined_seq).await,
            Event::ChatRemoved { chat_id, user_id } => return self.leave(*user_id, *chat_id).await,
            // The member stops receiving the chat; the others still hear that they left.
            Event::MemberLeft { chat_id, user_id } => self.leave(*user_id, *chat_id).await,
            _ => {}
        }
        let (Topic::Chat(chat_id) | Topic::Typing(chat_id)) = event.topic() else {
            return;
        };
        let seen = match &*event {
            Event::MessageCreated { seq, .. } => Some(*seq),
            _ => None,
        };
        self.fan_out(chat_id, seen, || Item::Event(event.clone()));
    }

    /// Parses and dispatches a broker payload.
    async fn on_payload(self: &Arc<Self>, payload: &[u8]) {
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) => self.dispatch(Arc::new(event)).await,
            Err(e) => tracing::warn!(error = %e, "unreadable event skipped"),
        }
    }

    /// The user's connections join a chat they were added to.
    async fn joined(self: &Arc<Self>, user_id: i64, chat: &ChatSummary, joined_seq: i64) {
        let _membership = self.membership.lock().await;
        let conns: Vec<ConnId> = match self.tables().users.get(&user_id) {
            Some(route) => route.conns.iter().copied().collect(),
            None => return,
        };
        for &conn in &conns {
            if let Err(e) = self.join_locked(conn, &[chat.id]).await {
                tracing::warn!(error = %e, chat_id = chat.id, "cannot subscribe; the poller covers it");
            }
        }
        self.send_to(&conns, || Item::Joined {
            chat: Box::new(chat.clone()),
            next_seq: joined_seq + 1,
        });
    }

    /// The user's connections stop receiving a chat.
    async fn leave(&self, user_id: i64, chat_id: i64) {
        let _membership = self.membership.lock().await;
        let conns: Vec<ConnId> = {
            let mut tables = self.tables();
            let candidates: Vec<ConnId> = tables
                .users
                .get(&user_id)
                .map(|route| route.conns.iter().copied().collect())
                .unwrap_or_default();
            let conns: Vec<ConnId> = candidates
                .into_iter()
                .filter(|c| {
                    tables
                        .conns
                        .get_mut(c)
                        .is_some_and(|e| e.chats.remove(&chat_id))
                })
                .collect();
            for &conn in &conns {
                remove_from(&mut tables.chats, chat_id, conn);
            }
            conns
        };
        self.send_to(&conns, || Item::Left { chat_id });
    }

    /// Puts an item in the queue of every connection in the chat, noting a message seq seen.
    fn fan_out(&self, chat_id: i64, seen: Option<i64>, item: impl FnMut() -> Item) {
        let targets = {
            let mut tables = self.tables();
            let Tables { chats, conns, .. } = &mut *tables;
            let Some(route) = chats.get_mut(&chat_id) else {
                return;
            };
            if let Some(seq) = seen {
                route.max_seen = route.max_seen.max(seq);
            }
            queues(conns, route.conns.iter())
        };
        deliver(targets, item);
    }

    /// Puts an item in the queue of each of these connections.
    fn send_to(&self, conns: &[ConnId], item: impl FnMut() -> Item) {
        let targets = queues(&self.tables().conns, conns.iter());
        deliver(targets, item);
    }

    /// Subscribes to the topics and forwards what arrives to [`Hub::dispatch`].
    async fn subscribe(self: &Arc<Self>, topics: &[Topic]) -> Result<Option<Subscription>, String> {
        let Source::Nats { client, prefix } = &self.source else {
            return Ok(None);
        };
        let mut tasks = Vec::with_capacity(topics.len());
        for topic in topics {
            let subject = topic.subject(prefix);
            let mut sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("subscribe {subject}: {e}"))?;
            let hub = Arc::downgrade(self);
            let task = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(hub) = hub.upgrade() else { break };
                    hub.on_payload(&msg.payload).await;
                }
            });
            tasks.push(task.abort_handle());
        }
        Ok(Some(Subscription(tasks)))
    }

    /// Waits until the server has every subscription sent so far — but not for long: while
    /// NATS is down a flush would wait for the reconnect, holding up every join. The
    /// subscriptions are replayed on reconnect, and the poller covers what passes meanwhile.
    async fn flush(&self) {
        if let Source::Nats { client, .. } = &self.source {
            match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "NATS flush failed; the poller covers it"),
                Err(_) => tracing::warn!("NATS flush timed out; the poller covers the gap"),
            }
        }
    }

    /// Compares Postgres with what was seen and nudges the connections of chats that are behind.
    async fn poll_once(&self) {
        let chat_ids: Vec<i64> = self.tables().chats.keys().copied().collect();
        for chunk in chat_ids.chunks(5000) {
            let rows = match windi_shared::db::chats::last_seqs(&self.db, chunk).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed");
                    return;
                }
            };
            for (chat_id, last_seq) in rows {
                let behind = match self.tables().chats.get_mut(&chat_id) {
                    Some(route) if last_seq > route.max_seen => {
                        route.max_seen = last_seq;
                        true
                    }
                    _ => false,
                };
                if behind {
                    Stats::add(&self.stats.nudges, 1);
                    self.fan_out(chat_id, None, || Item::Nudge { chat_id, last_seq });
                }
            }
        }
    }
}

/// The queues (and kill switches) of these connections, taken under the lock.
fn queues<'a>(
    conns: &HashMap<ConnId, ConnEntry>,
    ids: impl Iterator<Item = &'a ConnId>,
) -> Vec<(mpsc::Sender<Item>, Arc<Notify>)> {
    ids.filter_map(|c| conns.get(c))
        .map(|e| (e.tx.clone(), e.kill.clone()))
        .collect()
}

/// Fills the queues outside the lock. A full queue means the client is not keeping up: it is
/// told to go (and resumes later), rather than letting its backlog grow in the relay's memory.
fn deliver(targets: Vec<(mpsc::Sender<Item>, Arc<Notify>)>, mut item: impl FnMut() -> Item) {
    for (tx, kill) in targets {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(item()) {
            kill.notify_one();
        }
    }
}

fn remove_from(routes: &mut HashMap<i64, Route>, key: i64, conn: ConnId) {
    if let Some(route) = routes.get_mut(&key) {
        route.conns.remove(&conn);
        if route.conns.is_empty() {
            // Dropping the route drops its subscription: the broker stops sending it here.
            routes.remove(&key);
        }
    }
}

async fn poll_loop(hub: Weak<Hub>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { break };
        hub.poll_once().await;
    }
}

async fn bus_loop(hub: Weak<Hub>, mut bus: broadcast::Receiver<Arc<Event>>) {
    loop {
        let received = bus.recv().await;
        let Some(hub) = hub.upgrade() else { break };
        match received {
            Ok(event) => hub.dispatch(event).await,
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(
                    skipped,
                    "relay lagged behind the event bus; polling Postgres"
                );
                Stats::add(&hub.stats.bus_lagged, skipped);
                hub.poll_once().await;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}
