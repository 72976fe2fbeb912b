//! Rate limits, on by default; each answers 429 with `Retry-After` before anything is written.
//!
//! - Per user: message writes (sends over HTTP and WebSocket alike, edits, deletions,
//!   reactions), group creation and membership changes, and typing (`rate_limited`).
//! - Per client address: requests that can tell whether an email has an account —
//!   registrations and exact-email searches (`rate_limited`, [`Limits::email_lookups`]).
//! - Failed logins, per account and per client address ([`LoginGuard`], `too_many_attempts`).
//!
//! The per-user limits are `governor`'s GCRA, keyed by user id: `per_second` sustained with
//! bursts of `burst`. What is keyed by something an unauthenticated client chooses (an email
//! typed at login, a client address) is counted with the same rule in a [`Table`] instead:
//! fixed-size keys (a hash of the email, an IPv6 address's /64), swept of what expired, and at
//! most [`MAX_TRACKED`] entries a table, so no flood of made-up emails or addresses can grow a
//! process by more than about 11 MiB.
//!
//! The state lives in the process, so with several API processes (or Lambda instances) each
//! enforces the limits on its own: a user spread over N processes gets up to N times the rate.
//! The deployment's real ceiling is API Gateway's throttling in front (`template.yaml`), which
//! this complements per user and per address.
//!
//! Every limit counts time on a [`LimitClock`]: the machine's in production, one a test holds
//! and moves in tests, so that what refills between two requests is what the test says and not
//! what a slow machine lets pass.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, MutexGuard,
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
use sha2::{Digest, Sha256};

use crate::{
    config::LimitSettings,
    domain::{
        error::{Error, Result},
        model::MAX_EMAIL_CHARS,
    },
};

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
    /// `count` per `period` sustained, `burst` at once, counting time on `clock`.
    fn counting_on(
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
            rate_limited(
                self.what,
                not_until.wait_time_from(self.limiter.clock().now()),
            )
        })
    }
}

/// The 429 of a spent limit.
fn rate_limited(what: &str, wait: Duration) -> Error {
    Error::TooManyRequests {
        code: "rate_limited",
        detail: format!("too many {what}; retry in {:.1} s", wait.as_secs_f64()),
        retry_after: wait,
    }
}

/// Every limit of a process, shared by its handlers and its relay.
#[derive(Debug, Clone)]
pub struct Limits {
    pub sends: Arc<Limit>,
    pub groups: Arc<Limit>,
    pub typing: Arc<Limit>,
    pub searches: Arc<Limit>,
    /// Requests whose answer tells whether an email has an account (`POST /auth/register`,
    /// `GET /users/search` with an `@`), per client address: one budget for both, since either
    /// serves to test a list of emails.
    pub email_lookups: Arc<AddressLimit>,
    /// See [`LimitSettings::trusted_proxy_hops`].
    pub trusted_proxy_hops: u8,
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
            searches: limit("searches", s.searches_per_second, second, s.searches_burst),
            email_lookups: Arc::new(AddressLimit::counting_on(
                clock.clone(),
                "registrations and email searches from this address",
                s.email_lookups_per_minute,
                Duration::from_secs(60),
                s.email_lookups_burst,
            )),
            trusted_proxy_hops: s.trusted_proxy_hops,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(LimitSettings::default())
    }
}

/// Most entries one [`Table`] holds: 2.1 MiB a table when full (65,536 slots of 33 bytes: a
/// 16-byte key, 16 bytes of state at most, a control byte), 11 MiB for the five a process has
/// (the login guard's four, [`Limits::email_lookups`]). Far above the distinct emails and
/// addresses that fail a login in 15 minutes on any deployment windi is built for; a flood
/// beyond it evicts, it does not grow (see [`Table`]).
const MAX_TRACKED: usize = 50_000;

/// The least time between two sweeps of a [`Table`] (a sweep walks the whole table), on the
/// limits' clock. A full table also sweeps when a new key finds it full.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Nanoseconds of `d`, saturating (the tables count time in plain `u64` nanoseconds).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The GCRA the per-user limits get from `governor`, for the [`Table`]s: one cell comes back
/// every `interval` (ns), at most `burst` are held.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: u64,
    burst: u64,
}

impl Gcra {
    /// `count` cells every `period`, at most `burst` at once (each at least 1).
    fn new(count: u32, period: Duration, burst: u32) -> Self {
        Self {
            interval: nanos(period / count.max(1)).max(1),
            burst: u64::from(burst.max(1)),
        }
    }

