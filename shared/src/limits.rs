//! Per-user rate limits: message writes (sends over HTTP and WebSocket alike, edits, deletions,
//! reactions), group creation and membership changes, and typing. On by default; each answers
//! 429 `rate_limited` with `Retry-After` before anything is written.
//!
//! The limiter is `governor`'s GCRA, keyed by user id: `per_second` sustained with bursts of
//! `burst`. The state lives in the process, so with several API processes (or Lambda
//! instances) each enforces the limit on its own: a user spread over N processes gets up to N
//! times the rate. The deployment's real ceiling is API Gateway's throttling in front
//! (`template.yaml`), which this complements per user.
//!
//! Every limit counts time on a [`LimitClock`]: the machine's in production, one a test holds
//! and moves in tests, so that what refills between two requests is what the test says and not
//! what a slow machine lets pass.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use governor::clock::FakeRelativeClock;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, QuantaClock, QuantaInstant, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::keyed::DefaultKeyedStateStore,
};

use crate::error::{Error, Result};

/// The time every limit counts in.
///
/// An enum rather than a type parameter: [`Limits`] and [`LoginGuard`] live in the one
/// `AppState` every handler and the relay share, and a parameter would spread to all of them
/// for the sake of tests. The match costs a predictable branch per check, next to the clock
/// read and the map lookup each check makes anyway.
#[derive(Debug, Clone)]
pub enum LimitClock {
    /// The machine's monotonic clock (`quanta`, governor's default); production's.
    Real {
        clock: QuantaClock,
        /// What this clock's readings count from.
        start: QuantaInstant,
    },
    /// Time that stands still until the test holding the clock moves it
    /// ([`FakeRelativeClock::advance`]).
    Manual(FakeRelativeClock),
}

impl Default for LimitClock {
    fn default() -> Self {
        let clock = QuantaClock::default();
        let start = clock.now();
        Self::Real { clock, start }
    }
}

impl From<FakeRelativeClock> for LimitClock {
    fn from(clock: FakeRelativeClock) -> Self {
        Self::Manual(clock)
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        match self {
            Self::Real { clock, start } => clock.now().duration_since(*start),
            Self::Manual(clock) => clock.now(),
        }
    }
}

/// A limiter keyed by `K`, counting on a [`LimitClock`].
type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, LimitClock, NoOpMiddleware<Nanos>>;

/// Checks between two sweeps of idle users' state (which would otherwise grow with every
/// user ever limited).
const SWEEP_EVERY: u64 = 10_000;

/// One limit: a quota per user.
pub struct Limit {
    what: &'static str,
    limiter: KeyedLimiter<i64>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit").field("what", &self.what).finish()
    }
}

impl Limit {
    /// `count` per `period` sustained, `burst` at once, on the machine's clock.
    pub fn new(what: &'static str, count: u32, period: Duration, burst: u32) -> Self {
        Self::counting_on(LimitClock::default(), what, count, period, burst)
    }

    /// [`Limit::new`] counting time on `clock`.
    pub fn counting_on(
        clock: LimitClock,
        what: &'static str,
        count: u32,
        period: Duration,
        burst: u32,
    ) -> Self {
        let count = NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(count);
        let quota = Quota::with_period(period / count.get())
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(burst);
        Self {
            what,
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one unit of `user_id`'s quota, or answers 429 with how long to wait.
    pub fn check(&self, user_id: i64) -> Result<()> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&user_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            Error::TooManyRequests {
                code: "rate_limited",
                detail: format!(
                    "too many {}; retry in {:.1} s",
                    self.what,
                    wait.as_secs_f64()
                ),
                retry_after: wait,
            }
        })
    }
}

/// How much each user may do; from `LIMIT_*` variables (see `.env.example`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub sends_per_second: u32,
    pub sends_burst: u32,
    pub groups_per_minute: u32,
    pub groups_burst: u32,
    pub typing_per_second: u32,
    pub typing_burst: u32,
}

