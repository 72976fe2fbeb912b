//! The hub: which connection wants which chat, the bus subscriptions that serve them, the
//! fan-out of live events into each connection's bounded queue, the poller, and catch-up reads
//! shared by every connection of a chat.
//!
//! Subscriptions follow connections: a relay subscribes to a chat's topics only while a
//! connected user is in that chat, and to a user's topic while that user is connected. Any
//! number of relays can therefore run side by side with no sticky sessions.
//!
//! Nothing here is trusted to be complete. A bus may drop an event (a full subscription
//! buffer, a restart, a handler that died between commit and publish), so a poller reads what
//! was committed since its last look: the feed ordered by commit (`chat_changes`, `member_rev`
//! moves, read marker moves and ended sessions, each stamped with its transaction; see
//! [`windi_shared::store::changes::horizon`]). From it the hub nudges the connections of every
//! routed chat that moved past the highest rev seen, has the connections of every connected
//! user whose `member_rev` moved re-read their chats, passes on the markers that moved further
//! than their events said, and closes the connections of ended sessions. A poll costs O(changes since the last poll), read in pages of [`FEED_PAGE`],
//! whatever the number of chats, users and sessions served.
//!
//! **The bound.** A committed change whose event was lost reaches its connections within
//! [`crate::RelaySettings::poll_interval`] plus the poll's queries, *as long as no transaction
//! of this database runs longer*: the feed only reads below its horizon, the oldest
//! transaction still running, because one that started earlier may still commit rows there.
//! A transaction that stays open for a minute delays the feed (not live events) for that
//! minute. The API's transactions end within the request deadline (5 s); keep Postgres's
//! `idle_in_transaction_session_timeout` and `statement_timeout` set for every other client of
//! the database (migrations, scripts, `psql` sessions left open), and watch
//! `windi_relay_poll_last_success_timestamp_seconds` with the feed's lag in mind.
//!
//! Where a route starts: a connection reads a chat's rev (or its `member_rev`) from Postgres,
//! joins, and reads again after [`Hub::join`] returns (the cursor's start, a backfill): what
//! was committed before the subscription existed is its to read; what is committed after is
//! the bus's, or the feed's.
//!
//! **Catch-up** ([`Hub::catch_up`]): a lost event in a group concerns every connection of that
//! group on this relay at once. Connections asking for the same page while one read of it is
//! under way share that read (single flight), so a thousand sockets missing one event cost one
//! query; nothing is kept once it returns.
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
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Shared},
};
use serde::Serialize;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};
use windi_shared::{
    domain::model::ChangesPage,
    events::{Bus, Event, EventStream, Topic},
    store::{
        changes::{self, Committed, Horizon, MemberCommitted},
        members::{self, MarkerCommitted},
        receipts::{self, DeliveredCommitted},
        sessions::{self, EndedCommitted},
    },
};

use crate::protocol::ServerFrame;

