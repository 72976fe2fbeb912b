//! The hub: which connection wants which chat, the bus subscriptions that serve them, the
//! fan-out of live events into each connection's bounded queue, and the poller.
//!
//! Subscriptions follow connections: a relay subscribes to a chat's topics only while a
//! connected user is in that chat, and to a user's topic while that user is connected. Any
//! number of relays can therefore run side by side with no sticky sessions.
//!
//! Nothing here is trusted to be complete. A bus may drop an event (a full subscription
//! buffer, a restart, a handler that died between commit and publish), so a poller compares
//! each routed chat's `rev` in Postgres with the highest rev seen, and each connected user's
//! `member_rev` with the one seen, and nudges the connections concerned: they catch up by rev
//! from Postgres, or re-read their chats. That bounds how late any committed change can be:
//! [`crate::RelaySettings::poll_interval`] plus a query.
//!
//! Locking: one `std` mutex guards the tables and is never held across an `.await`. Joining a
//! chat creates its route at once (so concurrent joiners share it), subscribes outside the
//! lock, and signals the route ready; later joiners wait for that signal, not for a lock.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};
use windi_shared::{
    db::{chats, sessions, users},
    events::{Bus, Event, EventStream, Topic},
};

use crate::protocol::ServerFrame;

/// How long a join waits for the bus to confirm its subscriptions. While NATS is down a flush
/// would wait for the reconnect; the subscriptions are replayed then, and the poller covers
/// what passes meanwhile.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Ids looked up per poller query.
const POLL_CHUNK: usize = 5000;
/// The poller's longest wait after failures, in poll intervals.
const MAX_POLL_BACKOFF: u32 = 8;

/// Identifies one WebSocket connection (one device) within this relay.
pub type ConnId = u64;

/// A live event as the hub hands it to connections: the frame is encoded once, by the first
/// connection that sends it, and shared by every other.
#[derive(Debug)]
pub struct Live {
    pub event: Arc<Event>,
    frame: OnceLock<Option<Utf8Bytes>>,
}

impl Live {
    pub fn new(event: Arc<Event>) -> Self {
        Self {
            event,
            frame: OnceLock::new(),
        }
    }

    /// The frame of a change event (message, update, member), the same for every receiver.
    pub fn frame(&self) -> Option<&Utf8Bytes> {
        self.frame
            .get_or_init(|| {
                let frame = match &*self.event {
                    Event::MessageCreated {
                        chat_id,
                        rev,
                        seq,
                        message,
                    } => ServerFrame::Message {
                        chat_id: *chat_id,
                        seq: *seq,
                        rev: *rev,
                        message,
                    },
                    Event::MessageUpdated {
                        chat_id,
                        rev,
                        change,
                        message,
                    } => ServerFrame::MessageUpdated {
                        chat_id: *chat_id,
                        rev: *rev,
                        change,
                        message,
                    },
                    Event::MemberJoined {
                        chat_id,
                        rev,
                        user_id,
                    } => ServerFrame::Member {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        change: "joined",
                        rev: *rev,
                    },
                    Event::MemberLeft {
                        chat_id,
                        rev,
                        user_id,
                    } => ServerFrame::Member {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        change: "left",
                        rev: *rev,
                    },
                    _ => return None,
                };
                Some(frame.to_json().into())
            })
            .as_ref()
    }
}

/// What the hub puts in a connection's queue: live events of its chats and of its user.
pub type Item = Arc<Live>;

/// Work for a connection that is not an event: coalesced, so a poll that finds 2,000 chats
/// behind costs one entry per chat, never 2,000 queue slots.
#[derive(Debug, Default)]
pub struct Pending {
    /// Chats Postgres has at a rev this hub had not seen: (chat, rev).
    pub nudges: HashMap<i64, i64>,
    /// The user's chats changed (joined or left): re-read them.
    pub reconcile: bool,
}

/// A connection's signals from the hub.
#[derive(Debug, Default)]
pub struct Signals {
    pending: Mutex<Pending>,
    /// Something is pending.
    pub wake: Notify,
    /// The connection fell behind its queue and must close.
    pub kill: Notify,
    /// The connection's session ended (logout, password change, …): it must close.
    pub ended: Notify,
}

impl Signals {
    /// Takes what is pending.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn nudge(&self, chat_id: i64, rev: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.nudges.entry(chat_id).or_insert(rev);
        *entry = (*entry).max(rev);
        drop(pending);
        self.wake.notify_one();
    }

    fn reconcile(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile = true;
        self.wake.notify_one();
    }
}