impl Default for LimitSettings {
    /// Far above what a person types, far below what a script floods: 20 messages a second
    /// with bursts of 60 (a client flushing its outbox after a reconnect), 10 group changes a
    /// minute with bursts of 20, typing 5 a second with bursts of 10.
    fn default() -> Self {
        Self {
            sends_per_second: 20,
            sends_burst: 60,
            groups_per_minute: 10,
            groups_burst: 20,
            typing_per_second: 5,
            typing_burst: 10,
        }
    }
}

impl LimitSettings {
    /// Limits high enough never to apply (for benchmarks and load tests, which say so).
    pub fn unlimited() -> Self {
        let many = 1_000_000_000;
        Self {
            sends_per_second: many,
            sends_burst: many,
            groups_per_minute: many,
            groups_burst: many,
            typing_per_second: many,
            typing_burst: many,
        }
    }
}

/// Every limit of a process, shared by its handlers and its relay.
#[derive(Debug, Clone)]
pub struct Limits {
    pub sends: Arc<Limit>,
    pub groups: Arc<Limit>,
    pub typing: Arc<Limit>,
}

impl Limits {
    /// The limits `s` on the machine's clock.
    pub fn new(s: LimitSettings) -> Self {
        Self::counting_on(LimitClock::default(), s)
    }

    /// The limits `s`, all counting time on `clock`.
    pub fn counting_on(clock: LimitClock, s: LimitSettings) -> Self {
        let second = Duration::from_secs(1);
        let limit = |what, count, period, burst| {
            Arc::new(Limit::counting_on(
                clock.clone(),
                what,
                count,
                period,
                burst,
            ))
        };
        Self {
            sends: limit("messages", s.sends_per_second, second, s.sends_burst),
            groups: limit(
                "group changes",
                s.groups_per_minute,
                Duration::from_secs(60),
                s.groups_burst,
            ),
            typing: limit(
                "typing notices",
                s.typing_per_second,
                second,
                s.typing_burst,
            ),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(LimitSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_and_the_next_one_waits_until_one_cell_came_back() {
        // Time stands still unless moved here: nothing comes back while the checks run.
        let clock = FakeRelativeClock::default();
        let limit = Limit::counting_on(
            clock.clone().into(),
            "messages",
            20,
            Duration::from_secs(1),
            5,
        );
        for _ in 0..5 {
            assert!(limit.check(1).is_ok());
        }
        let Err(Error::TooManyRequests { retry_after, .. }) = limit.check(1) else {
            panic!("the sixth passed");
        };
        assert_eq!(retry_after, Duration::from_millis(50));
        assert!(
            limit.check(2).is_ok(),
            "another user has a quota of their own"
        );
        clock.advance(retry_after - Duration::from_nanos(1));
        assert!(limit.check(1).is_err(), "a cell came back early");
        clock.advance(Duration::from_nanos(1));
        assert!(limit.check(1).is_ok(), "the cell did not come back");
        assert!(limit.check(1).is_err(), "more than one cell came back");
    }

    #[test]
    fn the_machines_clock_counts_from_its_creation_and_moves_on_its_own() {
        let clock = LimitClock::default();
        let first = clock.now();
        assert!(Duration::from(first) < Duration::from_secs(1), "{first:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while clock.now() == first {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stood still"
            );
        }
        assert!(clock.now() > first);
    }
}

/// Failed logins an account may have within [`LOGIN_WINDOW`] before its logins are refused.
pub const ACCOUNT_FAILURES: u32 = 5;
/// Failed logins one client address may have within [`LOGIN_WINDOW`], over all accounts: high
/// enough for a NAT full of people mistyping, low enough to stop a spray over many accounts.
pub const ADDRESS_FAILURES: u32 = 100;
/// The window failures are counted in, and how long the first lockout lasts.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest lockout: each lockout of the same key within a day doubles the last.
const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 3600);

/// Guards logins against guessing: failures are counted per account (the email, as typed,
/// lowercased: unknown emails count like known ones, so the answer reveals nothing) and per
/// client address. After [`ACCOUNT_FAILURES`] failures of an account within [`LOGIN_WINDOW`],
/// its logins answer 429 `too_many_attempts`, even with the right password, for the window;
/// a repeat lockout lasts twice as long. An address is locked the same way after
/// [`ADDRESS_FAILURES`]; other accounts from it are unaffected until then.
///
/// The counting is `governor`'s GCRA (one failure's cell comes back every window / limit); it
/// has no way to look at a key's budget without spending it, and a lockout must be looked at
/// before every attempt, right password or not — so a lockout, once the limiter refuses a
/// failure, is kept here, in a map that holds only locked keys. Per process, like the other
/// limits.
pub struct LoginGuard {
    accounts: KeyedLimiter<String>,
    addresses: KeyedLimiter<String>,
    /// The limiters' clock, which lockouts are timed on too.
    clock: LimitClock,
    locks: std::sync::Mutex<std::collections::HashMap<String, Lockout>>,
}

#[derive(Debug, Clone, Copy)]
struct Lockout {
    until: Nanos,
    /// The length of the last lockout, doubled by the next.
    length: Duration,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard").finish_non_exhaustive()
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::counting_on(LimitClock::default())
    }
}

