#!/usr/bin/env bash
# Benchmark: `windi generate` against the machine's raw Postgres COPY of the very same rows.
#
#   bench/generate.sh [messages] [more windi generate options]      (default 1000000)
#   bench/generate.sh 0 --chats 0 --tail-chats 1 --tail-messages 1000000   (one chat of 1M)
#
# 1. windi generate loads users, chats, messages and their change log (one `chat_changes` row
#    per message) into a fresh database A (timed by windi: the messages and their changes).
# 2. The messages and changes are dumped as COPY text; a database B is cloned from A with both
#    tables empty.
# 3. psql's \copy loads both files into B in one transaction (the baseline: same rows, same
#    schema, indexes and constraints).
# The ratio windi/psql says how much windi's generation adds over Postgres's own floor.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-1000000}
shift || true
admin=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin%/*}
a=windi_bench_a_$$ b=windi_bench_b_$$ dump=$(mktemp) changes=$(mktemp)
cleanup() {
  psql "$admin" -qc "DROP DATABASE IF EXISTS $a WITH (FORCE)" -c "DROP DATABASE IF EXISTS $b WITH (FORCE)" >/dev/null
  rm -f "$dump" "$changes"
}
trap cleanup EXIT

cargo build --release -q -p windi
export JWT_SECRET_KEY=${JWT_SECRET_KEY:-bench-only-fake-secret-0123456789abcdef} RUST_LOG=warn
DATABASE_URL="$base/$a" ./target/release/windi generate --messages "$messages" "$@" | tee /tmp/windi-bench.out
windi_rate=$(sed -nE 's/.*messages loaded at ([0-9]+)\/s.*/\1/p' /tmp/windi-bench.out)
# Every message written, the long tail's included.
messages=$(sed -nE 's/.* chats, ([0-9]+) messages in .*/\1/p' /tmp/windi-bench.out)
DATABASE_URL="$base/$a" ./target/release/windi check >/dev/null

# With their ids: the changes point at them.
cols="id, chat_id, seq, rev, created_rev, sender_id, text, created_at, content_hash"
change_cols="chat_id, rev, kind, message_id, user_id, created_at"
psql "$base/$a" -qc "\\copy (SELECT $cols FROM messages ORDER BY chat_id, seq) TO '$dump'"
psql "$base/$a" -qc "\\copy (SELECT $change_cols FROM chat_changes ORDER BY chat_id, rev) TO '$changes'"
psql "$admin" -qc "CREATE DATABASE $b TEMPLATE $a"
psql "$base/$b" -qc "TRUNCATE messages, message_reactions, chat_changes"
start=$(date +%s.%N)
psql "$base/$b" -1 -q -c "\\copy messages ($cols) FROM '$dump'" -c "\\copy chat_changes ($change_cols) FROM '$changes'"
end=$(date +%s.%N)
psql_rate=$(awk -v n="$messages" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }')

echo
echo "windi generate: $windi_rate messages/s"
echo "psql \\copy:     $psql_rate messages/s (same rows and changes, same schema)"
awk -v w="$windi_rate" -v p="$psql_rate" 'BEGIN { printf "ratio:          %.2f of raw COPY\n", w / p }'