/// Counters for `/health` and the tests; all monotonic except `connections`.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections closed because their queue filled or a write timed out.
    pub slow_consumers: AtomicU64,
    /// Changes sent from Postgres rather than from a live event.
    pub backfilled: AtomicU64,
    /// Backfill queries that failed (each is retried with backoff).
    pub backfill_failures: AtomicU64,
    /// Live changes that arrived with a rev beyond the next expected one.
    pub gaps: AtomicU64,
    /// Nudges from the poller: chats found behind Postgres.
    pub nudges: AtomicU64,
    /// Times a connection re-read its user's chats (a join or leave).
    pub reconciles: AtomicU64,
    /// Poller queries that failed.
    pub poll_failures: AtomicU64,
    pub delivered: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub slow_consumers: u64,
    /// Events the bus dropped because a subscription of this relay was full.
    pub broker_dropped: u64,
    pub backfilled: u64,
    pub backfill_failures: u64,
    pub gaps: u64,
    pub nudges: u64,
    pub reconciles: u64,
    pub poll_failures: u64,
    pub delivered: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters, with what the bus reports it dropped.
    pub fn snapshot(&self, broker_dropped: u64) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            slow_consumers: get(&self.slow_consumers),
            broker_dropped,
            backfilled: get(&self.backfilled),
            backfill_failures: get(&self.backfill_failures),
            gaps: get(&self.gaps),
            nudges: get(&self.nudges),
            reconciles: get(&self.reconciles),
            poll_failures: get(&self.poll_failures),
            delivered: get(&self.delivered),
        }
    }
}

/// The subscriptions of one route; dropping it stops their forwarding tasks (and with them the
/// streams, which unsubscribes).
#[derive(Debug, Default)]
struct Subscription(Vec<AbortHandle>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.iter().for_each(AbortHandle::abort);
    }
}

/// A chat or user routed to some connections of this relay.
#[derive(Debug)]
struct Route {
    conns: HashSet<ConnId>,
    /// The highest rev (for a user: `member_rev`) this hub has seen, from events or polls.
    seen: i64,
    sub: Option<Subscription>,
    /// True once the subscription is in place (or failed and left to the poller).
    ready: watch::Receiver<bool>,
    /// Tells a subscription that finishes late whether its route is still the same one.
    generation: u64,
}

#[derive(Debug)]
struct ConnEntry {
    user_id: i64,
    /// The session whose token opened the connection; it closes when the session ends.
    session_id: i64,
    tx: mpsc::Sender<Item>,
    signals: Arc<Signals>,
    chats: HashSet<i64>,
}

#[derive(Debug, Default)]
struct Tables {
    conns: HashMap<ConnId, ConnEntry>,
    chats: HashMap<i64, Route>,
    users: HashMap<i64, Route>,
    /// Connection slots taken per user (see [`Hub::reserve`]).
    slots: HashMap<i64, usize>,
}

/// One of a user's connection slots on this relay, held from the upgrade to the end of the
/// connection.
#[derive(Debug)]
pub struct Slot {
    hub: Arc<Hub>,
    user_id: i64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tables = self.hub.tables();
        if let Some(n) = tables.slots.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                tables.slots.remove(&self.user_id);
            }
        }
    }
}

/// What a new connection gets from [`Hub::register`].
#[derive(Debug)]
pub struct Registration {
    pub conn: ConnId,
    pub items: mpsc::Receiver<Item>,
    pub signals: Arc<Signals>,
}

/// Which table a route lives in.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Chat,
    User,
}

/// A route this caller created and must subscribe.
struct NewRoute {
    kind: Kind,
    id: i64,
    generation: u64,
    ready: watch::Sender<bool>,
}

#[derive(Debug)]
pub struct Hub {
    tables: Mutex<Tables>,
    bus: Bus,
    queue_capacity: usize,
    next_id: AtomicU64,
    pub db: PgPool,
    pub stats: Arc<Stats>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Every user's events come from one subscription ([`Hub::feed_users`]), so user routes
    /// subscribe nothing of their own.
    users_fed: std::sync::atomic::AtomicBool,
}

