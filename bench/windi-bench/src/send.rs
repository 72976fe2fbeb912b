//! `send`: `POST /chat/message` throughput against pgbench running the send path's own
//! transaction, statement for statement, on the same database, with the same concurrency.
//!
//! - **windi side**: `wrk` (C, two threads, keep-alive connections, one Lua script choosing a
//!   sender and chat per request, each request with a dedup key of its own). wrk rather than
//!   a Rust client in this process: it is what pgbench is on the other side, a lean C client
//!   that leaves the two cores to the system under test, so the ratio compares servers, not
//!   load generators.
//! - **baseline**: `pgbench -M prepared` (extended protocol and prepared statements, as sqlx
//!   does) running, per transaction, exactly the statements `send_message` issues for a send
//!   into a chat by id: `BEGIN`, the dedup lookup (`messages::by_dedup_key`, a miss), the
//!   seq/rev allocation (`messages::take_seq`), the insert with its membership, block and
//!   reply checks, change row and marker (`messages::insert`), `COMMIT`. It leaves out what
//!   windi does around the transaction: HTTP, JSON, the JWT, the session check
//!   (`sessions::check`, a primary-key read per request unless cached), the rate limiter and
//!   the NATS publish (on here, as in production; the 16-client load runs once more with events
//!   in-process, in the same interleaving, to show what the broker costs).
//!
//! "Many chats": 2K users, K private chats (users 2k and 2k+1), the sender of chat k is user
//! 2k; every request picks k at random. "Hot chat": one group, every sender a member of it,
//! every request into it (one row lock serialises them all).
//!
//! windi is restarted for each repetition and stopped while pgbench runs, so both sides get
//! the machine alone and Postgres never holds both sides' connections (`DB_MAX_CONNECTIONS`
//! equals the client count: the same number of Postgres connections on both sides).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, bail, ensure};

use crate::{
    harness::{Api, BenchDb, Ctx, To, User, Windi, WindiOptions, bulk_users, run_tool},
    report::{Figure, Target},
};

/// The text of every benchmark message (about a chat line's length).
const TEXT: &str = "benchmark message with a realistic length, about sixty chars";

/// One shape of load: who sends where.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// K private chats, the sender of chat k is user 2k.
    ManyChats,
    /// Every sender into one group.
    HotChat,
}

/// The ids the load needs; users and chats are contiguous id ranges (checked at setup), so
/// pgbench can compute them from one random number.
#[derive(Debug)]
struct Data {
    users: Vec<User>,
    /// Chat id of private chat k is `first_chat + k`.
    first_chat: i64,
    chats: usize,
    group: i64,
    /// The group's members are `users[..group_members]`.
    group_members: usize,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let chats = ctx.pick(16, 512);
    let group_members = ctx.pick(8, 64);
    let seconds = ctx.pick(1, 15);
    let warmup = ctx.pick(0, 2);
    // (load, clients, also_nats_off): the NATS-off run, with events in-process, shows what the
    // broker costs, beside the same pgbench runs.
    let loads: Vec<(Load, usize, bool)> = if ctx.quick {
        vec![(Load::ManyChats, 4, true), (Load::HotChat, 4, false)]
    } else {
        vec![
            (Load::ManyChats, 16, true),
            (Load::ManyChats, 64, false),
            (Load::HotChat, 16, false),
        ]
    };
    let max_clients = loads.iter().map(|l| l.1).max().unwrap_or(16);

    let windi = Windi::start(ctx, "send", options(max_clients, true)).await?;
    let api = windi.api(ctx);
    let data = setup(&windi, &api, chats, group_members).await?;
    let mut db = windi.stop().await;
    let dir = tempdir(ctx)?;

