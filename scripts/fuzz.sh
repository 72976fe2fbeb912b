#!/usr/bin/env bash
# Fuzz the HTTP API from its own contract: schemathesis reads /openapi.json and sends generated
# requests, valid and invalid, with a real token, running every check it has (no 5xx, statuses,
# content types, headers and bodies as documented, bad input rejected, good input accepted, auth
# not ignored, ...). Fails on any failure it finds.
#
#   scripts/fuzz.sh [max-examples]     (per operation; default 350: over 5,000 cases in all)
#
# It starts its own debug `windi` (the build the tests use, so CI builds nothing more) with the
# relay off, on a free port and a scratch database (dropped at the end) on FUZZ_ADMIN_URL's
# server, else on the Postgres the tests start,
# registers Alice, Bob and Carol, logs Alice in and gives her a private chat and a group with
# messages, so the chat routes find data. The per-user rate limits are raised for the run
# (LIMIT_*): the fuzzer is one user sending as fast as it can, and a 429 is not what it is
# looking for. schemathesis is pinned in scripts/requirements-fuzz.txt and installed into
# target/venv-fuzz. FUZZ_SEED=N repeats a run; the reports (JUnit, NDJSON) and windi's log are
# left in target/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without FUZZ_ADMIN_URL, the run's own Postgres (the one the tests start; embedded/src/test_services.rs).
if [ -z "${FUZZ_ADMIN_URL:-}" ]; then
  exec cargo run -q -p windi-embedded --bin with-test-services -- "$0" "$@"
fi
max_examples=${1:-350}
admin=${FUZZ_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=windi_fuzz_$$_$(date +%s)
out=target/fuzz
mkdir -p "$out"
rm -rf "${out:?}"/*

cleanup() {
  if [ -n "${server:-}" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# schemathesis, pinned, in a venv of its own; reinstalled only when the pins change.
venv=target/venv-fuzz
if [ ! -x "$venv/bin/schemathesis" ] || [ scripts/requirements-fuzz.txt -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-fuzz.txt
  touch "$venv/.installed"
fi

cargo build --quiet -p windi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
api=http://127.0.0.1:$port

export DATABASE_URL=${admin%/*}/$db PORT=$port WINDI_RELAY=off RUST_LOG=${RUST_LOG:-warn}
export JWT_SECRET_KEY=fuzz-only-fake-secret-0123456789abcdef
# The token must outlive the run.
export ACCESS_TOKEN_EXPIRE_MINUTES=240
export LIMIT_SENDS_PER_SEC=100000 LIMIT_SENDS_BURST=100000
export LIMIT_GROUPS_PER_MIN=1000000 LIMIT_GROUPS_BURST=100000
export LIMIT_TYPING_PER_SEC=100000 LIMIT_TYPING_BURST=100000
export LIMIT_SEARCHES_PER_SEC=100000 LIMIT_SEARCHES_BURST=100000
./target/debug/windi serve >"$out/windi.log" 2>&1 & server=$!
for _ in $(seq 100); do curl -sf "$api/health" >/dev/null && break; sleep 0.2; done
curl -sf "$api/health" >/dev/null || { cat "$out/windi.log"; echo "windi did not start" >&2; exit 1; }

post() { curl -sf -X POST "$api$1" -H 'Content-Type: application/json' "${@:3}" -d "$2"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
for who in alice bob carol; do
  post /auth/register "{\"name\":\"$who\",\"email\":\"$who@fuzz.example\",\"password\":\"fuzz-password-$who\"}" >/dev/null
done
login() { post /auth/login "{\"email\":\"$1@fuzz.example\",\"password\":\"fuzz-password-$1\"}" | field access_token; }
token=$(login alice)
# The operations that end the caller's session (or account) get a run of their own with Carol's
# token: in the main run the first one to succeed would end Alice's session, and every
# operation after it would see only 401s.
ending=("POST /auth/logout" "POST /auth/logout-all" "DELETE /auth/me" "DELETE /auth/sessions/{id}")
carol=$(login carol)
auth=(-H "Authorization: Bearer $token")
post /chat/message '{"recipient_id":2,"text":"hello Bob","dedup_key":"fuzz-1"}' "${auth[@]}" >/dev/null
group=$(post /chat/group '{"name":"fuzz group","participant_ids":[2,3]}' "${auth[@]}" | field chat_id)
for i in 1 2 3; do
  post /chat/message "{\"chat_id\":$group,\"text\":\"group message $i\"}" "${auth[@]}" >/dev/null
done
curl -sf -X PUT "$api/chat/message/1/reactions/%F0%9F%91%8D" "${auth[@]}" >/dev/null

# positive_data_acceptance wants every schema-valid request accepted (2xx, or 401/403/404/409).
# A few operations have rules that OpenAPI cannot state, and answer them with 422 naming the
# field; only those operations may answer a schema-valid request 422, every other check stays
# on for them, and every other operation gets no exception:
#   POST /chat/message        recipient_id or chat_id, not both (and one of them); reply_to
#                             must be a message of the same chat
#   GET /chat/history/{id}    offset cannot be combined with before_seq / after_seq
#   POST /chat/group          participant_ids must be existing users (unknown_user)
#   POST and DELETE /chat/group/{id}/members...   only a group's members change (not_a_group)
#   PUT and DELETE .../reactions/{emoji}          an emoji is 1-32 bytes (a schema counts
#                             characters) without whitespace or control characters
#   GET /users/search, PATCH /auth/me             a name or query without control characters
#   GET /chat/search          q must hold a word (a letter or digit, not only -excluded ones)
#                             and at most 12 terms
#   PUT /users/{id}/block     the id is not the caller's own
cat >"$out/schemathesis.toml" <<TOML
$(for op in "POST /chat/message" "GET /chat/history/{chat_id}" "POST /chat/group" \
  "POST /chat/group/{chat_id}/members" "DELETE /chat/group/{chat_id}/members/{user_id}" \
  "PUT /chat/message/{id}/reactions/{emoji}" "DELETE /chat/message/{id}/reactions/{emoji}" \
  "GET /users/search" "PATCH /auth/me" "GET /chat/search" "PUT /users/{id}/block"; do
  printf '[[operations]]\ninclude-name = "%s"\n' "$op"
  printf 'checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]\n\n'
done)
TOML

# fuzz <token> <schemathesis filter args...>: one run, all checks; its status in $status.
# One worker: on Python 3.11 the ast module keeps its recursion depth per interpreter, so two
# worker threads parsing at once (hypothesis describes lambdas with ast.parse) fail at random
# with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905's family; a
# CI run failed on it in the stateful phase).
fuzz() {
  local token=$1
  shift
  set +e
  "$venv/bin/schemathesis" --config-file "$out/schemathesis.toml" run "$api/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $token" \
    --max-examples "$max_examples" \
    ${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$out" \
    --no-color "$@" 2>&1 | tee -a "$out/schemathesis.out"
  status=${PIPESTATUS[0]}
  set -e
}

echo "fuzzing $api/openapi.json: max $max_examples examples per operation, all checks"
excluded=()
included=()
for op in "${ending[@]}"; do
  excluded+=(--exclude-name "$op")
  included+=(--include-name "$op")
done
fuzz "$token" "${excluded[@]}"
main_status=$status
echo "fuzzing the operations that end a session, as Carol"
fuzz "$carol" "${included[@]}"
[ "$main_status" -ne 0 ] && status=$main_status

# A 500 is logged as "request failed", a 503 as "database unavailable".
echo "windi logged $(grep -c 'request failed\|database unavailable' "$out/windi.log" || true) server errors ($out/windi.log)"
./target/debug/windi check
exit "$status"