impl Hub {
    pub fn new(db: PgPool, bus: Bus, queue_capacity: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::default(),
            bus,
            queue_capacity,
            next_id: AtomicU64::new(1),
            db,
            stats,
            tasks: Mutex::default(),
            users_fed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes every user's events from `events` (one subscription to all user topics, made
    /// before any connection registers) instead of subscribing per connected user. Events of
    /// users without a connection here are dropped by [`Hub::dispatch`].
    pub fn feed_users(self: &Arc<Self>, events: EventStream) {
        self.users_fed.store(true, Ordering::Relaxed);
        let task = self.forward(events);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the relay, so a poisoned lock is simply taken over.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the poller.
    pub fn start(self: &Arc<Self>, poll_interval: Duration) {
        let poller = tokio::spawn(poll_loop(Arc::downgrade(self), poll_interval));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(poller.abort_handle());
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

    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot(self.bus.dropped())
    }

    /// Takes one of the user's `max` connection slots, if one is free. Counted and taken under
    /// one lock, so concurrent upgrades cannot all pass a check and then all connect.
    pub fn reserve(self: &Arc<Self>, user_id: i64, max: usize) -> Option<Slot> {
        let mut tables = self.tables();
        let taken = tables.slots.entry(user_id).or_default();
        if *taken >= max {
            return None;
        }
        *taken += 1;
        Some(Slot {
            hub: self.clone(),
            user_id,
        })
    }

    /// Adds a connection of `user_id`, whose `member_rev` was read just before, subscribed to
    /// the user's own topic once this returns.
    pub async fn register(
        self: &Arc<Self>,
        user_id: i64,
        session_id: i64,
        member_rev: i64,
    ) -> Registration {
        let conn = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, items) = mpsc::channel(self.queue_capacity);
        let signals = Arc::new(Signals::default());
        let (created, waits) = {
            let mut tables = self.tables();
            tables.conns.insert(
                conn,
                ConnEntry {
                    user_id,
                    session_id,
                    tx,
                    signals: signals.clone(),
                    chats: HashSet::new(),
                },
            );
            let mut created = Vec::new();
            let mut waits = Vec::new();
            self.route_in(
                &mut tables,
                Kind::User,
                user_id,
                member_rev,
                conn,
                &mut created,
                &mut waits,
            );
            (created, waits)
        };
        Stats::add(&self.stats.connections, 1);
        self.subscribe_routes(created, waits).await;
        Registration {
            conn,
            items,
            signals,
        }
    }

    /// Routes these chats (each with the rev the caller read) to the connection, subscribing
    /// where needed. Returns once the bus has the subscriptions, so anything published
    /// afterwards reaches the connection.
    pub async fn join(self: &Arc<Self>, conn: ConnId, chats: &[(i64, i64)]) {
        let (created, waits) = {
            let mut tables = self.tables();
            if !tables.conns.contains_key(&conn) {
                return;
            }
            let mut created = Vec::new();
            let mut waits = Vec::new();
            for &(chat_id, rev) in chats {
                self.route_in(
                    &mut tables,
                    Kind::Chat,
                    chat_id,
                    rev,
                    conn,
                    &mut created,
                    &mut waits,
                );
                if let Some(entry) = tables.conns.get_mut(&conn) {
                    entry.chats.insert(chat_id);
                }
            }
            (created, waits)
        };
        self.subscribe_routes(created, waits).await;
    }

    /// Adds `conn` to a route, creating it (to be subscribed by the caller) if missing.
    #[allow(clippy::too_many_arguments)]
    fn route_in(
        &self,
        tables: &mut Tables,
        kind: Kind,
        id: i64,
        seen: i64,
        conn: ConnId,
        created: &mut Vec<NewRoute>,
        waits: &mut Vec<watch::Receiver<bool>>,
    ) {
        let routes = match kind {
            Kind::Chat => &mut tables.chats,
            Kind::User => &mut tables.users,
        };
        if let Some(route) = routes.get_mut(&id) {
            route.conns.insert(conn);
            waits.push(route.ready.clone());
            return;
        }
        let (ready_tx, ready) = watch::channel(false);
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        routes.insert(
            id,
            Route {
                conns: HashSet::from([conn]),
                seen,
                sub: None,
                ready,
                generation,
            },
        );
        created.push(NewRoute {
            kind,
            id,
            generation,
            ready: ready_tx,
        });
    }

    /// Subscribes the routes this caller created, flushes once for all of them, and waits for
    /// the routes other callers are subscribing. No lock is held while the bus is called.
    async fn subscribe_routes(
        self: &Arc<Self>,
        created: Vec<NewRoute>,
        waits: Vec<watch::Receiver<bool>>,
    ) {
        let mut made = Vec::with_capacity(created.len());
        let mut subscribed = false;
        let users_fed = self.users_fed.load(Ordering::Relaxed);
        for route in created {
            let topics: &[Topic] = match route.kind {
                Kind::Chat => &[Topic::Chat(route.id), Topic::Typing(route.id)],
                Kind::User if users_fed => &[],
                Kind::User => &[Topic::User(route.id)],
            };
            subscribed |= !topics.is_empty();
            let mut streams = Vec::with_capacity(topics.len());
            for &topic in topics {
                match self.bus.subscribe(topic).await {
                    Ok(stream) => streams.push(stream),
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe; the poller covers it"),
                }
            }
            made.push((route, streams));
        }
        if subscribed {
            match tokio::time::timeout(FLUSH_TIMEOUT, self.bus.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "bus flush failed; the poller covers it"),
                Err(_) => tracing::warn!("bus flush timed out; the poller covers the gap"),
            }
        }
        {
            let mut tables = self.tables();
            for (route, streams) in &mut made {
                let routes = match route.kind {
                    Kind::Chat => &mut tables.chats,
                    Kind::User => &mut tables.users,
                };
                if let Some(r) = routes.get_mut(&route.id)
                    && r.generation == route.generation
                {
                    let tasks = std::mem::take(streams)
                        .into_iter()
                        .map(|stream| self.forward(stream))
                        .collect();
                    r.sub = Some(Subscription(tasks));
                }
                // Else the route was dropped (or recreated) meanwhile: the streams go with `made`.
            }
        }
        for (route, _) in &made {
            let _ = route.ready.send(true);
        }
        for mut ready in waits {
            // A joiner that gave up drops its sender: that also ends the wait.
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, ready.wait_for(|&r| r)).await;
        }
    }

    /// Forwards what a subscription receives to [`Hub::dispatch`].
    fn forward(self: &Arc<Self>, mut stream: EventStream) -> AbortHandle {
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let Some(hub) = hub.upgrade() else { break };
                hub.dispatch(event);
            }
        })
        .abort_handle()
    }

    /// Stops routing a chat to a connection (its user left it).
    pub fn leave(&self, conn: ConnId, chat_id: i64) {
        let mut tables = self.tables();
        if let Some(entry) = tables.conns.get_mut(&conn) {
            entry.chats.remove(&chat_id);
        }
        remove_from(&mut tables.chats, chat_id, conn);
    }

    /// Removes a connection everywhere, dropping subscriptions nobody needs any more.
    pub fn unregister(&self, conn: ConnId) {
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

    /// Hands one event from the bus to the connections it concerns. A chat's event is fanned
    /// out once: every connection gets the same `Arc`.
    pub fn dispatch(&self, event: Arc<Event>) {
        match event.topic() {
            Topic::Chat(chat_id) | Topic::Typing(chat_id) => {
                let targets = {
                    let mut tables = self.tables();
                    let Tables { chats, conns, .. } = &mut *tables;
                    let Some(route) = chats.get_mut(&chat_id) else {
                        return;
                    };
                    if let Some((_, rev)) = event.change() {
                        route.seen = route.seen.max(rev);
                    }
                    queues(conns, route.conns.iter())
                };
                let live = Arc::new(Live::new(event));
                deliver(targets, &live);
            }
            Topic::User(user_id) => {
                if let Event::SessionsEnded { session_ids, .. } = &*event {
                    let signals: Vec<Arc<Signals>> = {
                        let tables = self.tables();
                        let Some(route) = tables.users.get(&user_id) else {
                            return;
                        };
                        route
                            .conns
                            .iter()
                            .filter_map(|c| tables.conns.get(c))
                            .filter(|e| session_ids.contains(&e.session_id))
                            .map(|e| e.signals.clone())
                            .collect()
                    };
                    signals.iter().for_each(|s| s.ended.notify_one());
                    return;
                }
                let member_rev = match &*event {
                    Event::ChatAdded { member_rev, .. } | Event::ChatRemoved { member_rev, .. } => {
                        *member_rev
                    }
                    _ => 0,
                };
                let signals = {
                    let mut tables = self.tables();
                    let Tables { users, conns, .. } = &mut *tables;
                    let Some(route) = users.get_mut(&user_id) else {
                        return;
                    };
                    route.seen = route.seen.max(member_rev);
                    signals_of(conns, route.conns.iter())
                };
                signals.iter().for_each(|s| s.reconcile());
            }
        }
    }

    /// Tells the connections of these sessions to close (the poller's path; an event names
    /// its user, and only that user's connections are looked at).
    fn end_sessions(&self, session_ids: &[i64]) {
        let signals: Vec<Arc<Signals>> = self
            .tables()
            .conns
            .values()
            .filter(|e| session_ids.contains(&e.session_id))
            .map(|e| e.signals.clone())
            .collect();
        signals.iter().for_each(|s| s.ended.notify_one());
    }

    /// Compares Postgres with what was seen and nudges the connections of whatever is behind.
    /// Answers whether every query succeeded.
    async fn poll_once(&self) -> bool {
        let mut ok = true;
        // Sessions that ended without their event reaching this relay.
        let mut session_ids: Vec<i64> =
            self.tables().conns.values().map(|e| e.session_id).collect();
        session_ids.sort_unstable();
        session_ids.dedup();
        for chunk in session_ids.chunks(POLL_CHUNK) {
            match sessions::ended_among(&self.db, chunk).await {
                Ok(ended) if !ended.is_empty() => self.end_sessions(&ended),
                Ok(_) => {}
                Err(e) => {
                    Stats::add(&self.stats.poll_failures, 1);
                    tracing::warn!(error = %e, "poll failed; retrying with backoff");
                    ok = false;
                }
            }
        }
        let chat_ids: Vec<i64> = self.tables().chats.keys().copied().collect();
        for chunk in chat_ids.chunks(POLL_CHUNK) {
            match chats::revs(&self.db, chunk).await {
                Ok(rows) => self.behind(Kind::Chat, rows),
                Err(e) => {
                    Stats::add(&self.stats.poll_failures, 1);
                    tracing::warn!(error = %e, "poll failed; retrying with backoff");
                    ok = false;
                }
            }
        }
        let user_ids: Vec<i64> = self.tables().users.keys().copied().collect();
        for chunk in user_ids.chunks(POLL_CHUNK) {
            match users::member_revs(&self.db, chunk).await {
                Ok(rows) => self.behind(Kind::User, rows),
                Err(e) => {
                    Stats::add(&self.stats.poll_failures, 1);
                    tracing::warn!(error = %e, "poll failed; retrying with backoff");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Nudges the connections of every route Postgres has ahead of what was seen.
    fn behind(&self, kind: Kind, rows: Vec<(i64, i64)>) {
        let mut work = Vec::new();
        {
            let mut tables = self.tables();
            let Tables {
                chats,
                users,
                conns,
                ..
            } = &mut *tables;
            let routes = match kind {
                Kind::Chat => chats,
                Kind::User => users,
            };
            for (id, rev) in rows {
                if let Some(route) = routes.get_mut(&id)
                    && rev > route.seen
                {
                    route.seen = rev;
                    work.push((id, rev, signals_of(conns, route.conns.iter())));
                }
            }
        }
        for (id, rev, signals) in work {
            match kind {
                Kind::Chat => {
                    Stats::add(&self.stats.nudges, 1);
                    signals.iter().for_each(|s| s.nudge(id, rev));
                }
                Kind::User => signals.iter().for_each(|s| s.reconcile()),
            }
        }
    }
}

/// The queues (and kill switches) of these connections, taken under the lock.
fn queues<'a>(
    conns: &HashMap<ConnId, ConnEntry>,
    ids: impl Iterator<Item = &'a ConnId>,
) -> Vec<(mpsc::Sender<Item>, Arc<Signals>)> {
    ids.filter_map(|c| conns.get(c))
        .map(|e| (e.tx.clone(), e.signals.clone()))
        .collect()
}

fn signals_of<'a>(
    conns: &HashMap<ConnId, ConnEntry>,
    ids: impl Iterator<Item = &'a ConnId>,
) -> Vec<Arc<Signals>> {
    ids.filter_map(|c| conns.get(c))
        .map(|e| e.signals.clone())
        .collect()
}

/// Fills the queues outside the lock. A full queue means the client is not keeping up: it is
/// told to go (and resumes later), rather than letting its backlog grow in the relay's memory.
fn deliver(targets: Vec<(mpsc::Sender<Item>, Arc<Signals>)>, live: &Item) {
    for (tx, signals) in targets {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(live.clone()) {
            signals.kill.notify_one();
        }
    }
}

fn remove_from(routes: &mut HashMap<i64, Route>, key: i64, conn: ConnId) {
    if let Some(route) = routes.get_mut(&key) {
        route.conns.remove(&conn);
        if route.conns.is_empty() {
            // Dropping the route drops its subscription: the bus stops sending it here.
            routes.remove(&key);
        }
    }
}

async fn poll_loop(hub: Weak<Hub>, interval: Duration) {
    let mut backoff = 1;
    loop {
        tokio::time::sleep(interval * backoff).await;
        let Some(hub) = hub.upgrade() else { break };
        let started = std::time::Instant::now();
        let ok = hub.poll_once().await;
        metrics::histogram!("windi_relay_poll_duration_seconds").record(started.elapsed());
        backoff = if ok {
            // time() minus this is how stale the poller's view of Postgres is.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics::gauge!("windi_relay_poll_last_success_timestamp_seconds").set(now);
            1
        } else {
            (backoff * 2).min(MAX_POLL_BACKOFF)
        };
    }
}