    let mut figures = Vec::new();
    for (index, (load, clients, also_nats_off)) in loads.into_iter().enumerate() {
        let lua = dir.join(format!("send-{clients}-{load:?}.lua"));
        std::fs::write(&lua, wrk_script(&data, load))?;
        let sql = dir.join(format!("send-{load:?}.sql"));
        std::fs::write(&sql, pgbench_script(&data, load))?;
        let sides: &[bool] = if also_nats_off {
            &[true, false]
        } else {
            &[true]
        };
        let mut windi_rates = vec![Vec::new(); sides.len()];
        let mut pg_rates = Vec::new();
        for rep in 0..ctx.reps {
            for (side, &nats) in sides.iter().enumerate() {
                // Distinct dedup keys for every run of every load.
                let run = (index * 100 + rep) * 10 + side + 1;
                let windi = Windi::start_on(ctx, db, options(clients, nats)).await?;
                if warmup > 0 {
                    wrk(&windi.api_url, &lua, clients, warmup, run * 10 + 1).await?;
                }
                let rate = wrk(&windi.api_url, &lua, clients, seconds, run * 10 + 2).await?;
                db = windi.stop().await;
                eprintln!(
                    "  send {load:?} {clients} clients rep {rep}: windi (NATS {}) {rate:.0}/s",
                    if nats { "on" } else { "off" }
                );
                windi_rates[side].push(rate);
            }
            let run = (index * 100 + rep) * 10;
            if warmup > 0 {
                pgbench(&db, &sql, clients, warmup, run * 10 + 1).await?;
            }
            let pg = pgbench(&db, &sql, clients, seconds, run * 10 + 2).await?;
            eprintln!("  send {load:?} {clients} clients rep {rep}: pgbench {pg:.0}/s");
            pg_rates.push(pg);
        }
        let (name, baseline) = match load {
            Load::ManyChats => (
                format!(
                    "{clients} clients, {chats} private chats of {} users",
                    data.users.len()
                ),
                "pgbench, the send transaction",
            ),
            Load::HotChat => (
                format!("{clients} clients, all into one group of {group_members}"),
                "pgbench, the send transaction, same chat",
            ),
        };
        for (side, &nats) in sides.iter().enumerate() {
            let name = if nats {
                name.clone()
            } else {
                format!("{name}, events in-process (NATS off)")
            };
            let mut figure = Figure::new("send", name, "msg/s", &windi_rates[side])
                .against(baseline, &pg_rates)
                .note(format!(
                    "wrk -t2 -c{clients} vs pgbench -M prepared -c{clients} -j2, {seconds} s each, \
                     interleaved; NATS {}; Postgres without TLS on both sides; \
                     DB_MAX_CONNECTIONS={clients}",
                    if nats {
                        "on (JetStream, acks awaited in the background)"
                    } else {
                        "off (in-process events)"
                    }
                ));
            if nats && matches!(load, Load::ManyChats) {
                figure = figure.target(Target::RatioAtLeast(0.8));
            }
            figures.push(figure);
        }
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

fn options(clients: usize, nats: bool) -> WindiOptions {
    WindiOptions {
        nats,
        ..WindiOptions::default()
    }
    .env("DB_MAX_CONNECTIONS", clients)
}

fn tempdir(ctx: &Ctx) -> anyhow::Result<std::path::PathBuf> {
    let dir = ctx
        .repo
        .join(format!("target/bench/tmp-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// 2K users, K private chats (each opened by a first message from user 2k to 2k+1), and one
/// group of the first `group_members` users.
async fn setup(
    windi: &Windi,
    api: &Api,
    chats: usize,
    group_members: usize,
) -> anyhow::Result<Data> {
    let users = bulk_users(windi, api, 2 * chats.max(group_members), "send").await?;
    ensure!(
        users.windows(2).all(|w| w[1].id == w[0].id + 1),
        "the bulk users' ids are not contiguous"
    );
    let mut chat_ids = Vec::with_capacity(chats);
    for k in 0..chats {
        let (a, b) = (&users[2 * k], &users[2 * k + 1]);
        let m = api
            .send(
                &a.token,
                To::User(b.id),
                "hello",
                Some(&format!("open-{k}")),
            )
            .await?;
        chat_ids.push(
            m["chat_id"]
                .as_i64()
                .context("a send answered no chat_id")?,
        );
    }
    ensure!(
        chat_ids.windows(2).all(|w| w[1] == w[0] + 1),
        "the private chats' ids are not contiguous"
    );
    let members: Vec<i64> = users[1..group_members].iter().map(|u| u.id).collect();
    let group = api
        .group(&users[0].token, "bench hot chat", &members)
        .await?;
    Ok(Data {
        first_chat: chat_ids[0],
        chats,
        group,
        group_members,
        users,
    })
}

/// wrk's script: a table of (token, chat) pairs to pick from at random, and a dedup key of
/// `wrk-<run>-<thread>-<n>` per request.
fn wrk_script(data: &Data, load: Load) -> String {
    let mut pairs = String::new();
    match load {
        Load::ManyChats => {
            for k in 0..data.chats {
                let token = &data.users[2 * k].token;
                let _ = writeln!(pairs, "  {{\"{token}\", {}}},", data.first_chat + k as i64);
            }
        }
        Load::HotChat => {
            for user in &data.users[..data.group_members] {
                let _ = writeln!(pairs, "  {{\"{}\", {}}},", user.token, data.group);
            }
        }
    }
    format!(
        r#"local pairs = {{
{pairs}}}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  run = args[1]
  sent = 0
  math.randomseed(tonumber(run) * 100 + id)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local p = pairs[math.random(#pairs)]
  sent = sent + 1
  wrk.headers["Authorization"] = "Bearer " .. p[1]
  return wrk.format(nil, "/chat/message", nil,
    '{{"chat_id":' .. p[2] .. ',"text":"{TEXT}","dedup_key":"wrk-' .. run .. '-' .. id .. '-' .. sent .. '"}}')
end
"#
    )
}

/// The send transaction as `shared/src/service/send.rs` runs it for a send into a chat by id,
/// each statement as `shared/src/store/messages.rs` writes it (parameters become pgbench
/// variables; `reply_to` is NULL, the content hash a fixed 32 bytes).
fn pgbench_script(data: &Data, load: Load) -> String {
    let pick = match load {
        Load::ManyChats => format!(
            "\\set k random(0, {})\n\\set chat {} + :k\n\\set sender {} + 2 * :k\n",
            data.chats - 1,
            data.first_chat,
            data.users[0].id
        ),
        Load::HotChat => format!(
            "\\set chat {}\n\\set sender random({}, {})\n",
            data.group,
            data.users[0].id,
            data.users[data.group_members - 1].id
        ),
    };
    // `messages::message_columns!` for a message aliased `m`.
    let columns =
        "m.id, m.chat_id, m.seq, m.sender_id, m.text, m.created_at AS timestamp, m.dedup_key,
         m.rev, m.edited_at, m.deleted_at IS NOT NULL AS deleted, m.reply_to, m.reactions, m.attachments,
         m.mentions, m.pinned_at,
         NOT EXISTS (SELECT 1 FROM chat_members r
                     WHERE r.chat_id = m.chat_id AND r.user_id <> m.sender_id
                       AND r.shown_read_seq < m.seq) AS read";
    let hash = format!("'\\x{}'::bytea", "ab".repeat(32));
    format!(
        r#"{pick}\set n :n + 1
\set key :run * 1000000000000 + :client_id * 1000000000 + :n
BEGIN;
SELECT {columns}, m.content_hash FROM messages m WHERE m.sender_id = :sender AND m.dedup_key = CAST(:key AS text);
UPDATE chats SET last_seq = last_seq + 1, rev = rev + 1
    WHERE id = :chat AND EXISTS (SELECT 1 FROM chat_members WHERE chat_id = :chat AND user_id = :sender)
         RETURNING last_seq, rev \gset
WITH m AS (
             INSERT INTO messages
                 (chat_id, seq, rev, created_rev, sender_id, text, dedup_key, content_hash, reply_to,
                  attachments, mentions)
             SELECT :chat, :last_seq, :rev, :rev, :sender, '{TEXT}', CAST(:key AS text), {hash}, CAST(NULL AS bigint),
                    '[]'::jsonb, '{{}}'::bigint[]
             WHERE EXISTS (SELECT 1 FROM chat_members WHERE chat_id = :chat AND user_id = :sender)
               AND NOT EXISTS (
                   SELECT 1 FROM chats c JOIN blocks b
                       ON (b.blocker_id = c.private_low AND b.blocked_id = c.private_high)
                       OR (b.blocker_id = c.private_high AND b.blocked_id = c.private_low)
                   WHERE c.id = :chat)
               AND (CAST(NULL AS bigint) IS NULL
                    OR EXISTS (SELECT 1 FROM messages r WHERE r.id = CAST(NULL AS bigint) AND r.chat_id = :chat))
             ON CONFLICT (sender_id, dedup_key) DO NOTHING
             RETURNING *),
         ch AS (
             INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
             SELECT chat_id, rev, 'message', id, sender_id FROM m),
         mn AS (
             INSERT INTO message_mentions (user_id, chat_id, seq, message_id)
             SELECT u, m.chat_id, m.seq, m.id FROM m, unnest(m.mentions) u
             WHERE u <> m.sender_id),
         mk AS (
             UPDATE chat_members me
             SET last_read_seq = m.seq, read_rev = m.rev, read_xid = pg_current_xact_id() FROM m
             WHERE me.chat_id = m.chat_id AND me.user_id = m.sender_id AND me.last_read_seq < m.seq
             RETURNING me.chat_id, me.user_id, me.last_read_seq, me.receipts),
         rm AS (
             INSERT INTO receipt_marks (chat_id, user_id, kind, seq)
             SELECT chat_id, user_id, 'read', last_read_seq FROM mk)
         SELECT {columns}, (SELECT last_read_seq FROM mk) AS marker,
                coalesce((SELECT NOT receipts FROM mk), false) AS marker_hidden FROM m;
COMMIT;
"#
    )
}

/// One wrk run; answers requests per second, refusing a run with any non-2xx answer or
/// socket error (a fast failure is not throughput).
async fn wrk(
    api: &str,
    script: &Path,
    clients: usize,
    seconds: u64,
    run: usize,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{clients}"),
        &format!("-d{seconds}s"),
        "-s",
    ])
    .arg(script)
    .args([api, "--", &run.to_string()]);
    let out = run_tool(cmd).await?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw failures:\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))
}

/// One pgbench run of `script`; answers transactions per second.
async fn pgbench(
    db: &BenchDb,
    script: &Path,
    clients: usize,
    seconds: u64,
    run: usize,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new("pgbench");
    cmd.args([
        "-n",
        "-M",
        "prepared",
        &format!("-c{clients}"),
        "-j2",
        &format!("-T{seconds}"),
        "-D",
        &format!("run={run}"),
        "-D",
        "n=0",
        "-f",
    ])
    .arg(script)
    .arg(&db.url);
    let out = run_tool(cmd).await?;
    if let Some(failed) = out
        .lines()
        .find(|l| l.contains("failed transactions") && !l.contains(": 0 "))
    {
        bail!("pgbench transactions failed: {failed}\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{out}"))
}
