//! `windi generate`: data at scale for benchmarks and for trying the system under weight.
//!
//! Users, private chats and groups, and messages with realistic text lengths, loaded with
//! Postgres `COPY` in one transaction (so an interrupted run leaves nothing half-written). The
//! rows obey the same invariants as live data — per-chat seqs 1..n with no gap, `last_seq`
//! equal to the message count, read markers within range and at or above each member's own
//! messages, one `chat_changes` row per rev — which `windi check` verifies.
//!
//! Revisions: the chats look as if every message had been sent live and nothing else had
//! happened since their creation (whose members take no rev). So message `seq` n is rev n
//! (`rev` = `created_rev` = `seq`), a chat's `rev` is its `last_seq`, and its change log holds
//! one `message` change per message. Each user's `member_rev` counts the chats they are in (each
//! join bumped it once); `joined_rev` keeps its default 0.
//!
//! The long tail (`tail_chats`, `tail_messages`): a few extra groups with exactly that many
//! messages each — millions if asked — streamed like the rest, so history at a million
//! messages can be measured on generated data. Memory stays bounded: messages go out in ~1 MiB
//! chunks and only per-chat counters are kept.
//!
//! Ids are reserved from the tables' identity sequences first, so the generated rows never
//! collide with live ones and live inserts afterwards continue cleanly. Nothing is deleted.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    fmt::Write as _,
    io::Write as _,
    time::{Duration, Instant},
};

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use windi_shared::service::auth::Passwords;

/// The password of every generated user (they share one argon2id hash: hashing each would
/// take ~16 ms apiece and dominate the run).
pub const GENERATED_PASSWORD: &str = "generated-password";

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub users: usize,
    pub chats: usize,
    pub messages: u64,
    /// Share of chats that are groups (the rest are private pairs).
    pub group_share: f64,
    pub min_group: usize,
    pub max_group: usize,
    pub seed: u64,
    /// The long tail: this many extra group chats, each with exactly `tail_messages` messages
    /// (on top of `messages`), so history can be measured at a million messages and more. The
    /// skewed spread of `messages` alone tops out near 800 in a chat of the default 5,000.
    pub tail_chats: usize,
    pub tail_messages: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            users: 10_000,
            chats: 5_000,
            messages: 1_000_000,
            group_share: 0.3,
            min_group: 3,
            max_group: 30,
            seed: 42,
            tail_chats: 0,
            tail_messages: 1_000_000,
            progress: true,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub users: usize,
    pub chats: usize,
    pub messages: u64,
    pub elapsed: Duration,
    /// Time spent on the messages alone: their `COPY` and their rows of the change log.
    pub message_time: Duration,
    /// Emails are `user<i>.<tag>@example.com`.
    pub tag: String,
    pub first_user_email: String,
}

impl Report {
    pub fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.message_time.as_secs_f64().max(1e-9)
    }
}

/// A small deterministic PRNG (splitmix64): reproducible data from `--seed`, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1).max(1) as u64) as i64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Chat {
    id: i64,
    group: bool,
    name: Option<String>,
    members: Vec<i64>,
    messages: i64,
    /// Per member (same order as `members`), the seq of their last message here (0: none). The
    /// send path moves a sender's read marker to their message, and unread counts rely on it.
    last_sent: Vec<i64>,
}

