//! Searching messages: the store's query, steered by how common the searched words are.
//!
//! The word statistics ([`WordStats`], the most common words `ANALYZE` found) are read once
//! and kept for [`STATS_FOR`] per process: they move only as fast as autovacuum re-analyzes
//! `messages`, and reading them costs more than the search they steer.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::PgPool;

use crate::{
    domain::{
        error::Result,
        model::SearchPage,
        search::{self, Query, WordStats},
    },
    store::search::{self as query, Scope, Tuning},
};

/// How long a process keeps the word statistics before reading them again.
pub const STATS_FOR: Duration = Duration::from_secs(600);

/// The search of a process: its cached word statistics.
#[derive(Debug, Default)]
pub struct Search {
    stats: Mutex<Option<(Instant, Arc<WordStats>)>>,
}

impl Search {
    /// A page of matches of `query` in `scope` ([`query::messages`]).
    pub async fn messages(&self, db: &PgPool, query: &Query, scope: Scope) -> Result<SearchPage> {
        let stats = self.stats(db).await?;
        let expected = search::expected_matches(&stats, query);
        Ok(query::messages(
            db,
            query,
            scope,
            (expected, stats.messages),
            Tuning::default(),
        )
        .await?)
    }

    /// The statistics, read again when older than [`STATS_FOR`]. Requests that find them
    /// stale at once may each read them; the last one read stays.
    async fn stats(&self, db: &PgPool) -> Result<Arc<WordStats>> {
        if let Some((read, stats)) = &*lock(&self.stats)
            && read.elapsed() < STATS_FOR
        {
            return Ok(stats.clone());
        }
        let fresh = Arc::new(query::word_stats(db).await?);
        *lock(&self.stats) = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
