#!/usr/bin/env bash
# Benchmark: GET /chat/list for a user whose chats are full of unread messages against the same
# chats with nothing unread — issue 8 wants the first within 2× of the second, which holds when
# unread counts come from counters (last_seq − marker − deleted after it), not from counting rows.
#
#   bench/chatlist.sh [seconds] [connections] [repetitions] [chats] [messages]
#                                          (defaults 10, 4, 3, 200 and 5000; needs wrk)
#
# `windi demo` migrates a fresh database and makes Alice, Bob and Carol; the chats are then
# written with SQL straight into it: `chats` groups of the three, each holding `messages`
# messages from Alice, with the invariants the send path keeps (last_seq = rev = the message
# count, rev = created_rev = seq per message, one chat_changes row per message, Alice's marker
# at last_seq). Bob's markers are at 0: every message is unread for him. Carol's are at
# last_seq: nothing is. Both list the very same chats, so the only difference is the unread
# count. wrk asks for the whole list (limit 200) as Carol, then Bob, then Carol… ; the ratio
# is taken within each repetition and reported as the median with the min–max.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
conns=${2:-4}
reps=${3:-3}
nchats=${4:-200}
nmessages=${5:-5000}
admin=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin%/*}
db=windi_bench_chatlist_$$
port=${BENCH_PORT:-18710}
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

echo "loading $nchats chats × $nmessages messages"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -v nchats="$nchats" -v nmessages="$nmessages" <<'SQL'
BEGIN;
SELECT id AS alice FROM users WHERE email = 'alice.demo@example.com' \gset
SELECT id AS bob FROM users WHERE email = 'bob.demo@example.com' \gset
SELECT id AS carol FROM users WHERE email = 'carol.demo@example.com' \gset
CREATE TEMP TABLE bench_chats ON COMMIT DROP AS
  WITH c AS (
    INSERT INTO chats (kind, name, creator_id, last_seq, rev, created_at)
    SELECT 'group', 'bench ' || i, :alice, :nmessages, :nmessages, now() - interval '30 days'
    FROM generate_series(1, :nchats) i
    RETURNING id)
  SELECT id, row_number() OVER (ORDER BY id) AS n FROM c;
INSERT INTO chat_members (chat_id, user_id, role, last_read_seq)
  SELECT id, :alice, 'owner', :nmessages FROM bench_chats
  UNION ALL SELECT id, :bob, 'member', 0 FROM bench_chats
  UNION ALL SELECT id, :carol, 'member', :nmessages FROM bench_chats;
UPDATE users SET member_rev = member_rev + :nchats WHERE id IN (:alice, :bob, :carol);
-- The messages in send order: chat by chat in turn, a millisecond apart, ending a second after
-- the demo's last message, so the bench chats are the most recently active: the whole first page.
SELECT coalesce(max(created_at), now()) + interval '1 second' AS last_at FROM messages \gset
INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, created_at, content_hash)
  SELECT c.id, s, s, s, :alice, t.text,
         :'last_at'::timestamptz - ((:nmessages - s) * :nchats + :nchats - c.n) * interval '1 millisecond',
         sha256(int8send(c.id) || convert_to(t.text, 'UTF8'))
  FROM bench_chats c, generate_series(1, :nmessages) s,
       LATERAL (SELECT 'bench message ' || s || ', about as long as a real one: sixty chars' AS text) t
  ORDER BY s, c.n;
INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id, created_at)
  SELECT m.chat_id, m.rev, 'message', m.id, m.sender_id, m.created_at
  FROM messages m JOIN bench_chats c ON c.id = m.chat_id;
COMMIT;
VACUUM ANALYZE;
SQL
./target/release/windi check >/dev/null

./target/release/windi serve & server=$!
for _ in $(seq 50); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.2; done
api=http://localhost:$port
login() {
  curl -sf -X POST "$api/auth/login" -d "username=$1.demo@example.com&password=$1-demo-pass" \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
declare -A token=([read]=$(login carol) [unread]=$(login bob))
declare -A expected=([read]=0 [unread]=$((nchats * nmessages)))
url="$api/chat/list?limit=200"
for who in read unread; do
  # The bench chats are the newest, so they come first.
  unread=$(curl -sf "$url" -H "Authorization: Bearer ${token[$who]}" \
    | grep -o '"unread_count":[0-9]*' | head -n "$nchats" | awk -F: '{ s += $2 } END { print s + 0 }')
  [ "$unread" = "${expected[$who]}" ] \
    || { echo "$who: /chat/list shows $unread unread, expected ${expected[$who]}"; exit 1; }
done

declare -A rates
ratios=()
for rep in $(seq "$reps"); do
  for who in read unread; do
    wrk -t2 -c"$conns" -d"${seconds}s" -H "Authorization: Bearer ${token[$who]}" "$url" \
      > "$workdir/$who.$rep.out"
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$workdir/$who.$rep.out")
    [ -z "$non2xx" ] || { cat "$workdir/$who.$rep.out"; echo "windi answered $non2xx non-2xx"; exit 1; }
    rates[$who.$rep]=$(awk '/Requests\/sec/ { printf "%.1f", $2 }' "$workdir/$who.$rep.out")
    echo "repetition $rep, $who: ${rates[$who.$rep]} lists/s"
  done
  ratios+=("$(awk -v u="${rates[unread.$rep]}" -v r="${rates[read.$rep]}" 'BEGIN { print u / r }')")
done

# median and min–max of a list of numbers, one per line
stats() { sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
  printf "%.'"$1"'f (%.'"$1"'f–%.'"$1"'f)", m, v[1], v[NR] }'; }
ratio=$(printf '%s\n' "${ratios[@]}" | stats 2)
echo
echo "GET /chat/list?limit=200, $nchats chats, $conns connections, ${seconds}s × $reps interleaved; median (min–max):"
echo "nothing unread (Carol):    $(for r in $(seq "$reps"); do echo "${rates[read.$r]}"; done | stats 1) lists/s"
echo "$nmessages unread a chat (Bob): $(for r in $(seq "$reps"); do echo "${rates[unread.$r]}"; done | stats 1) lists/s"
verdict=$(awk -v r="${ratio%% *}" 'BEGIN { print r >= 0.5 ? "within 2×, as issue 8 requires" : "NOT within 2×: issue 8 requires it" }')
echo "ratio unread/nothing-unread: $ratio — $verdict"
