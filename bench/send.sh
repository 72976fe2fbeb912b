#!/usr/bin/env bash
# Benchmark: POST /chat/message through windi against the same transaction run by pgbench
# straight on Postgres — the floor any implementation of the send path has on this machine.
#
#   bench/send.sh [seconds] [connections]      (defaults 20 and 16; needs wrk and pgbench)
#
# Both sides send into the same 64 group chats as one user, with the same concurrency, in the
# same run: windi does auth, JSON, validation, the dedup check, the seq/insert/marker
# transaction and the event; pgbench does only the transaction (update last_seq, insert,
# move the sender's marker).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
conns=${2:-16}
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
./target/release/windi demo >/dev/null
./target/release/windi serve & server=$!
for _ in $(seq 50); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.2; done

api=http://localhost:$port
token=$(curl -sf -X POST "$api/auth/login" -d 'username=alice@example.com&password=alice-demo-pass' \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
chats=()
for i in $(seq 64); do
  id=$(curl -sf -X POST "$api/chat/group" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "{\"name\":\"bench $i\",\"participant_ids\":[2,3]}" \
    | sed -E 's/.*"chat_id":([0-9]+).*/\1/')
  chats+=("$id")
done
alice=$(curl -sf "$api/auth/me" -H "Authorization: Bearer $token" | sed -E 's/.*"id":([0-9]+).*/\1/')

cat > "$workdir/send.lua" <<LUA
local chats = { $(IFS=,; echo "${chats[*]}") }
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
request = function()
  local chat = chats[math.random(#chats)]
  return wrk.format(nil, "/chat/message", nil,
    '{"chat_id":' .. chat .. ',"text":"benchmark message with a realistic length, about sixty chars"}')
end
LUA
echo "windi: POST /chat/message, $conns connections, ${seconds}s"
wrk -t2 -c"$conns" -d"${seconds}s" -s "$workdir/send.lua" "$api" | tee "$workdir/wrk.out"
windi_rate=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$workdir/wrk.out")
non2xx=$(awk '/Non-2xx/ { print $NF }' "$workdir/wrk.out")

cat > "$workdir/send.sql" <<SQL
\\set chat random(${chats[0]}, ${chats[63]})
BEGIN;
UPDATE chats SET last_seq = last_seq + 1 WHERE id = :chat RETURNING last_seq AS seq \\gset
INSERT INTO messages (chat_id, seq, sender_id, text, content_hash)
  VALUES (:chat, :seq, $alice, 'benchmark message with a realistic length, about sixty chars', '\\x00');
UPDATE chat_members SET last_read_seq = :seq WHERE chat_id = :chat AND user_id = $alice AND last_read_seq < :seq;
COMMIT;
SQL
echo "pgbench: the same transaction, $conns clients, ${seconds}s"
pgbench -n -c "$conns" -j 2 -T "$seconds" -f "$workdir/send.sql" "$DATABASE_URL" | tee "$workdir/pgbench.out"
pg_rate=$(awk '/^tps/ { printf "%.0f", $3 }' "$workdir/pgbench.out")
./target/release/windi check >/dev/null

echo
echo "windi POST /chat/message: $windi_rate/s (non-2xx: ${non2xx:-0})"
echo "pgbench same transaction: $pg_rate/s"
awk -v w="$windi_rate" -v p="$pg_rate" 'BEGIN { printf "ratio:                    %.2f of raw Postgres\n", w / p }'