/// How long a join waits for the bus to confirm its subscriptions. While NATS is down a flush
/// would wait for the reconnect; the subscriptions are replayed then, and the poller covers
/// what passes meanwhile.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows of the feed read per poller query; a poll pages on until it has read everything
/// committed below its horizon.
pub const FEED_PAGE: i64 = 1000;
/// Changes per catch-up read ([`Hub::catch_up`]).
pub const CATCH_UP_PAGE: i64 = 200;
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
                        name,
                    } => ServerFrame::Member {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        change: "joined",
                        rev: *rev,
                        name: name.as_deref(),
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
                        name: None,
                    },
                    Event::MemberPromoted {
                        chat_id,
                        rev,
                        user_id,
                    } => ServerFrame::Member {
                        chat_id: *chat_id,
                        user_id: *user_id,
                        change: "promoted",
                        rev: *rev,
                        name: None,
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
    /// Polls that succeeded.
    pub polls: AtomicU64,
    /// Queries the poller sent (failed ones included): per poll, one for the horizon and, when
    /// it moved, one per page of each feed.
    pub poll_queries: AtomicU64,
    /// Rows the poller read from the feed (changes, `member_rev` moves, marker moves, ended
    /// sessions).
    pub feed_rows: AtomicU64,
    /// Catch-up reads sent to Postgres ([`Hub::catch_up`]).
    pub catch_up_queries: AtomicU64,
    /// Catch-up callers served by a read another caller had under way.
    pub catch_up_coalesced: AtomicU64,
    /// Read markers the poller found moved with no event seen ([`Hub::markers_moved`]).
    pub markers_recovered: AtomicU64,
    /// Delivered markers the poller found moved with no event seen ([`Hub::delivered_moved`]).
    pub delivered_recovered: AtomicU64,
    /// Delivered notes dropped because too many were pending ([`crate::receipts::MAX_PENDING`]).
    pub receipts_dropped: AtomicU64,
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
    pub polls: u64,
    pub poll_queries: u64,
    pub feed_rows: u64,
    pub catch_up_queries: u64,
    pub catch_up_coalesced: u64,
    pub markers_recovered: u64,
    pub delivered_recovered: u64,
    pub receipts_dropped: u64,
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
            polls: get(&self.polls),
            poll_queries: get(&self.poll_queries),
            feed_rows: get(&self.feed_rows),
            catch_up_queries: get(&self.catch_up_queries),
            catch_up_coalesced: get(&self.catch_up_coalesced),
            markers_recovered: get(&self.markers_recovered),
            delivered_recovered: get(&self.delivered_recovered),
            receipts_dropped: get(&self.receipts_dropped),
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
    /// The highest read marker of each member this hub has seen (chat routes only), so the
    /// poller passes on only the markers whose event did not come.
    markers: HashMap<i64, i64>,
    /// The same for delivered markers.
    delivered: HashMap<i64, i64>,
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
    /// The users connected here, for presence ([`crate::keeper`] writes their changes).
    presence: crate::presence::Local,
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
    /// Catch-up reads under way, by (chat, after rev); see [`Hub::catch_up`].
    flights: Mutex<HashMap<(i64, i64), Flight>>,
    /// Messages handed to devices since the keeper last wrote them (delivered receipts).
    receipts: Mutex<crate::receipts::Pending>,
}

/// What [`Hub::catch_up`] answers: one page, shared by every caller of one read (an error too).
pub type CatchUp = Result<Arc<ChangesPage>, Arc<sqlx::Error>>;

/// A catch-up read under way.
#[derive(Debug)]
struct Flight {
    /// Tells the read's own entry from one that replaced it.
    id: u64,
    /// The chat's highest rev the hub had seen when the read was sent: the read's snapshot
    /// has every change up to it. A caller may join only while this is still all the hub
    /// knows, so no caller gets a page older than what it was told exists.
    seen: i64,
    page: Shared<BoxFuture<'static, CatchUp>>,
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
            flights: Mutex::default(),
            receipts: Mutex::default(),
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

