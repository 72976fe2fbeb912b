#!/usr/bin/env bash
# Benchmark: POST /chat/message through windi against the same transaction run by pgbench
# straight on Postgres — the floor any implementation of the send path has on this machine.
#
#   bench/send.sh [seconds] [connections] [repetitions]      (defaults 20, 16 and 3; needs wrk and pgbench)
#   PROFILE=1 bench/send.sh …       also samples the machine with perf during the first windi run
#
# Both sides send into the same 64 group chats as one user, with the same concurrency, in the
# same run and database, each request with a dedup key of its own: windi does auth, JSON,
# validation, the send transaction and the event; pgbench does only the transaction, statement
# for statement as windi runs it — the dedup lookup (a miss), last_seq and rev, then one
# statement with the insert (guarded by the membership check), its chat_changes row and the
# sender's marker. The runs are interleaved (windi, pgbench, windi, …) so drift of the
# machine falls on both; the ratio is taken within each repetition and reported as the median
# with the min–max.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
conns=${2:-16}
reps=${3:-3}
admin=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin%/*}
db=windi_bench_send_$$
port=${BENCH_PORT:-18700}
workdir=$(mktemp -d)
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  rm -rf "$workdir"
}
trap cleanup EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }

cargo build --release -q -p windi
export DATABASE_URL="$base/$db" PORT=$port RELAY_PORT=$((port + 1)) RUST_LOG=warn
export JWT_SECRET_KEY=${JWT_SECRET_KEY:-bench-only-fake-secret-0123456789abcdef}
# One user sends thousands a second here: the per-user limits (20/s by default) are raised on
# purpose, so the benchmark measures the send path, not the limiter refusing it.
export LIMIT_SENDS_PER_SEC=1000000000 LIMIT_SENDS_BURST=1000000000
export LIMIT_GROUPS_PER_MIN=1000000000 LIMIT_GROUPS_BURST=1000000000
./target/release/windi demo >/dev/null
./target/release/windi serve & server=$!
for _ in $(seq 50); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.2; done

api=http://localhost:$port
token=$(curl -sf -X POST "$api/auth/login" -d 'username=alice.demo@example.com&password=alice-demo-pass' \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
chats=()
for i in $(seq 64); do
  id=$(curl -sf -X POST "$api/chat/group" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "{\"name\":\"bench $i\",\"participant_ids\":[2,3]}" \
    | sed -E 's/.*"chat_id":([0-9]+).*/\1/')
  chats+=("$id")
done
alice=$(curl -sf "$api/auth/me" -H "Authorization: Bearer $token" | sed -E 's/.*"id":([0-9]+).*/\1/')

