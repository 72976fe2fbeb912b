#!/usr/bin/env bash
# Benchmark: what revisions cost the send path, raw Postgres only (pgbench), for the two designs
# issue 8 leaves open — a change log table, or rev columns on the rows that change.
#
#   bench/revisions.sh [seconds] [clients] [repetitions]      (defaults 10, 16 and 3)
#
# One seeded database (every migrations/*.sql in order, 3 users, 64 group chats of 3 members,
# one sender, like bench/send.sh) is cloned three times, so each variant writes into a database
# of its own and no variant's rows change another's tables:
#   A "before":      update last_seq, insert the message, move the sender's marker (the old send);
#   B "change log":  membership check, dedup lookup, bump last_seq and rev, insert the message with
#                    its rev, insert its chat_changes row, move the marker (the chosen design);
#   C "rev columns": B without the chat_changes row, with the unique (chat_id, rev) index on
#                    messages that "everything after rev R" would then read from.
# The runs are interleaved (A B C A B C …, a checkpoint before each) so drift of the machine
# falls on all three alike; each ratio is taken within one repetition, and the report gives
# medians with the min–max over the repetitions.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
clients=${2:-16}
reps=${3:-3}
admin=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin%/*}
seed=windi_bench_rev_seed_$$
variants=(A B C)
declare -A name=([A]=before [B]="change log" [C]="rev columns")
workdir=$(mktemp -d)
cleanup() {
  for db in "$seed" "${seed}_a" "${seed}_b" "${seed}_c"; do
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  done
  rm -rf "$workdir"
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $seed"
for f in migrations/*.sql; do psql "$base/$seed" -q -v ON_ERROR_STOP=1 -f "$f"; done
psql "$base/$seed" -q -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO users (name, email, password_hash)
  SELECT 'user ' || i, 'user' || i || '@bench.invalid', 'x' FROM generate_series(1, 3) i;
INSERT INTO chats (kind, name, creator_id) SELECT 'group', 'bench ' || i, 1 FROM generate_series(1, 64) i;
INSERT INTO chat_members (chat_id, user_id, role)
  SELECT c.id, u.id, CASE WHEN u.id = 1 THEN 'owner' ELSE 'member' END FROM chats c, users u;
SQL
for v in "${variants[@]}"; do psql "$admin" -qc "CREATE DATABASE ${seed}_${v,,} TEMPLATE $seed"; done
psql "$base/${seed}_c" -qc "CREATE UNIQUE INDEX messages_chat_rev_key ON messages (chat_id, rev)"

# :n counts each client's transactions (pgbench keeps a client's variables between them), so
# run, client and n make every dedup key unique: the lookup misses and the insert never conflicts.
text="'benchmark message with a realistic length, about sixty chars'"
common='\set chat random(1, 64)
\set n :n + 1
\set key :run * 1000000000000 + :client_id * 1000000000 + :n'
cat > "$workdir/A.sql" <<SQL
$common
BEGIN;
UPDATE chats SET last_seq = last_seq + 1 WHERE id = :chat RETURNING last_seq AS seq \\gset
INSERT INTO messages (chat_id, seq, sender_id, text, dedup_key, content_hash)
  VALUES (:chat, :seq, 1, $text, CAST(:key AS text), '\\x00');
UPDATE chat_members SET last_read_seq = :seq WHERE chat_id = :chat AND user_id = 1 AND last_read_seq < :seq;
COMMIT;
SQL
# B and C differ only in the chat_changes insert.
send_with_rev() {
  cat <<SQL
$common
BEGIN;
SELECT c.id FROM chats c JOIN chat_members m ON m.chat_id = c.id AND m.user_id = 1
  WHERE c.id = :chat FOR KEY SHARE OF m;
SELECT id FROM messages WHERE sender_id = 1 AND dedup_key = CAST(:key AS text);
WITH c AS (UPDATE chats SET last_seq = last_seq + 1, rev = rev + 1 WHERE id = :chat RETURNING last_seq, rev),
     m AS (INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, dedup_key, content_hash)
           SELECT :chat, c.last_seq, c.rev, c.rev, 1, $text, CAST(:key AS text), '\\x00' FROM c
           ON CONFLICT (sender_id, dedup_key) DO NOTHING RETURNING id, seq, rev),
$1
     mk AS (UPDATE chat_members SET last_read_seq = (SELECT seq FROM m)
            WHERE chat_id = :chat AND user_id = 1 AND last_read_seq < (SELECT seq FROM m) RETURNING last_read_seq)
SELECT * FROM m;
COMMIT;
SQL
}
send_with_rev "     ch AS (INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id)
           SELECT :chat, rev, 'message', id, 1 FROM m)," > "$workdir/B.sql"
send_with_rev "" > "$workdir/C.sql"

declare -A tps
for rep in $(seq "$reps"); do
  for v in "${variants[@]}"; do
    db=$base/${seed}_${v,,}
    psql "$db" -qc CHECKPOINT
    pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -D run="$rep" -D n=0 -f "$workdir/$v.sql" "$db" \
      > "$workdir/$v.$rep.out" 2>&1 || { cat "$workdir/$v.$rep.out"; exit 1; }
    tps[$v.$rep]=$(awk '/^tps/ { printf "%.0f", $3 }' "$workdir/$v.$rep.out")
    failed=$(awk '/failed transactions/ { print $5 }' "$workdir/$v.$rep.out")
    [ "${failed:-0}" = 0 ] || { cat "$workdir/$v.$rep.out"; exit 1; }
    echo "repetition $rep, $v (${name[$v]}): ${tps[$v.$rep]} tps"
  done
done

# Every message of B has its change, C's revs are unique, every variant's rows are all there.
for v in "${variants[@]}"; do
  psql "$base/${seed}_${v,,}" -Atc "SELECT count(*) FROM messages" > "$workdir/$v.rows"
done
[ "$(psql "$base/${seed}_b" -Atc "SELECT count(*) FROM messages m JOIN chat_changes c
      ON c.chat_id = m.chat_id AND c.rev = m.rev AND c.message_id = m.id")" = "$(cat "$workdir/B.rows")" ] \
  || { echo "B: a message without its change row"; exit 1; }

# median and min–max of a list of numbers, one per line
stats() { sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
  printf "%.'"$1"'f (%.'"$1"'f–%.'"$1"'f)", m, v[1], v[NR] }'; }
# the per-repetition ratios of variant $1 to variant $2, one per line
ratios() { for rep in $(seq "$reps"); do
  awk -v a="${tps[$1.$rep]}" -v b="${tps[$2.$rep]}" 'BEGIN { print a / b }'; done; }

echo
echo "pgbench, $clients clients, ${seconds}s × $reps interleaved; median (min–max):"
for v in "${variants[@]}"; do
  printf '  %s %-12s %s tps, %s messages\n' "$v" "${name[$v]}" \
    "$(for rep in $(seq "$reps"); do echo "${tps[$v.$rep]}"; done | stats 0)" "$(cat "$workdir/$v.rows")"
done
echo "  B/A $(ratios B A | stats 2)   C/A $(ratios C A | stats 2)   B/C $(ratios B C | stats 2)"
# The verdict: the medians, and how many repetitions agree on the sign (a 2-core machine shared
# with builds moves by more than the difference measured here; see the min–max).
ratios B C | sort -g | awk -v ba="$(ratios B A | stats 2)" '{ v[NR] = $1; below += $1 < 1 } END {
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  cost = m < 1 ? sprintf("costs the send path %.0f%%", (1 - m) * 100) : "costs the send path nothing"
  printf "conclusion: the change log %s against rev columns (B/C %.2f, below 1 in %d of %d repetitions); against the old send B/A is %s\n",
    cost, m, below, NR, ba }'