    /// Starts the poller at the feed's horizon now, before any connection registers: every
    /// connection reads its starting point after this, so whatever the feed holds below the
    /// horizon is in what connections read themselves.
    pub async fn start(self: &Arc<Self>, poll_interval: Duration) -> Result<(), sqlx::Error> {
        let from = changes::horizon(&self.db).await?;
        let poller = tokio::spawn(poll_loop(Arc::downgrade(self), poll_interval, from));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(poller.abort_handle());
        Ok(())
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
            tables.presence.connect(user_id);
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
                markers: HashMap::new(),
                delivered: HashMap::new(),
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
        tables.presence.disconnect(entry.user_id);
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The users whose being connected here changed since the last call ([`Local::take_changes`]).
    ///
    /// [`Local::take_changes`]: crate::presence::Local::take_changes
    pub fn presence_changes(&self) -> Vec<(i64, bool)> {
        self.tables().presence.take_changes()
    }

    /// Changes from [`Hub::presence_changes`] that could not be written: asked again next time.
    pub fn presence_unwritten(&self, changes: &[(i64, bool)]) {
        self.tables().presence.unflush(changes);
    }

    /// Every user connected here now.
    pub fn presence_users(&self) -> Vec<i64> {
        self.tables().presence.users().collect()
    }

    /// Hands one event from the bus to the connections it concerns. A chat's event is fanned
    /// out once: every connection gets the same `Arc`.
    pub fn dispatch(&self, event: Arc<Event>) {
        match event.topic() {
            Topic::Chat(chat_id) | Topic::Typing(chat_id) => {
                let targets = {
                    let mut tables = self.tables();
                    let Tables {
                        chats,
                        conns,
                        users,
                        ..
                    } = &mut *tables;
                    let Some(route) = chats.get_mut(&chat_id) else {
                        return;
                    };
                    if let Some((_, rev)) = event.change() {
                        route.seen = route.seen.max(rev);
                    }
                    let fresh = match &*event {
                        Event::MessageRead {
                            user_id,
                            last_read_seq,
                            ..
                        } => advance(&mut route.markers, *user_id, *last_read_seq),
                        Event::MessageDelivered {
                            user_id,
                            delivered_seq,
                            ..
                        } => advance(&mut route.delivered, *user_id, *delivered_seq),
                        _ => true,
                    };
                    if !fresh {
                        // Passed on already (by the poller, or a repeated publish).
                        return;
                    }
                    match &*event {
                        // Only the senders' devices: O(their devices), not O(members).
                        Event::MessageDelivered { senders, .. } if !senders.is_empty() => senders
                            .iter()
                            .filter_map(|s| users.get(s))
                            .flat_map(|r| r.conns.iter())
                            .filter(|c| route.conns.contains(c))
                            .filter_map(|c| conns.get(c))
                            .map(|e| (e.tx.clone(), e.signals.clone()))
                            .collect(),
                        _ => queues(conns, route.conns.iter()),
                    }
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
            Topic::Presence => {
                let Event::Presence { presence, chat_ids } = &*event else {
                    return;
                };
                // Each connection sharing a chat with the user once, whatever the number of
                // chats shared: the cost is the user's contacts here, not their chats' sizes.
                let targets: Vec<mpsc::Sender<Item>> = {
                    let tables = self.tables();
                    let mut seen = HashSet::new();
                    chat_ids
                        .iter()
                        .filter_map(|chat_id| tables.chats.get(chat_id))
                        .flat_map(|route| route.conns.iter())
                        .filter(|conn| seen.insert(**conn))
                        .filter_map(|conn| tables.conns.get(conn))
                        .filter(|entry| entry.user_id != presence.user_id)
                        .map(|entry| entry.tx.clone())
                        .collect()
                };
                let live = Arc::new(Live::new(event));
                // Ephemeral: a full queue drops it rather than ending the connection (the next
                // change, or `/users/presence`, brings the dot up to date).
                for tx in targets {
                    let _ = tx.try_send(live.clone());
                }
            }
        }
    }

    /// Takes every presence change from one subscription to the presence subject.
    pub async fn feed_presence(self: &Arc<Self>) -> Result<(), String> {
        let stream = self.bus.subscribe(Topic::Presence).await?;
        self.bus.flush().await?;
        let task = self.forward(stream);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(())
    }

    /// Tells the connections of these sessions to close (the poller's path): only the
    /// connections of each session's user are looked at.
    fn end_sessions(&self, ended: &[EndedCommitted]) {
        let signals: Vec<Arc<Signals>> = {
            let tables = self.tables();
            ended
                .iter()
                .filter_map(|e| Some((e, tables.users.get(&e.user_id)?)))
                .flat_map(|(e, route)| {
                    route
                        .conns
                        .iter()
                        .filter_map(|c| tables.conns.get(c))
                        .filter(move |c| c.session_id == e.session_id)
                })
                .map(|c| c.signals.clone())
                .collect()
        };
        signals.iter().for_each(|s| s.ended.notify_one());
    }

    /// Reads the feed from the horizon `from` to the horizon now, and acts on it: nudges,
    /// reconciles, closes. Answers the horizon now, or `None` if a query failed (the next poll
    /// reads from `from` again; acting twice on a row is harmless).
    async fn poll_once(&self, from: Horizon) -> Option<Horizon> {
        let upto = self.polled(changes::horizon(&self.db).await)?;
        if upto <= from {
            if upto < from {
                // Only a different cluster behind the same URL (a restore) hands out older
                // ids: start over from its horizon.
                tracing::warn!(
                    from,
                    upto,
                    "the feed's horizon went back; reading from there"
                );
            }
            return Some(upto);
        }
        let db = &self.db;
        self.read_feed(
            Committed::start(from),
            |after| changes::committed(db, after, upto, FEED_PAGE),
            |rows| self.behind(Kind::Chat, latest(rows.iter().map(|r| (r.chat_id, r.rev)))),
        )
        .await?;
        self.read_feed(
            MemberCommitted::start(from),
            |after| changes::members_committed(db, after, upto, FEED_PAGE),
            |rows| {
                let moved = latest(rows.iter().map(|r| (r.user_id, r.member_rev)));
                self.behind(Kind::User, moved);
            },
        )
        .await?;
        self.read_feed(
            MarkerCommitted::start(from),
            |after| members::markers_committed(db, after, upto, FEED_PAGE),
            |rows| self.markers_moved(rows),
        )
        .await?;
        self.read_feed(
            DeliveredCommitted::start(from),
            |after| receipts::delivered_committed(db, after, upto, FEED_PAGE),
            |rows| self.delivered_moved(rows),
        )
        .await?;
        self.read_feed(
            EndedCommitted::start(from),
            |after| sessions::ended_committed(db, after, upto, FEED_PAGE),
            |rows| self.end_sessions(rows),
        )
        .await?;
        Some(upto)
    }

    /// Reads one feed from `start` up to the horizon `read` was given, a page of
    /// [`FEED_PAGE`] at a time (each page starts after the last row of the one before), and
    /// hands each page to `act`. `None` if a query failed.
    async fn read_feed<R, Fut>(
        &self,
        start: R,
        read: impl Fn(R) -> Fut,
        mut act: impl FnMut(&[R]),
    ) -> Option<()>
    where
        R: Copy,
        Fut: std::future::Future<Output = sqlx::Result<Vec<R>>>,
    {
        let mut after = start;
        loop {
            let rows = self.polled(read(after).await)?;
            Stats::add(&self.stats.feed_rows, rows.len() as u64);
            act(&rows);
            match rows.last() {
                Some(&last) if rows.len() as i64 == FEED_PAGE => after = last,
                _ => return Some(()),
            }
        }
    }

    /// Passes on the read markers of routed chats that moved further than their events said:
    /// a lost `message.read` reaches connected members within the poll bound, like a change.
    fn markers_moved(&self, rows: &[MarkerCommitted]) {
        self.recover_markers(
            rows,
            |r| (r.chat_id, r.user_id, r.last_read_seq),
            |route| &route.markers,
            |r, rev| Event::MessageRead {
                chat_id: r.chat_id,
                user_id: r.user_id,
                last_read_seq: r.last_read_seq,
                rev,
                hidden: r.hidden,
            },
            &self.stats.markers_recovered,
        );
    }

    /// The same for delivered markers, told to every connection of the chat (who sent what is
    /// not known here; the rare path).
    fn delivered_moved(&self, rows: &[DeliveredCommitted]) {
        self.recover_markers(
            rows,
            |r| (r.chat_id, r.user_id, r.delivered_seq),
            |route| &route.delivered,
            |r, rev| Event::MessageDelivered {
                chat_id: r.chat_id,
                user_id: r.user_id,
                delivered_seq: r.delivered_seq,
                rev,
                senders: Vec::new(),
            },
            &self.stats.delivered_recovered,
        );
    }

    /// One marker kind's recovery: each row, as (chat, user, seq), of a routed chat whose seq
    /// is past what the route has `seen` of that member becomes `event` at the route's rev,
    /// dispatched like a live event (which records it as seen), and is counted.
    fn recover_markers<R>(
        &self,
        rows: &[R],
        key: impl Fn(&R) -> (i64, i64, i64),
        seen: fn(&Route) -> &HashMap<i64, i64>,
        event: impl Fn(&R, i64) -> Event,
        recovered: &AtomicU64,
    ) {
        let missed: Vec<Event> = {
            let tables = self.tables();
            rows.iter()
                .filter_map(|row| {
                    let (chat_id, user_id, seq) = key(row);
                    let route = tables.chats.get(&chat_id)?;
                    let known = seen(route).get(&user_id).copied().unwrap_or_default();
                    (seq > known).then(|| event(row, route.seen))
                })
                .collect()
        };
        for event in missed {
            Stats::add(recovered, 1);
            self.dispatch(Arc::new(event));
        }
    }

    /// These messages (chat, seq) reached a device of `user_id` (see [`crate::receipts`]): one
    /// lock for a connection's whole batch.
    pub fn note_delivered(&self, user_id: i64, handed: impl IntoIterator<Item = (i64, i64)>) {
        let mut pending = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = pending.dropped;
        for (chat_id, seq) in handed {
            pending.note(chat_id, user_id, seq);
        }
        Stats::add(&self.stats.receipts_dropped, pending.dropped - dropped);
    }

    /// Every delivered note since the last call, for the keeper to write.
    pub fn take_delivered(&self) -> Vec<(i64, i64, i64)> {
        self.receipts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Notes from [`Hub::take_delivered`] that could not be written: written with the next.
    pub fn delivered_unwritten(&self, moves: &[(i64, i64, i64)]) {
        self.receipts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put_back(moves);
    }

    /// Counts a poller query, and its failure.
    fn polled<T>(&self, result: Result<T, sqlx::Error>) -> Option<T> {
        Stats::add(&self.stats.poll_queries, 1);
        result
            .inspect_err(|e| {
                Stats::add(&self.stats.poll_failures, 1);
                tracing::warn!(error = %e, "poll failed; retrying with backoff");
            })
            .ok()
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

    /// The changes of `chat_id` after `after_rev` (a page of [`CATCH_UP_PAGE`]), read once for
    /// every caller that asks for the same page while a read of it is under way. The read runs
    /// on a task of its own, so a caller that goes away cancels nothing for the others; the
    /// page is forgotten as soon as it is read.
    ///
    /// A caller joins a read only if the hub has seen nothing newer of the chat since the read
    /// was sent (every rev a connection hears of, from an event or the feed, passes through
    /// the hub first), so a shared page is never older than what the caller was told. A rev a
    /// connection read from Postgres itself may postdate a shared page; the feed then nudges
    /// it again within the poll bound. A chat not routed here is read for its caller alone.
    pub async fn catch_up(self: &Arc<Self>, chat_id: i64, after_rev: i64) -> CatchUp {
        let seen = self.tables().chats.get(&chat_id).map(|r| r.seen);
        let page = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match (seen, flights.get(&(chat_id, after_rev))) {
                (Some(seen), Some(flight)) if flight.seen == seen => {
                    Stats::add(&self.stats.catch_up_coalesced, 1);
                    flight.page.clone()
                }
                _ => {
                    Stats::add(&self.stats.catch_up_queries, 1);
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    // Sent while `flights` is locked: the read cannot land (and remove its
                    // entry) before the entry is in.
                    let page = self.read_page(chat_id, after_rev, id);
                    if let Some(seen) = seen {
                        let flight = Flight {
                            id,
                            seen,
                            page: page.clone(),
                        };
                        flights.insert((chat_id, after_rev), flight);
                    }
                    page
                }
            }
        };
        page.await
    }

    /// Starts one catch-up read; it removes its own entry from `flights` when it lands.
    fn read_page(
        self: &Arc<Self>,
        chat_id: i64,
        after_rev: i64,
        id: u64,
    ) -> Shared<BoxFuture<'static, CatchUp>> {
        let db = self.db.clone();
        let hub = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let page = changes::after(&db, chat_id, after_rev, CATCH_UP_PAGE).await;
            if let Some(hub) = hub.upgrade() {
                let mut flights = hub.flights.lock().unwrap_or_else(|e| e.into_inner());
                if flights
                    .get(&(chat_id, after_rev))
                    .is_some_and(|f| f.id == id)
                {
                    flights.remove(&(chat_id, after_rev));
                }
            }
            page.map(Arc::new).map_err(Arc::new)
        });
        async move {
            task.await
                .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::WorkerCrashed)))
        }
        .boxed()
        .shared()
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

