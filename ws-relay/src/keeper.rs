//! The relay's writes to Postgres, I/O, once a second: which users' first connection opened or
//! last one closed here since the last write ([`crate::presence::Local`]), with the relay's
//! heartbeat every [`HEARTBEAT`], and the delivered receipts of what its connections were
//! handed ([`crate::receipts`]), each moved marker then published (`message.delivered`). Every
//! beat it also reaps relays that stopped beating (any relay may; each dead one is reaped
//! once). On stop it writes the last receipts and says goodbye: its rows go at once rather than
//! [`EXPIRY`] later.
//!
//! A relay that dies loses at most the last second's delivered notes: a delivered marker covers
//! every message up to it, so the member's next delivery (or their reading) covers them.
//!
//! The heartbeat is the whole of the guarantee: a relay that dies without a goodbye (killed,
//! frozen, cut off from Postgres) stops beating, and its users read offline once its last beat
//! is older than [`EXPIRY`], whoever reaps it and whenever.
//!
//! [`EXPIRY`]: windi_shared::domain::presence::EXPIRY

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::time::Instant;
use windi_shared::{
    domain::presence::HEARTBEAT,
    events::{Bus, Event},
    store::{presence as store, receipts},
};

use crate::hub::Hub;

/// How often the changes of connected users are written: the longest a connection or a
/// disconnection waits before others can see it.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Tells every relay what these users' presence is now, with their chats: each relay passes it
/// to its connections in those chats. Users who hide theirs are not announced. (The keeper's
/// writes, and a connection whose client said it is away or back.)
pub async fn announce(db: &PgPool, bus: &Bus, mut users: Vec<i64>) -> sqlx::Result<()> {
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return Ok(());
    }
    let shown = store::of_users(db, &users).await?;
    let mut chats = store::chats_of(db, &users).await?;
    for presence in shown {
        if let Some(chat_ids) = chats.remove(&presence.user_id) {
            bus.publish_ephemeral(Event::Presence { presence, chat_ids })
                .await;
        }
    }
    Ok(())
}

/// One relay's presence writer.
#[derive(Debug)]
pub struct Keeper {
    /// This relay's name in `relays`: host, process and a random part, so a restarted relay is
    /// a new one and a stalled one that comes back learns it was reaped.
    pub relay_id: String,
    hub: Arc<Hub>,
    db: PgPool,
    /// Where changes are announced to every relay (the presence subject).
    bus: Bus,
}

impl Keeper {
    pub fn new(hub: Arc<Hub>, db: PgPool, bus: Bus) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned());
        let random: u64 = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        Self {
            relay_id: format!("{host}-{}-{random:016x}", std::process::id()),
            hub,
            db,
            bus,
        }
    }

    /// Writes until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat: Option<Instant> = None;
        loop {
            tick.tick().await;
            let beat_due = last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT);
            let mut changed = match self.write(beat_due).await {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write presence; trying again");
                    continue;
                }
            };
            if beat_due {
                last_beat = Some(Instant::now());
                match store::reap(&self.db).await {
                    Ok(reaped) => changed.extend(reaped),
                    Err(e) => tracing::warn!(error = %e, "cannot reap dead relays"),
                }
            }
            if let Err(e) = self.announce(changed).await {
                tracing::warn!(error = %e, "cannot announce presence changes");
            }
            self.write_receipts().await;
        }
    }

    /// Writes the delivered notes since the last write in one statement and publishes each
    /// marker that moved; a failed write keeps them for the next.
    pub async fn write_receipts(&self) {
        let moves = self.hub.take_delivered();
        if moves.is_empty() {
            return;
        }
        match receipts::record_delivered(&self.db, &moves).await {
            Ok(moved) => {
                let events = moved
                    .into_iter()
                    .map(|m| Event::MessageDelivered {
                        chat_id: m.chat_id,
                        user_id: m.user_id,
                        delivered_seq: m.delivered_seq,
                        rev: m.rev,
                        senders: m.senders,
                    })
                    .collect::<Vec<_>>();
                if !events.is_empty() {
                    self.bus.publish(events).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write delivered receipts; trying again");
                self.hub.delivered_unwritten(&moves);
            }
        }
    }

    /// One write: the changes since the last, after a beat (always: a change's row needs its
    /// relay's row, which a reap may have taken). Nothing to write and no beat due: nothing.
    /// Answers the users whose rows changed.
    async fn write(&self, beat_due: bool) -> sqlx::Result<Vec<i64>> {
        let changes = self.hub.presence_changes();
        if changes.is_empty() && !beat_due {
            return Ok(Vec::new());
        }
        let written = async {
            let mut tx = self.db.begin().await?;
            let new = store::beat(&mut *tx, &self.relay_id).await?;
            if new {
                // First beat, or reaped while stalled: every user here, not only the changes.
                let everyone = self.hub.presence_users();
                store::connected(&mut *tx, &self.relay_id, &everyone).await?;
            }
            let side = |connected: bool| -> Vec<i64> {
                changes
                    .iter()
                    .filter(|&&(_, c)| c == connected)
                    .map(|&(u, _)| u)
                    .collect()
            };
            let (up, down) = (side(true), side(false));
            if !up.is_empty() {
                store::connected(&mut *tx, &self.relay_id, &up).await?;
            }
            if !down.is_empty() {
                store::disconnected(&mut *tx, &self.relay_id, &down).await?;
            }
            tx.commit().await
        }
        .await;
        if written.is_err() {
            self.hub.presence_unwritten(&changes);
        }
        written.map(|()| changes.iter().map(|&(user_id, _)| user_id).collect())
    }

    async fn announce(&self, users: Vec<i64>) -> sqlx::Result<()> {
        announce(&self.db, &self.bus, users).await
    }

    /// The relay stops: its rows go now, its users last seen now, and every relay tells
    /// their contacts (as a reap would, only sooner).
    pub async fn goodbye(&self) {
        match store::leave(&self.db, &self.relay_id).await {
            Ok(left) => {
                if let Err(e) = self.announce(left).await {
                    tracing::warn!(error = %e, "cannot announce this relay's users leaving");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove this relay's presence; it expires"),
        }
    }
}
