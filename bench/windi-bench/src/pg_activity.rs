//! How much work Postgres did for a benchmark database, read from its own statistics, so that
//! the same measure applies to any relay, however it counts (or does not count) its queries.
//!
//! `pg_stat_database.xact_commit + xact_rollback` counts transactions; every statement sent
//! outside a transaction (all of the relay's reads, the poller's included) is one. Postgres 15
//! publishes a backend's counts when it goes idle, at most once a second, and an idle backend's
//! last counts up to 10 s later (`PGSTAT_MIN_INTERVAL`, `PGSTAT_IDLE_INTERVAL`). So a rate is
//! only meaningful over windows of a second or more, and a count of what one event caused is
//! read over a window of more than 10 s, less a window of the same length without the event.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

/// Longer than Postgres 15 may hold an idle backend's counts before publishing them.
pub const FLUSH_WINDOW: Duration = Duration::from_secs(11);

/// Transactions committed or rolled back in the pool's database so far (this query included).
pub async fn transactions(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
         WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?)
}

/// One reading of [`Sampler`].
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// As [`transactions`].
    pub transactions: i64,
    /// Backends of the database running a statement (the sampler's own included).
    pub active: i64,
}

/// Reads the database's transaction count and active backends every [`Sampler::EVERY`] on a
/// connection of its own, until [`Sampler::stop`].
#[derive(Debug)]
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub const EVERY: Duration = Duration::from_millis(100);
    /// Bounds the samples kept: ten minutes' worth.
    const MAX_SAMPLES: usize = 6_000;

    pub fn start(db: PgPool) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Self::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while samples.len() < Self::MAX_SAMPLES {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let read: Result<(i64, i64), _> = sqlx::query_as(
                    "SELECT (d.xact_commit + d.xact_rollback)::bigint,
                            (SELECT count(*) FROM pg_stat_activity a
                             WHERE a.datname = d.datname AND a.state = 'active')
                     FROM pg_stat_database d WHERE d.datname = current_database()",
                )
                .fetch_one(&db)
                .await;
                if let Ok((transactions, active)) = read {
                    samples.push(Sample {
                        at: Instant::now(),
                        transactions,
                        active,
                    });
                }
            }
            db.close().await;
            samples
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// The highest transaction rate (per second) over any `window` of the samples (from a sample
/// to the first one at least `window` later); over all of them if they span less; 0 for
/// fewer than two.
pub fn peak_rate(samples: &[Sample], window: Duration) -> f64 {
    if let (Some(first), Some(last)) = (samples.first(), samples.last())
        && last.at.duration_since(first.at) < window
    {
        let secs = last.at.duration_since(first.at).as_secs_f64();
        return if secs > 0.0 {
            (last.transactions - first.transactions) as f64 / secs
        } else {
            0.0
        };
    }
    let mut peak = 0.0_f64;
    let mut j = 0;
    for (i, from) in samples.iter().enumerate() {
        j = j.max(i);
        while j < samples.len() && samples[j].at.duration_since(from.at) < window {
            j += 1;
        }
        let Some(to) = samples.get(j) else { break };
        let secs = to.at.duration_since(from.at).as_secs_f64();
        peak = peak.max((to.transactions - from.transactions) as f64 / secs);
    }
    peak
}

/// Transactions from the first sample to the last.
pub fn total(samples: &[Sample]) -> i64 {
    match (samples.first(), samples.last()) {
        (Some(first), Some(last)) => last.transactions - first.transactions,
        _ => 0,
    }
}

/// The most backends running a statement at once among the samples.
pub fn peak_active(samples: &[Sample]) -> i64 {
    samples.iter().map(|s| s.active).max().unwrap_or(0)
}

/// `name` in the relay's `/health` of `after` less that of `before` (0 when `before` lacks
/// it: pass `{}` for a relay started afresh); `None` when this relay does not count it (an
/// earlier revision's).
pub fn counter_delta(before: &Value, after: &Value, name: &str) -> Option<f64> {
    let before = before[name].as_u64().unwrap_or(0);
    Some(after[name].as_u64()?.saturating_sub(before) as f64)
}

/// The relay's counters that say how it recovered, as `name delta` pairs for a note.
pub fn recovery_counters(before: &Value, after: &Value) -> String {
    const NAMES: &[&str] = &[
        "catch_up_queries",
        "catch_up_coalesced",
        "backfilled",
        "gaps",
        "nudges",
        "reconciles",
        "polls",
        "poll_queries",
        "feed_rows",
    ];
    NAMES
        .iter()
        .filter_map(|n| Some(format!("{n} {}", counter_delta(before, after, n)?)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_rate_is_the_steepest_window_of_the_samples() {
        let t0 = Instant::now();
        let at = |ms: u64, transactions: i64| Sample {
            at: t0 + Duration::from_millis(ms),
            transactions,
            active: 1,
        };
        // 10/s, then 100 in one second, then flat.
        let samples = [at(0, 0), at(1000, 10), at(2000, 110), at(3000, 110)];
        assert_eq!(peak_rate(&samples, Duration::from_secs(1)), 100.0);
        assert_eq!(peak_rate(&samples[..1], Duration::from_secs(1)), 0.0);
        // Shorter than the window: the rate over what there is.
        let short = [at(0, 0), at(500, 50)];
        assert_eq!(peak_rate(&short, Duration::from_secs(1)), 100.0);
    }

    #[test]
    fn a_counter_an_older_relay_lacks_has_no_delta() {
        let before = serde_json::json!({"gaps": 1, "catch_up_queries": 2});
        let after = serde_json::json!({"gaps": 4, "catch_up_queries": 3});
        assert_eq!(counter_delta(&before, &after, "gaps"), Some(3.0));
        assert_eq!(counter_delta(&before, &after, "polls"), None);
        assert_eq!(
            recovery_counters(&before, &after),
            "catch_up_queries 1, gaps 3"
        );
    }
}