    /// Spends a cell of a key whose theoretical arrival time is `tat` (`None`: never seen, or
    /// forgotten): the key's new `tat`, or how long until a cell comes back.
    fn spend(self, tat: Option<u64>, now: u64) -> std::result::Result<u64, Duration> {
        let ahead = tat.unwrap_or(now).saturating_sub(now);
        let tolerance = self.interval.saturating_mul(self.burst - 1);
        if ahead > tolerance {
            return Err(Duration::from_nanos(ahead - tolerance));
        }
        Ok(now.saturating_add(ahead).saturating_add(self.interval))
    }
}

/// What a [`Table`] entry must tell: when it stops mattering.
trait Expiring {
    /// From when on (ns on the limits' clock) the entry tells no more than its absence.
    fn expires(&self) -> u64;
}

/// A key's theoretical arrival time ([`Gcra`]): past it, the key is as good as new.
#[derive(Debug, Clone, Copy)]
struct Tat(u64);

impl Expiring for Tat {
    fn expires(&self) -> u64 {
        self.0
    }
}

/// State per key, for keys an unauthenticated client chooses, in bounded memory:
///
/// - a key is 16 bytes whatever it stands for (see [`account_key`], [`address_key`]);
/// - what expired is swept at most every [`SWEEP_INTERVAL`] (when its owner counts something:
///   only counting grows a table) and the map's memory given back when most of it went;
/// - at most `capacity` entries. A new key that finds the table full sweeps it; if that frees
///   less than an eighth of it, the entries that expire soonest are evicted until an eighth is
///   free. For failure counts those are the keys with the fewest recent failures: a flood of
///   made-up keys pushes out its own kind before an account close to its limit. Evicting an
///   eighth at once makes the O(n) walk rare: O(1) per insert, amortised.
///
/// Not `governor`: its keyed state has no bound on entries and no way to evict one.
struct Table<V> {
    entries: HashMap<u128, V>,
    capacity: usize,
    /// When the table was last swept.
    swept: u64,
}

impl<V: Expiring> Table<V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            swept: 0,
        }
    }

    fn get(&self, key: u128) -> Option<&V> {
        self.entries.get(&key)
    }

    /// Sweeps the table if it was not swept in the last [`SWEEP_INTERVAL`].
    fn sweep_when_due(&mut self, now: u64) {
        if now.saturating_sub(self.swept) >= nanos(SWEEP_INTERVAL) {
            self.sweep(now);
        }
    }

    /// Sets `key`'s entry, making room first when the key is new and the table full.
    fn insert(&mut self, key: u128, value: V, now: u64) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.sweep(now);
            let keep = self.capacity - self.capacity.div_ceil(8);
            if self.entries.len() > keep {
                self.evict_soonest(self.entries.len() - keep);
            }
        }
        self.entries.insert(key, value);
    }

    /// Forgets what expired.
    fn sweep(&mut self, now: u64) {
        self.keep(|entry| entry.expires() > now);
        self.swept = now;
    }

    /// Forgets the `n` entries (`0 < n <= len`) that expire soonest.
    fn evict_soonest(&mut self, n: usize) {
        let mut expiries: Vec<u64> = self.entries.values().map(Expiring::expires).collect();
        let (_, &mut last, _) = expiries.select_nth_unstable(n - 1);
        // Entries expiring exactly at `last` go only as many as it takes to make `n`.
        let mut ties = n - expiries.iter().filter(|&&e| e < last).count();
        self.keep(|entry| match entry.expires() {
            e if e < last => false,
            e if e == last && ties > 0 => {
                ties -= 1;
                false
            }
            _ => true,
        });
    }

    /// Keeps the entries `keep` says, in a map made for them. Not `retain`: a removed entry
    /// leaves a tombstone that counts as used until the map is rehashed, and a map kept near
    /// its capacity by evictions would double when they ran out, to twice the memory this
    /// table promises. Built anew, the map holds no tombstone, and grows only with the entries
    /// it holds (at most `capacity`). For a moment both maps are held.
    fn keep(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let old = std::mem::take(&mut self.entries);
        let mut kept = HashMap::with_capacity(old.len());
        kept.extend(old.into_iter().filter(|(_, entry)| keep(entry)));
        kept.shrink_to_fit();
        self.entries = kept;
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// About the bytes the map holds: its slots (a power of two, an eighth of them kept
    /// free), each with a control byte.
    fn footprint(&self) -> usize {
        let slots = match self.entries.capacity() {
            0 => 0,
            room => (room * 8 / 7).next_power_of_two(),
        };
        slots * (size_of::<(u128, V)>() + 1)
    }
}