/// Records `seq` as the highest marker seen of `user_id`; false if it is not past it (a repeat).
fn advance(seen: &mut HashMap<i64, i64>, user_id: i64, seq: i64) -> bool {
    let at = seen.entry(user_id).or_default();
    if seq <= *at {
        return false;
    }
    *at = seq;
    true
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

/// The highest value of each id among these rows (a chat's rev, a user's `member_rev`): one
/// nudge per chat however many of its changes a page holds.
fn latest(rows: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut latest: HashMap<i64, i64> = HashMap::new();
    for (id, value) in rows {
        let entry = latest.entry(id).or_insert(value);
        *entry = (*entry).max(value);
    }
    latest.into_iter().collect()
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

async fn poll_loop(hub: Weak<Hub>, interval: Duration, mut from: Horizon) {
    let mut backoff = 1;
    loop {
        tokio::time::sleep(interval * backoff).await;
        let Some(hub) = hub.upgrade() else { break };
        let started = std::time::Instant::now();
        let polled = hub.poll_once(from).await;
        metrics::histogram!("windi_relay_poll_duration_seconds").record(started.elapsed());
        backoff = match polled {
            Some(upto) => {
                from = upto;
                Stats::add(&hub.stats.polls, 1);
                // time() minus this is how stale the poller's view of Postgres is.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics::gauge!("windi_relay_poll_last_success_timestamp_seconds").set(now);
                1
            }
            None => (backoff * 2).min(MAX_POLL_BACKOFF),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_the_feed_nudges_each_chat_once_at_its_highest_rev() {
        let mut rows = latest([(7, 3), (9, 1), (7, 5), (7, 4), (9, 2)].into_iter());
        rows.sort_unstable();
        assert_eq!(rows, vec![(7, 5), (9, 2)]);
        assert!(latest(std::iter::empty()).is_empty());
    }
}