/// Generates and loads everything; answers what was made.
pub async fn run(pool: &PgPool, options: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let o = options;
    if o.users < 2 {
        return Err("--users must be at least 2".into());
    }
    if o.chats == 0 && o.messages > 0 {
        return Err("--messages needs at least one chat".into());
    }
    let tail_messages =
        i64::try_from(o.tail_messages).map_err(|_| "--tail-messages is too large".to_string())?;
    let mut rng = Rng::new(o.seed);
    let tag = format!("s{}t{}", o.seed, Utc::now().timestamp());
    let hash = Passwords::new(1)
        .hash(GENERATED_PASSWORD.into())
        .await
        .map_err(|e| e.to_string())?;

    let mut tx = pool.begin().await.map_err(db)?;
    // Bulk work with no client waiting: whatever pool it was given (a request pool carries
    // `store::Timeouts`), its statements may take as long as the data asks.
    for unbound in [
        "SET LOCAL statement_timeout = 0",
        "SET LOCAL lock_timeout = 0",
    ] {
        sqlx::query(unbound).execute(&mut *tx).await.map_err(db)?;
    }
    let user_ids = reserve_ids(&mut tx, "users", o.users).await?;
    let chat_ids = reserve_ids(&mut tx, "chats", o.chats + o.tail_chats).await?;
    let (chat_ids, tail_ids) = chat_ids.split_at(o.chats);
    let mut chats = plan_chats(&mut rng, o, &user_ids, chat_ids);
    distribute_messages(&mut rng, &mut chats, o.messages);
    // After the regular chats, so a seed gives the same regular chats with or without a tail.
    chats.extend(plan_tail(&mut rng, o, &user_ids, tail_ids, tail_messages));
    let total_messages: u64 = chats.iter().map(|c| c.messages as u64).sum();

    copy_users(&mut tx, &user_ids, &chats, &tag, &hash).await?;
    copy_chats(&mut tx, &chats).await?;
    let message_started = Instant::now();
    let before = last_message_id(&mut tx).await?;
    copy_messages(&mut tx, &mut rng, &mut chats, total_messages, o.progress).await?;
    if o.progress {
        eprintln!("change log: one row per message…");
    }
    record_message_changes(&mut tx, &chats, before).await?;
    let message_time = message_started.elapsed();
    // After the messages: the markers must cover what each member sent.
    copy_members(&mut tx, &mut rng, &chats).await?;
    tx.commit().await.map_err(db)?;

    Ok(Report {
        users: user_ids.len(),
        chats: chats.len(),
        messages: total_messages,
        elapsed: started.elapsed(),
        message_time,
        first_user_email: format!("user0.{tag}@example.com"),
        tag,
    })
}

fn db(e: sqlx::Error) -> String {
    format!("database: {e}")
}

/// Takes `n` ids from the table's identity sequence, so live inserts never reuse them.
async fn reserve_ids(tx: &mut PgConnection, table: &str, n: usize) -> Result<Vec<i64>, String> {
    let sql = format!(
        "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, $1)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)
}

fn plan_chats(rng: &mut Rng, o: &Options, users: &[i64], chat_ids: &[i64]) -> Vec<Chat> {
    let mut pairs = HashSet::new();
    let max_group = o.max_group.clamp(o.min_group.max(2), users.len());
    let min_group = o.min_group.clamp(2, max_group);
    let mut group_number = 0;
    chat_ids
        .iter()
        .map(|&id| {
            let mut group = rng.unit() < o.group_share;
            let mut members = Vec::new();
            if !group {
                // A private chat needs a pair not used yet; with few users, fall back to a group.
                for _ in 0..20 {
                    let (a, b) = (users[rng.below(users.len())], users[rng.below(users.len())]);
                    if a != b && pairs.insert((a.min(b), a.max(b))) {
                        members = vec![a, b];
                        break;
                    }
                }
                group = members.is_empty();
            }
            let name = if group {
                let size = min_group + rng.below(max_group - min_group + 1);
                let mut chosen = HashSet::with_capacity(size);
                while chosen.len() < size {
                    chosen.insert(users[rng.below(users.len())]);
                }
                members = chosen.into_iter().collect();
                members.sort_unstable();
                group_number += 1;
                Some(format!(
                    "{} {group_number}",
                    GROUP_NAMES[rng.below(GROUP_NAMES.len())]
                ))
            } else {
                None
            };
            Chat {
                id,
                group,
                name,
                last_sent: vec![0; members.len()],
                members,
                messages: 0,
            }
        })
        .collect()
}

/// The long tail's chats: groups (a long history is a team's channel more often than a pair's),
/// sized like the other groups, named apart, with exactly `messages` messages each.
fn plan_tail(rng: &mut Rng, o: &Options, users: &[i64], ids: &[i64], messages: i64) -> Vec<Chat> {
    let max_group = o.max_group.clamp(o.min_group.max(2), users.len());
    let min_group = o.min_group.clamp(2, max_group);
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let size = min_group + rng.below(max_group - min_group + 1);
            let mut chosen = HashSet::with_capacity(size);
            while chosen.len() < size {
                chosen.insert(users[rng.below(users.len())]);
            }
            let mut members: Vec<i64> = chosen.into_iter().collect();
            members.sort_unstable();
            Chat {
                id,
                group: true,
                name: Some(format!("Long History {}", i + 1)),
                last_sent: vec![0; members.len()],
                members,
                messages,
            }
        })
        .collect()
}