/// Locks a mutex whose holder may have panicked: the tables stay consistent between two
/// statements, so what a panic left is still good to count with.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One limit per client address (its [`address_key`]), on a [`Table`]: an unauthenticated
/// client chooses its address, so the state is bounded like the login guard's.
pub struct AddressLimit {
    what: &'static str,
    rule: Gcra,
    clock: LimitClock,
    table: Mutex<Table<Tat>>,
}

impl std::fmt::Debug for AddressLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressLimit")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl AddressLimit {
    /// `count` per `period` sustained, `burst` at once, per address, counting time on `clock`.
    fn counting_on(
        clock: LimitClock,
        what: &'static str,
        count: u32,
        period: Duration,
        burst: u32,
    ) -> Self {
        Self {
            what,
            rule: Gcra::new(count, period, burst),
            clock,
            table: Mutex::new(Table::new(MAX_TRACKED)),
        }
    }

    /// Takes one unit of `address`'s quota, or answers 429 `rate_limited` with how long to
    /// wait. `address` is what [`crate::http::extract::ClientAddress`] found.
    pub fn check(&self, address: &str) -> Result<()> {
        let key = address_key(address);
        let now = self.clock.now().as_u64();
        let mut table = lock(&self.table);
        table.sweep_when_due(now);
        let tat = self.rule.spend(table.get(key).map(|tat| tat.0), now);
        match tat {
            Ok(tat) => {
                table.insert(key, Tat(tat), now);
                Ok(())
            }
            Err(wait) => Err(rate_limited(self.what, wait)),
        }
    }

    /// How many addresses are tracked (at most [`MAX_TRACKED`]).
    pub fn tracked(&self) -> usize {
        lock(&self.table).len()
    }
}

/// Failed logins an account may have within [`LOGIN_WINDOW`] before its logins are refused.
const ACCOUNT_FAILURES: u32 = 5;
/// Failed logins one client address may have within [`LOGIN_WINDOW`], over all accounts: high
/// enough for a NAT full of people mistyping, low enough to stop a spray over many accounts.
pub const ADDRESS_FAILURES: u32 = 100;
/// The window failures are counted in, and how long the first lockout lasts.
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest lockout: each lockout of the same key within a day doubles the last.
const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 3600);

/// Guards logins against guessing: failures are counted per account (the email, as typed,
/// lowercased: unknown emails count like known ones, so the answer reveals nothing) and per
/// client address (an IPv6 address by its /64). After [`ACCOUNT_FAILURES`] failures of an
/// account within [`LOGIN_WINDOW`], its logins answer 429 `too_many_attempts`, even with the
/// right password, for the window; a repeat lockout lasts twice as long. An address is locked
/// the same way after [`ADDRESS_FAILURES`]; other accounts from it are unaffected until then.
///
/// Everything here is keyed by what a client sends before it is authenticated, so it lives in
/// [`Table`]s: 16-byte keys (a hash of the email cut to [`MAX_ACCOUNT_KEY_BYTES`]), swept by
/// time, at most `capacity` entries each ([`MAX_TRACKED`] unless a test says otherwise). Four
/// tables: failures and lockouts, of accounts and of addresses. Only a failure adds an entry;
/// a check reads. A lockout is looked at before every attempt, right password or not, so it
/// is kept apart from the failure counts, in a table that holds only locked keys. Per process,
/// like the other limits.
pub struct LoginGuard {
    /// What failures are counted and lockouts timed on.
    clock: LimitClock,
    /// One lock for the four tables: a check is a few hash lookups, and failures come at most
    /// as fast as logins fail.
    keys: Mutex<Logins>,
}

/// The failures and lockouts of the two kinds of key.
struct Logins {
    accounts: Counted,
    addresses: Counted,
}

/// Failures and lockouts of one kind of key.
struct Counted {
    /// `limit - 1` cells, one back every window / limit: the limit-th failure in a window is
    /// the one refused, which locks the key.
    rule: Gcra,
    failures: Table<Tat>,
    locks: Table<Lockout>,
}