# A dedup key per request: the repetition comes as wrk's script argument, setup numbers the
# threads, each thread counts its own requests.
cat > "$workdir/send.lua" <<LUA
local chats = { $(IFS=,; echo "${chats[*]}") }
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  run = args[1]
  sent = 0
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
request = function()
  local chat = chats[math.random(#chats)]
  sent = sent + 1
  return wrk.format(nil, "/chat/message", nil,
    '{"chat_id":' .. chat .. ',"text":"benchmark message with a realistic length, about sixty chars",'
    .. '"dedup_key":"wrk-' .. run .. '-' .. id .. '-' .. sent .. '"}')
end
LUA

# The windi send transaction as the lead's send path runs it. :n counts each client's
# transactions (pgbench keeps a client's variables between them): run, client and n make every
# key unique, so the lookup misses and the insert never conflicts, as with wrk's keys.
cat > "$workdir/send.sql" <<SQL
\\set chat random(${chats[0]}, ${chats[63]})
\\set n :n + 1
\\set key :run * 1000000000000 + :client_id * 1000000000 + :n
BEGIN;
SELECT id, content_hash FROM messages WHERE sender_id = $alice AND dedup_key = CAST(:key AS text);
UPDATE chats SET last_seq = last_seq + 1, rev = rev + 1 WHERE id = :chat RETURNING last_seq AS seq, rev \\gset
WITH m AS (INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, dedup_key, content_hash, reply_to)
           SELECT :chat, :seq, :rev, :rev, $alice,
                  'benchmark message with a realistic length, about sixty chars', CAST(:key AS text), '\\x00', NULL
           WHERE EXISTS (SELECT 1 FROM chat_members WHERE chat_id = :chat AND user_id = $alice)
           ON CONFLICT (sender_id, dedup_key) DO NOTHING RETURNING *),
     ch AS (INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
            SELECT chat_id, rev, 'message', id, sender_id FROM m),
     mk AS (UPDATE chat_members me SET last_read_seq = m.seq FROM m
            WHERE me.chat_id = m.chat_id AND me.user_id = m.sender_id AND me.last_read_seq < m.seq
            RETURNING me.last_read_seq)
SELECT m.id, m.seq, m.rev, (SELECT last_read_seq FROM mk) FROM m;
COMMIT;
SQL

windi_rates=() pg_rates=() ratios=()
for rep in $(seq "$reps"); do
  # PROFILE=1: the whole machine is sampled (perf, call graphs) during the first windi run, so
  # the report splits the time between windi, Postgres and the load generator.
  if [ "${PROFILE:-0}" = 1 ] && [ "$rep" = 1 ]; then
    perf record -a -g -F 499 -o target/perf-send.data -- sleep "$seconds" 2>/dev/null & perf=$!
  fi
  wrk -t2 -c"$conns" -d"${seconds}s" -s "$workdir/send.lua" "$api" -- "$rep" > "$workdir/wrk.$rep.out"
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$workdir/wrk.$rep.out")
  [ -z "$non2xx" ] || { cat "$workdir/wrk.$rep.out"; echo "windi answered $non2xx non-2xx"; exit 1; }
  [ -n "${perf:-}" ] && { wait "$perf"; unset perf; }
  windi_rates+=("$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$workdir/wrk.$rep.out")")

  psql "$DATABASE_URL" -qc CHECKPOINT
  pgbench -n -M prepared -c "$conns" -j 2 -T "$seconds" -D run="$rep" -D n=0 -f "$workdir/send.sql" \
    "$DATABASE_URL" > "$workdir/pgbench.$rep.out" 2>&1 || { cat "$workdir/pgbench.$rep.out"; exit 1; }
  pg_rates+=("$(awk '/^tps/ { printf "%.0f", $3 }' "$workdir/pgbench.$rep.out")")
  ratios+=("$(awk -v w="${windi_rates[-1]}" -v p="${pg_rates[-1]}" 'BEGIN { print w / p }')")
  echo "repetition $rep: windi ${windi_rates[-1]}/s, pgbench ${pg_rates[-1]}/s"
done
./target/release/windi check >/dev/null
sent=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM messages WHERE dedup_key LIKE 'wrk-%'")
logged=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM messages m JOIN chat_changes c
    ON c.chat_id = m.chat_id AND c.rev = m.rev AND c.message_id = m.id")
total=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM messages")
[ "$logged" = "$total" ] || echo "warning: $((total - logged)) of $total messages have no chat_changes row at their rev"

# median and min–max of a list of numbers, one per line
stats() { sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
  printf "%.'"$1"'f (%.'"$1"'f–%.'"$1"'f)", m, v[1], v[NR] }'; }
echo
echo "$conns connections, ${seconds}s × $reps interleaved; median (min–max):"
echo "windi POST /chat/message: $(printf '%s\n' "${windi_rates[@]}" | stats 0)/s ($sent messages stored, all 2xx)"
echo "pgbench same transaction: $(printf '%s\n' "${pg_rates[@]}" | stats 0)/s"
echo "ratio:                    $(printf '%s\n' "${ratios[@]}" | stats 2) of raw Postgres"
if [ "${PROFILE:-0}" = 1 ]; then
  echo; echo "CPU by process during the first windi run (perf report --sort comm):"
  perf report -i target/perf-send.data --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
  echo "windi's own hottest symbols: perf report -i target/perf-send.data --comm windi --no-children --stdio"
fi