/// Spreads the messages over the chats with a long tail: a few busy chats, many quiet ones.
fn distribute_messages(rng: &mut Rng, chats: &mut [Chat], total: u64) {
    if chats.is_empty() {
        return;
    }
    let weights: Vec<f64> = chats
        .iter()
        .map(|_| {
            let u = rng.unit().max(1e-9);
            u.powf(3.0) // skewed: most chats small, some large
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut assigned = 0u64;
    for (chat, w) in chats.iter_mut().zip(&weights) {
        let n = (total as f64 * w / sum).floor() as u64;
        chat.messages = n as i64;
        assigned += n;
    }
    let len = chats.len();
    for i in 0..(total - assigned) {
        chats[(i as usize) % len].messages += 1;
    }
}

/// Users with `member_rev` = the number of chats they are in: each join bumped it once.
async fn copy_users(
    tx: &mut PgConnection,
    ids: &[i64],
    chats: &[Chat],
    tag: &str,
    hash: &str,
) -> Result<(), String> {
    let mut joins: HashMap<i64, u64> = HashMap::with_capacity(ids.len());
    for user in chats.iter().flat_map(|c| &c.members) {
        *joins.entry(*user).or_default() += 1;
    }
    let mut buf = String::with_capacity(ids.len() * 160);
    for (i, id) in ids.iter().enumerate() {
        let first = FIRST_NAMES[i % FIRST_NAMES.len()];
        let member_rev = joins.get(id).copied().unwrap_or(0);
        let _ = writeln!(
            buf,
            "{id}\t{first} {i}\tuser{i}.{tag}@example.com\t{hash}\t{member_rev}"
        );
    }
    copy(
        tx,
        "COPY users (id, name, email, password_hash, member_rev) FROM STDIN",
        buf.into_bytes(),
    )
    .await
}

async fn copy_chats(tx: &mut PgConnection, chats: &[Chat]) -> Result<(), String> {
    let mut buf = String::with_capacity(chats.len() * 64);
    for c in chats {
        let creator = c.members[0];
        if c.group {
            let name = c.name.as_deref().unwrap_or("Group");
            let _ = writeln!(
                buf,
                "{}\tgroup\t{name}\t{creator}\t{n}\t{n}\t\\N\t\\N",
                c.id,
                n = c.messages
            );
        } else {
            let (low, high) = (
                c.members[0].min(c.members[1]),
                c.members[0].max(c.members[1]),
            );
            let _ = writeln!(
                buf,
                "{}\tprivate\t\\N\t{creator}\t{n}\t{n}\t{low}\t{high}",
                c.id,
                n = c.messages
            );
        }
    }
    copy(
        tx,
        "COPY chats (id, kind, name, creator_id, last_seq, rev, private_low, private_high) \
         FROM STDIN",
        buf.into_bytes(),
    )
    .await
}

/// Members with read markers: most have read everything, some are a few messages behind — but
/// never behind their own last message, as sending moves the sender's marker to it.
async fn copy_members(tx: &mut PgConnection, rng: &mut Rng, chats: &[Chat]) -> Result<(), String> {
    let mut buf = String::new();
    for c in chats {
        for (i, (user, last_sent)) in c.members.iter().zip(&c.last_sent).enumerate() {
            let role = if c.group && i == 0 { "owner" } else { "member" };
            let behind = if rng.unit() < 0.3 {
                rng.below(10) as i64
            } else {
                0
            };
            let marker = (c.messages - behind).max(*last_sent);
            let _ = writeln!(buf, "{}\t{user}\t{role}\t{marker}", c.id);
        }
    }
    copy(
        tx,
        "COPY chat_members (chat_id, user_id, role, last_read_seq) FROM STDIN",
        buf.into_bytes(),
    )
    .await
}

/// Streams the messages in time order across all chats ([`Timeline`]), in ~1 MiB chunks;
/// notes in each chat who sent its messages last (`Chat::last_sent`).
async fn copy_messages(
    tx: &mut PgConnection,
    rng: &mut Rng,
    chats: &mut [Chat],
    total: u64,
    progress: bool,
) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    let started = Instant::now();
    let mut copy_in = tx
        .copy_in_raw(
            "COPY messages (chat_id, seq, rev, created_rev, sender_id, text, created_at, \
             content_hash) FROM STDIN",
        )
        .await
        .map_err(db)?;
    let mut buf = String::with_capacity(CHUNK + 4096);
    let mut text = String::with_capacity(1024);
    let mut done = 0u64;
    let mut bar = Progress::new(total, progress);
    let counts: Vec<i64> = chats.iter().map(|c| c.messages).collect();
    let mut timeline = Timeline::new(rng, &counts, Utc::now().timestamp_millis(), SPAN_MS);
    while let Some((c, seq, at)) = timeline.next(rng) {
        let chat = &mut chats[c];
        let i = rng.below(chat.members.len());
        let sender = chat.members[i];
        chat.last_sent[i] = seq;
        realistic_text(rng, &mut text);
        let when = Utc
            .timestamp_millis_opt(at)
            .single()
            .unwrap_or_else(Utc::now);
        // A message created in a chat without other changes: rev = created_rev = seq.
        let _ = write!(
            buf,
            "{}\t{seq}\t{seq}\t{seq}\t{sender}\t{text}\t{}\t\\\\x",
            chat.id,
            when.format("%Y-%m-%d %H:%M:%S%.3f+00")
        );
        push_hex(&mut buf, &content_hash(chat.id, &text));
        buf.push('\n');
        done += 1;
        if buf.len() >= CHUNK {
            copy_in.send(buf.as_bytes()).await.map_err(db)?;
            buf.clear();
            bar.update(done, started.elapsed());
        }
    }
    copy_in.send(buf.as_bytes()).await.map_err(db)?;
    copy_in.finish().await.map_err(db)?;
    bar.update(done, started.elapsed());
    bar.finish();
    Ok(())
}

/// Messages span the last 30 days, in milliseconds, so a chat of the long tail with millions
/// of messages still fits in the span.
const SPAN_MS: i64 = 30 * 24 * 3600 * 1000;

/// When each message is sent: every chat's messages spread over the span in seq order, all
/// chats' merged by time, as real traffic interleaves them. Written in this order, ids follow
/// time as they do in production, so what reads the newest messages by id (search's walk)
/// sees what it would there. Chat by chat, the newest ids were the last chats loaded, every
/// other chat's messages far below: a walk of the newest ids found none of most users'.
struct Timeline {
    /// The next message of each chat that has one left, earliest first: (time, chat).
    next: BinaryHeap<Reverse<(i64, usize)>>,
    /// Per chat: its messages, how many are out, and the mean gap between them.
    counts: Vec<i64>,
    sent: Vec<i64>,
    step: Vec<i64>,
    now: i64,
}

impl Timeline {
    fn new(rng: &mut Rng, counts: &[i64], now: i64, span: i64) -> Self {
        let mut next = BinaryHeap::with_capacity(counts.len());
        let mut step = Vec::with_capacity(counts.len());
        // Each chat starts within the span's first hour and its gaps average out to the rest
        // of it, so every chat's messages reach (about) to now, as live chats do.
        const HOUR: i64 = 3600 * 1000;
        for (c, &n) in counts.iter().enumerate() {
            step.push(((span - HOUR) / n.max(1)).max(1));
            if n > 0 {
                let start = now - span + rng.below(HOUR as usize) as i64;
                next.push(Reverse((start + Self::gap(rng, step[c]), c)));
            }
        }
        Self {
            next,
            counts: counts.to_vec(),
            sent: vec![0; counts.len()],
            step,
            now,
        }
    }

    /// Between 1 and `2 * step` ms, `step` on average.
    fn gap(rng: &mut Rng, step: i64) -> i64 {
        1 + rng.below(step as usize * 2) as i64
    }

    /// The next message of all: (chat index, seq, time in ms, never after `now`).
    fn next(&mut self, rng: &mut Rng) -> Option<(usize, i64, i64)> {
        let Reverse((at, c)) = self.next.pop()?;
        self.sent[c] += 1;
        if self.sent[c] < self.counts[c] {
            self.next
                .push(Reverse((at + Self::gap(rng, self.step[c]), c)));
        }
        Some((c, self.sent[c], at.min(self.now)))
    }
}

/// The highest message id handed out so far: every message `COPY` adds after it is above it.
async fn last_message_id(tx: &mut PgConnection) -> Result<i64, String> {
    sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)
}