#[derive(Debug, Clone, Copy)]
struct Lockout {
    until: u64,
    /// The length of the last lockout (ns), doubled by the next.
    length: u64,
}

impl Expiring for Lockout {
    /// A lockout is remembered for a day after it ends, for the doubling.
    fn expires(&self) -> u64 {
        self.until.saturating_add(nanos(MAX_LOCKOUT))
    }
}

impl Counted {
    fn new(limit: u32, capacity: usize) -> Self {
        Self {
            rule: Gcra::new(limit, LOGIN_WINDOW, limit.saturating_sub(1)),
            failures: Table::new(capacity),
            locks: Table::new(capacity),
        }
    }

    /// How long `key` stays locked, if it is.
    fn locked(&self, key: u128, now: u64) -> Option<Duration> {
        let lock = self.locks.get(key)?;
        (lock.until > now).then(|| Duration::from_nanos(lock.until - now))
    }

    /// Counts a failure of `key`; locks it when it passed its limit.
    fn failed(&mut self, key: u128, now: u64) {
        self.failures.sweep_when_due(now);
        self.locks.sweep_when_due(now);
        match self
            .rule
            .spend(self.failures.get(key).map(|tat| tat.0), now)
        {
            Ok(tat) => self.failures.insert(key, Tat(tat), now),
            Err(_) => {
                let length = match self.locks.get(key) {
                    Some(last) if last.expires() > now => {
                        last.length.saturating_mul(2).min(nanos(MAX_LOCKOUT))
                    }
                    _ => nanos(LOGIN_WINDOW),
                };
                let until = now.saturating_add(length);
                self.locks.insert(key, Lockout { until, length }, now);
            }
        }
    }

    fn tracked(&self) -> usize {
        self.failures.len() + self.locks.len()
    }

    fn footprint(&self) -> usize {
        self.failures.footprint() + self.locks.footprint()
    }
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
        Self::with_capacity(clock, MAX_TRACKED)
    }

    /// [`LoginGuard::counting_on`] with at most `capacity` entries per table, for tests that
    /// fill the tables.
    pub fn with_capacity(clock: LimitClock, capacity: usize) -> Self {
        Self {
            clock,
            keys: Mutex::new(Logins {
                accounts: Counted::new(ACCOUNT_FAILURES, capacity),
                addresses: Counted::new(ADDRESS_FAILURES, capacity),
            }),
        }
    }

    /// Before an attempt: 429 if the account or the address is locked out.
    pub fn check(&self, account: &str, address: &str) -> Result<()> {
        let (account, address) = (account_key(account), address_key(address));
        let now = self.clock.now().as_u64();
        let keys = lock(&self.keys);
        let wait = keys
            .accounts
            .locked(account, now)
            .max(keys.addresses.locked(address, now));
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
        let (account, address) = (account_key(account), address_key(address));
        let now = self.clock.now().as_u64();
        let mut keys = lock(&self.keys);
        keys.accounts.failed(account, now);
        keys.addresses.failed(address, now);
    }

    /// How many entries the guard holds: failure counts and lockouts, of accounts and of
    /// addresses (at most 4 × its capacity).
    pub fn tracked(&self) -> usize {
        let keys = lock(&self.keys);
        keys.accounts.tracked() + keys.addresses.tracked()
    }

    /// About the bytes the guard's tables hold; nothing else grows with what clients send.
    pub fn footprint(&self) -> usize {
        let keys = lock(&self.keys);
        keys.accounts.footprint() + keys.addresses.footprint()
    }
}

/// The longest text an account key is made from. Longer than any valid email (254 characters
/// of up to 4 bytes), so cutting never makes two registrable emails one key.
const MAX_ACCOUNT_KEY_BYTES: usize = 1024;
const _: () = assert!(MAX_ACCOUNT_KEY_BYTES > 4 * MAX_EMAIL_CHARS);

/// The key of an account: the first 16 bytes of the SHA-256 of the email as typed (trimmed,
/// cut to [`MAX_ACCOUNT_KEY_BYTES`], lowercased). The same size for a 60 KB username as for
/// `a@b.c`, and cheap to make from either.
fn account_key(email: &str) -> u128 {
    let typed = email.trim();
    hash_key(typed[..typed.floor_char_boundary(MAX_ACCOUNT_KEY_BYTES)].to_lowercase())
}