impl LoginGuard {
    /// A guard counting failures and timing lockouts on `clock`.
    pub fn counting_on(clock: LimitClock) -> Self {
        // `limit - 1` cells: the limit-th failure is the one the limiter refuses.
        let quota = |limit: u32| {
            let cells = NonZeroU32::new(limit.saturating_sub(1).max(1)).unwrap_or(NonZeroU32::MIN);
            Quota::with_period(LOGIN_WINDOW / limit.max(1))
                .unwrap_or_else(|| Quota::per_minute(cells))
                .allow_burst(cells)
        };
        let limiter = |limit| {
            RateLimiter::new(
                quota(limit),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        };
        Self {
            accounts: limiter(ACCOUNT_FAILURES),
            addresses: limiter(ADDRESS_FAILURES),
            clock,
            locks: std::sync::Mutex::default(),
        }
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Lockout>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before an attempt: 429 if the account or the address is locked out.
    pub fn check(&self, account: &str, address: &str) -> Result<()> {
        let now = self.clock.now();
        let locks = self.locks();
        let wait = [account_key(account), address_key(address)]
            .iter()
            .filter_map(|key| locks.get(key))
            .filter(|lock| lock.until > now)
            .map(|lock| Duration::from(lock.until.duration_since(now)))
            .max();
        match wait {
            Some(wait) => Err(Error::TooManyRequests {
                code: "too_many_attempts",
                detail: format!(
                    "too many failed logins; try again in {} minutes",
                    wait.as_secs().div_ceil(60)
                ),
                retry_after: wait,
            }),
            None => Ok(()),
        }
    }

    /// After a failed attempt: counts it, and locks what passed its limit.
    pub fn failed(&self, account: &str, address: &str) {
        let account = account_key(account);
        let address = address_key(address);
        let over: Vec<&String> = [(&account, &self.accounts), (&address, &self.addresses)]
            .into_iter()
            .filter(|(key, limiter)| limiter.check_key(key).is_err())
            .map(|(key, _)| key)
            .collect();
        if over.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut locks = self.locks();
        // Forget lockouts over a day old (their doubling with them).
        locks.retain(|_, lock| lock.until + MAX_LOCKOUT > now);
        for key in over {
            let length = match locks.get(key) {
                Some(last) => (last.length * 2).min(MAX_LOCKOUT),
                None => LOGIN_WINDOW,
            };
            locks.insert(
                key.clone(),
                Lockout {
                    until: now + length,
                    length,
                },
            );
        }
    }
}

fn account_key(email: &str) -> String {
    format!("account:{}", email.trim().to_lowercase())
}

fn address_key(address: &str) -> String {
    format!("address:{address}")
}