/// One `message` change per generated message, at its seq, by its sender — derived in the
/// database from the rows just copied. Cheaper than a `COPY` of the change rows, which would need
/// the message ids up front: for 1M messages on 2 cores this took ~2.9 s, against ~2.4 s for the
/// `COPY` plus ~1 s to reserve the ids (one `nextval` each, the only way that is safe next to
/// live senders).
async fn record_message_changes(
    tx: &mut PgConnection,
    chats: &[Chat],
    before: i64,
) -> Result<(), String> {
    let ids: Vec<i64> = chats.iter().map(|c| c.id).collect();
    // `id > before` keeps the scan to this run's rows; the chat ids keep out live messages of
    // other chats that took ids meanwhile.
    sqlx::query(
        "INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id, created_at)
         SELECT chat_id, seq, 'message', id, sender_id, created_at FROM messages
         WHERE id > $1 AND chat_id = ANY($2)",
    )
    .bind(before)
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// The same hash the send path stores (sha256 of chat id and text).
fn content_hash(chat_id: i64, text: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(chat_id.to_be_bytes());
    hasher.update(text.as_bytes());
    hasher.finalize().into()
}

fn push_hex(buf: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        buf.push(HEX[usize::from(b >> 4)] as char);
        buf.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Chat-like text: mostly short lines, some paragraphs, in English and Russian. The words
/// hold no tab, newline or backslash, so they need no COPY escaping.
fn realistic_text(rng: &mut Rng, out: &mut String) {
    out.clear();
    let words = match rng.below(10) {
        0..=5 => 1 + rng.below(8),
        6..=8 => 8 + rng.below(22),
        _ => 30 + rng.below(90),
    };
    let vocabulary = if rng.below(3) == 0 { RUSSIAN } else { ENGLISH };
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(vocabulary[rng.below(vocabulary.len())]);
    }
    out.push_str(["", ".", "!", "?", " :)"][rng.below(5)]);
}

/// A progress bar on stderr.
struct Progress {
    total: u64,
    enabled: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Self {
        Self { total, enabled }
    }

    fn update(&mut self, done: u64, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let share = done as f64 / self.total.max(1) as f64;
        let filled = (share * 30.0).round() as usize;
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        eprint!(
            "\rmessages [{}{}] {:>3.0}% {done}/{} · {:.0}/s   ",
            "█".repeat(filled.min(30)),
            "░".repeat(30 - filled.min(30)),
            share * 100.0,
            self.total,
            rate
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

async fn copy(tx: &mut PgConnection, statement: &str, data: Vec<u8>) -> Result<(), String> {
    let mut copy_in = tx.copy_in_raw(statement).await.map_err(db)?;
    copy_in.send(data).await.map_err(db)?;
    copy_in.finish().await.map_err(db)?;
    Ok(())
}

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Maks",
    "Olga", "Pavel", "Sasha", "Tanya", "Yuri",
];
const GROUP_NAMES: &[&str] = &[
    "Project Team",
    "Family",
    "Weekend Hike",
    "Book Club",
    "Release Crew",
    "Flatmates",
    "Football",
    "Study Group",
];
const ENGLISH: &[&str] = &[
    "hi", "hey", "ok", "sure", "thanks", "see", "you", "tomorrow", "the", "build", "is", "green",
    "again", "can", "we", "meet", "at", "five", "lunch", "today", "sounds", "good", "I", "will",
    "send", "it", "later", "deploy", "done", "great", "news", "where", "are", "coffee", "what",
    "about", "this", "weekend", "running", "late", "review", "please", "merged", "nice", "work",
];
const RUSSIAN: &[&str] = &[
    "привет",
    "как",
    "дела",
    "отлично",
    "спасибо",
    "увидимся",
    "завтра",
    "да",
    "нет",
    "может",
    "быть",
    "встретимся",
    "в",
    "пять",
    "обед",
    "сегодня",
    "хорошо",
    "отправлю",
    "позже",
    "готово",
    "новости",
    "где",
    "ты",
    "кофе",
    "что",
    "насчёт",
    "выходных",
    "опаздываю",
    "посмотри",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_deterministic_per_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn messages_are_distributed_exactly() {
        let mut rng = Rng::new(1);
        let mut chats: Vec<Chat> = (0..7)
            .map(|id| Chat {
                id,
                group: false,
                name: None,
                members: vec![1, 2],
                messages: 0,
                last_sent: vec![0, 0],
            })
            .collect();
        distribute_messages(&mut rng, &mut chats, 1001);
        assert_eq!(chats.iter().map(|c| c.messages).sum::<i64>(), 1001);
    }

    /// Every chat's messages come out seq 1..n in order, all of them, merged by time: so ids
    /// follow time, and the newest tenth of the ids holds messages of most chats.
    #[test]
    fn messages_come_out_in_time_order_across_chats_and_in_seq_order_within_each() {
        let mut rng = Rng::new(5);
        let counts = [0, 1, 5, 40, 300, 2_000];
        let mut timeline = Timeline::new(&mut rng, &counts, SPAN_MS, SPAN_MS);
        let mut out = Vec::new();
        while let Some(next) = timeline.next(&mut rng) {
            out.push(next);
        }
        assert_eq!(out.len() as i64, counts.iter().sum::<i64>());
        assert!(out.windows(2).all(|w| w[0].2 <= w[1].2), "time order");
        assert!(out.iter().all(|&(_, _, at)| (0..=SPAN_MS).contains(&at)));
        for (c, &n) in counts.iter().enumerate() {
            let seqs: Vec<i64> = out.iter().filter(|m| m.0 == c).map(|m| m.1).collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "chat {c}");
        }
        let newest: HashSet<usize> = out[out.len() * 9 / 10..].iter().map(|m| m.0).collect();
        assert!(
            [4, 5].iter().all(|c| newest.contains(c)),
            "the busy chats interleave to the end: {newest:?}"
        );
    }

    #[test]
    fn generated_text_needs_no_copy_escaping() {
        let mut rng = Rng::new(3);
        let mut text = String::new();
        for _ in 0..1000 {
            realistic_text(&mut rng, &mut text);
            assert!(!text.is_empty());
            assert!(!text.contains(['\t', '\n', '\r', '\\']));
        }
    }
}