/// The key of a client address (as [`crate::http::extract::ClientAddress`] gives it): an IPv4
/// address whole; an IPv6 address by its /64, the block one subscriber is given (keyed by its
/// /128, one client would have 2^64 keys to spread failures over and fill tables with); an
/// IPv4-mapped IPv6 address as its IPv4 address; text that is no address (a proxy's
/// `unknown`) by its hash.
fn address_key(address: &str) -> u128 {
    let address = address.trim();
    match address.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(v4)) => u128::from(v4.to_ipv6_mapped()),
        Ok(IpAddr::V6(v6)) => u128::from(v6) & !u128::from(u64::MAX),
        Err(_) => hash_key(&address[..address.floor_char_boundary(MAX_ACCOUNT_KEY_BYTES)]),
    }
}

/// The first 16 bytes of the SHA-256 of `text`.
fn hash_key(text: impl AsRef<[u8]>) -> u128 {
    let digest = Sha256::digest(text.as_ref());
    let mut first = [0; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
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
    fn an_address_limit_counts_like_the_per_user_ones() {
        let clock = FakeRelativeClock::default();
        let limit = AddressLimit::counting_on(
            clock.clone().into(),
            "lookups",
            20,
            Duration::from_secs(1),
            5,
        );
        for _ in 0..5 {
            assert!(limit.check("198.51.100.7").is_ok());
        }
        let Err(Error::TooManyRequests { retry_after, .. }) = limit.check("198.51.100.7") else {
            panic!("the sixth passed");
        };
        assert_eq!(retry_after, Duration::from_millis(50));
        assert!(limit.check("198.51.100.8").is_ok(), "another address");
        clock.advance(retry_after - Duration::from_nanos(1));
        assert!(
            limit.check("198.51.100.7").is_err(),
            "a cell came back early"
        );
        clock.advance(Duration::from_nanos(1));
        assert!(limit.check("198.51.100.7").is_ok());
        assert!(limit.check("198.51.100.7").is_err());
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

    #[test]
    fn ipv6_addresses_are_keyed_by_their_64_and_ipv4_ones_whole() {
        let key = address_key;
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), key(" 2001:DB8:1:2:0:0:0:7 "));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("198.51.100.7"), key("198.51.100.8"));
        assert_eq!(key("::ffff:198.51.100.7"), key("198.51.100.7"));
        assert_ne!(key("unknown"), key("198.51.100.7"));
        assert_eq!(key("unknown"), key("unknown"));

        // What the keys are for: 100 failures from as many addresses of one /64 lock all of
        // it, and nothing of the next /64.
        let guard = LoginGuard::counting_on(FakeRelativeClock::default().into());
        for i in 0..ADDRESS_FAILURES {
            let from = format!("2001:db8:1:2::{i:x}");
            assert!(guard.check(&format!("u{i}@example.com"), &from).is_ok());
            guard.failed(&format!("u{i}@example.com"), &from);
        }
        assert!(
            guard
                .check("someone@example.com", "2001:db8:1:2:aaaa::1")
                .is_err(),
            "the /64 was not locked"
        );
        assert!(
            guard
                .check("someone@example.com", "2001:db8:1:3::1")
                .is_ok()
        );
        assert_eq!(
            lock(&guard.keys).addresses.tracked(),
            2,
            "one count and one lock"
        );
    }

    /// `n` distinct usernames of about 60 KB.
    fn huge_usernames(n: usize) -> impl Iterator<Item = String> {
        let filler = "x".repeat(60 * 1024);
        (0..n).map(move |i| format!("{i}.{filler}@example.com"))
    }

    #[test]
    fn ten_thousand_huge_usernames_from_one_64_leave_the_guard_within_its_bounds() {
        let capacity = 1_000;
        let guard = LoginGuard::with_capacity(FakeRelativeClock::default().into(), capacity);
        for (i, username) in huge_usernames(10_000).enumerate() {
            guard.failed(&username, &format!("2001:db8::{i:x}"));
        }
        let keys = lock(&guard.keys);
        assert!(
            keys.accounts.tracked() <= capacity,
            "{} accounts tracked, capacity {capacity}",
            keys.accounts.tracked()
        );
        assert_eq!(keys.addresses.tracked(), 2, "one /64: one count, one lock");
        drop(keys);
        // ~600 MB of usernames; the tables hold 16-byte keys, a few slots each.
        let footprint = guard.footprint();
        assert!(footprint < 256 * 1024, "{footprint} bytes");
        // With the production capacity, the memory per entry does not depend on the username.
        let guard = LoginGuard::default();
        for (i, username) in huge_usernames(10_000).enumerate() {
            guard.failed(&username, &format!("198.51.{}.{}", i / 256, i % 256));
        }
        assert_eq!(guard.tracked(), 20_000);
        let per_entry = guard.footprint() / guard.tracked();
        eprintln!("{} bytes for 20,000 entries", guard.footprint());
        assert!(per_entry <= 128, "{per_entry} bytes an entry");
    }

    #[test]
    fn a_flood_past_the_production_capacity_stays_within_its_mebibytes() {
        let guard = LoginGuard::default();
        for i in 0..3 * MAX_TRACKED as u32 {
            let [a, b, c, d] = i.to_be_bytes();
            guard.failed(&format!("u{i}@example.com"), &format!("{a}.{b}.{c}.{d}"));
        }
        assert!(guard.tracked() <= 2 * MAX_TRACKED, "{}", guard.tracked());
        // Two full tables (no lockouts: each key failed once) of 65,536 slots of 33 bytes.
        let footprint = guard.footprint();
        eprintln!("{footprint} bytes for {} entries", guard.tracked());
        assert!(footprint <= 2 * 65_536 * 33, "{footprint} bytes");
    }

    #[test]
    fn a_flood_of_made_up_accounts_does_not_wash_out_an_account_close_to_its_limit() {
        let guard = LoginGuard::with_capacity(FakeRelativeClock::default().into(), 1_000);
        for _ in 1..ACCOUNT_FAILURES {
            guard.failed("alice@example.com", "198.51.100.7");
        }
        for (i, username) in huge_usernames(10_000).enumerate() {
            guard.failed(&username, &format!("203.0.{}.{}", i / 256, i % 256));
        }
        assert!(guard.tracked() <= 4 * 1_000);
        assert!(guard.check("alice@example.com", "192.0.2.1").is_ok());
        guard.failed("alice@example.com", "192.0.2.1");
        assert!(
            guard.check("alice@example.com", "192.0.2.1").is_err(),
            "the flood reset Alice's failures"
        );
    }

    #[test]
    fn what_expired_is_swept_once_its_window_has_passed() {
        let clock = FakeRelativeClock::default();
        let guard = LoginGuard::counting_on(clock.clone().into());
        for i in 0..50 {
            guard.failed(&format!("u{i}@example.com"), "198.51.100.7");
        }
        // Alice locked: her lockout is remembered a day past its end, for the doubling.
        for _ in 0..ACCOUNT_FAILURES {
            guard.failed("alice@example.com", "192.0.2.1");
        }
        // 50 accounts and their address; Alice's count, lockout and address.
        assert_eq!(guard.tracked(), 50 + 1 + 3);
        clock.advance(LOGIN_WINDOW + SWEEP_INTERVAL);
        guard.failed("bob@example.com", "192.0.2.2");
        // Bob's account and address, Alice's lockout.
        assert_eq!(guard.tracked(), 2 + 1, "the failure counts were not swept");
        clock.advance(MAX_LOCKOUT);
        guard.failed("bob@example.com", "192.0.2.2");
        assert_eq!(guard.tracked(), 2, "Alice's lockout was not forgotten");
    }

    #[test]
    fn a_repeat_lockout_doubles_and_a_day_later_starts_over() {
        let clock = FakeRelativeClock::default();
        let guard = LoginGuard::counting_on(clock.clone().into());
        let lockout = |guard: &LoginGuard| match guard.check("alice@example.com", "192.0.2.1") {
            Err(Error::TooManyRequests { retry_after, .. }) => retry_after,
            other => panic!("not locked: {other:?}"),
        };
        for _ in 0..ACCOUNT_FAILURES {
            guard.failed("alice@example.com", "192.0.2.1");
        }
        assert_eq!(lockout(&guard), LOGIN_WINDOW);
        clock.advance(LOGIN_WINDOW);
        for _ in 0..ACCOUNT_FAILURES {
            guard.failed("alice@example.com", "192.0.2.1");
        }
        assert_eq!(lockout(&guard), 2 * LOGIN_WINDOW);
        clock.advance(2 * LOGIN_WINDOW + MAX_LOCKOUT);
        for _ in 0..ACCOUNT_FAILURES {
            guard.failed("alice@example.com", "192.0.2.1");
        }
        assert_eq!(lockout(&guard), LOGIN_WINDOW);
    }
}
