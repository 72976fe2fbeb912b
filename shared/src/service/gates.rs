//! The queue in front of each chat's lock: how many of this process's requests may hold a
//! pooled connection while they wait for one chat.
//!
//! Part of the write path ([`crate::service::write`]) but a module of its own, because the
//! process's [`AppState`](crate::AppState) holds the gates while every write takes the state:
//! kept in `write`, the two would import each other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::error::{Error, Result};

/// How many of this process's requests may be inside Postgres waiting on one chat's lock.
///
/// A chat's changes queue on its row lock in Postgres, each holding a pooled connection while
/// it waits; one long holder (or a flood into one chat) would otherwise take the whole pool,
/// and every other user's request would answer 503. The gate keeps the queue for one chat
/// in the process, where waiting costs no connection: at most a quarter of the pool (at least
/// 4) requests of a chat hold connections at once. Changes of one chat run one at a time
/// anyway, so a few in Postgres keep its lock busy; the rest wait here, up to the lock
/// timeout, and then answer 503 `busy` like a request that waited in Postgres.
#[derive(Debug)]
pub struct ChatGates {
    per_chat: usize,
    wait: Duration,
    open: Mutex<HashMap<i64, Arc<Semaphore>>>,
}

impl ChatGates {
    /// `per_chat` requests of one chat in Postgres at once; a request waits `wait` for its turn.
    fn new(per_chat: usize, wait: Duration) -> Self {
        Self {
            per_chat: per_chat.max(1),
            wait,
            open: Mutex::default(),
        }
    }

    /// For a pool of `pool_size`: a quarter of it per chat, at least 4.
    pub(crate) fn for_pool(pool_size: u32, wait: Duration) -> Self {
        Self::new((pool_size as usize / 4).max(4), wait)
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Semaphore>>> {
        // The map stays consistent whatever a panicking holder was doing: take it over.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `chat_id`'s turn; 503 `busy` if it does not come within the wait.
    pub async fn enter(self: &Arc<Self>, chat_id: i64) -> Result<Pass> {
        let gate = self
            .gates()
            .entry(chat_id)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_chat)))
            .clone();
        // Made before the wait, so a request that gives up still drops the chat's entry.
        let mut pass = Pass {
            gates: self.clone(),
            chat_id,
            gate: gate.clone(),
            permit: None,
        };
        match tokio::time::timeout(self.wait, gate.acquire_owned()).await {
            Ok(Ok(permit)) => {
                pass.permit = Some(permit);
                Ok(pass)
            }
            _ => {
                metrics::counter!("windi_chat_gate_timeouts_total").increment(1);
                Err(Error::Unavailable(
                    "busy: too many changes of this chat at once; nothing was changed, retry in \
                     a few seconds"
                        .into(),
                ))
            }
        }
    }
}

/// A request's turn at one chat (see [`ChatGates`]); dropping it lets the next one in.
#[derive(Debug)]
pub struct Pass {
    gates: Arc<ChatGates>,
    chat_id: i64,
    gate: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut open = self.gates.gates();
        drop(self.permit.take());
        // Every handle on a gate is taken under the map's lock: with only the map's and ours
        // left, no one is inside or waiting, and the chat's entry can go.
        if Arc::strong_count(&self.gate) == 2 {
            open.remove(&self.chat_id);
        }
    }
}
