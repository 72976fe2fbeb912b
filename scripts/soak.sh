#!/usr/bin/env bash
# Soak: a bounded run of steady mixed load against one windi, watching its memory.
#
#   scripts/soak.sh [seconds]          (default 180; CI runs 60)
#
# It starts its own debug `windi` (the build the tests use; API and embedded relay, events
# in-process) on free ports and a scratch database (dropped at the end) on SOAK_ADMIN_URL's
# server, else on the Postgres the tests start. The
# load (Python with aiohttp and websockets, pinned in scripts/requirements-soak.txt, in
# target/venv-soak) registers 6 users in 3 groups and 4 private chats, connects 4 WebSocket
# clients that only receive, and runs 8 HTTP workers, each one request at a time as fast as
# windi answers, for the given seconds: sends with dedup keys (some replayed: 200 and the same
# message), edits, reactions added and removed, deletions, history pages, chat lists,
# /chat/changes and read marks. The per-user rate limits are raised for the run (LIMIT_*):
# 8 workers over 6 users send faster than 20/s each, and 429s are not what a soak measures.
#
# windi's RSS is sampled every 5 s. It fails when
#   - any answer was 5xx, or any other answer was not the one the route promises (all 2xx
#     here), or a request failed in transport;
#   - memory is not flat: after warm-up (the first quarter of the run, at least 20 s), RSS grows
#     by more than max(16 MiB, 10 %) over its level at the end of warm-up;
#   - a WebSocket client got a change frame out of rev order, or an error frame;
#   - `windi check` finds a broken invariant at the end.
# The report (every status, the RSS samples, the frames) is left in target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without SOAK_ADMIN_URL, the run's own Postgres (the one the tests start; embedded/src/test_services.rs).
if [ -z "${SOAK_ADMIN_URL:-}" ]; then
  exec cargo run -q -p windi-embedded --bin with-test-services -- "$0" "$@"
fi
seconds=${1:-180}
admin=${SOAK_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=windi_soak_$$_$(date +%s)
out=target/soak
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

venv=target/venv-soak
if [ ! -x "$venv/bin/python" ] || [ scripts/requirements-soak.txt -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-soak.txt
  touch "$venv/.installed"
fi

cargo build --quiet -p windi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
relay_port=$(free_port)
export DATABASE_URL=${admin%/*}/$db PORT=$port RELAY_PORT=$relay_port RUST_LOG=${RUST_LOG:-warn}
export JWT_SECRET_KEY=soak-only-fake-secret-0123456789abcdef
export ACCESS_TOKEN_EXPIRE_MINUTES=240
export LIMIT_SENDS_PER_SEC=100000 LIMIT_SENDS_BURST=100000
export LIMIT_GROUPS_PER_MIN=1000000 LIMIT_GROUPS_BURST=100000
unset NATS_URL
./target/debug/windi serve >"$out/windi.log" 2>&1 & server=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
curl -sf "127.0.0.1:$port/health" >/dev/null || { cat "$out/windi.log"; echo "windi did not start" >&2; exit 1; }

echo "soak: ${seconds}s of mixed load on http://127.0.0.1:$port (relay :$relay_port), windi pid $server"
"$venv/bin/python" - "http://127.0.0.1:$port" "ws://127.0.0.1:$relay_port/ws" "$server" \
  "$seconds" "$out/report.json" <<'PY'
import asyncio
import json
import random
import sys
import time
from collections import Counter

import aiohttp
import websockets

USERS = 6
WORKERS = 8
WS_CLIENTS = 4
SAMPLE_EVERY = 5.0
# The weights of the mix: mostly reads and sends, as a chat client does.
MIX = {
    "send": 30,
    "replay": 4,
    "edit": 8,
    "react": 8,
    "unreact": 4,
    "delete": 2,
    "history": 16,
    "list": 10,
    "changes": 8,
    "read": 10,
}
THUMBS = "%F0%9F%91%8D"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Soak:
    def __init__(self, api, relay, pid, seconds):
        self.api, self.relay, self.pid, self.seconds = api, relay, pid, seconds
        self.statuses = Counter()  # "METHOD route status" -> count
        self.unexpected = []  # the first few answers that were not what the route promises
        self.transport_errors = Counter()
        self.ops = Counter()
        self.samples = []  # (elapsed s, RSS KiB, requests so far)
        self.ws = []  # per client: frames by type, revs out of order
        self.users = []  # {id, token}
        self.chats = {}  # user id -> chat ids
        self.messages = {}  # user id -> [(chat id, message id)] sent and not deleted
        self.sent_keys = {}  # user id -> [(chat id, dedup key, text, message id)]
        self.deleted = set()  # message ids a worker has sent DELETE for
        self.requests = 0

    async def call(self, http, method, route, path, token=None, body=None, expect=(200,)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with http.request(method, self.api + path, json=body, headers=headers) as r:
                data = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
            self.transport_errors[f"{method} {route}: {type(e).__name__}"] += 1
            return None, None
        self.requests += 1
        self.statuses[f"{method} {route} {status}"] += 1
        if status not in expect and len(self.unexpected) < 20:
            self.unexpected.append(f"{method} {path} -> {status} {json.dumps(data)[:300]}")
        return status, data

    async def setup(self, http):
        run = random.randrange(1 << 30)
        for i in range(USERS):
            email = f"soak{i}-{run}@soak.example"
            password = f"soak-password-{i}"
            _, user = await self.call(
                http, "POST", "/auth/register", "/auth/register",
                body={"name": f"Soak {i}", "email": email, "password": password}, expect=(201,))
            _, tok = await self.call(
                http, "POST", "/auth/login", "/auth/login",
                body={"email": email, "password": password})
            self.users.append({"id": user["id"], "token": tok["access_token"]})
        ids = [u["id"] for u in self.users]
        for u in self.users:
            self.chats[u["id"]] = []
            self.messages[u["id"]] = []
            self.sent_keys[u["id"]] = []
        for g in range(3):
            owner = self.users[g]
            _, group = await self.call(
                http, "POST", "/chat/group", "/chat/group", owner["token"],
                {"name": f"soak group {g}", "participant_ids": [i for i in ids if i != owner["id"]]},
                expect=(201,))
            for i in ids:
                self.chats[i].append(group["chat_id"])
        for a, b in [(0, 1), (2, 3), (4, 5), (0, 5)]:
            ua, ub = self.users[a], self.users[b]
            _, msg = await self.call(
                http, "POST", "/chat/message", "/chat/message", ua["token"],
                {"recipient_id": ub["id"], "text": "hello", "dedup_key": f"hello-{a}-{b}"},
                expect=(201,))
            self.chats[ua["id"]].append(msg["chat_id"])
            self.chats[ub["id"]].append(msg["chat_id"])
            self.messages[ua["id"]].append((msg["chat_id"], msg["id"]))

    async def op(self, http, user, n):
        uid, tok = user["id"], user["token"]
        kind = random.choices(list(MIX), weights=MIX.values())[0]
        mine = self.messages[uid]
        if kind in ("edit", "react", "unreact", "delete", "read") and not mine:
            kind = "send"
        if kind == "replay" and not self.sent_keys[uid]:
            kind = "send"
        self.ops[kind] += 1
        chat = random.choice(self.chats[uid])
        if kind == "send":
            key = f"soak-{uid}-{n}"
            text = f"soak message {n} from {uid}: " + "lorem ipsum " * random.randint(1, 8)
            status, m = await self.call(
                http, "POST", "/chat/message", "/chat/message", tok,
                {"chat_id": chat, "text": text, "dedup_key": key}, expect=(201,))
            if status == 201:
                mine.append((chat, m["id"]))
                keys = self.sent_keys[uid]
                keys.append((chat, key, text, m["id"]))
                del keys[:-200]
                del mine[:-500]
        elif kind == "replay":
            chat, key, text, mid = random.choice(self.sent_keys[uid])
            status, m = await self.call(
                http, "POST", "/chat/message (replay)", "/chat/message", tok,
                {"chat_id": chat, "text": text, "dedup_key": key}, expect=(200,))
            if status == 200 and m["id"] != mid and len(self.unexpected) < 20:
                self.unexpected.append(f"replay of {key} answered message {m['id']}, not {mid}")
        elif kind == "delete":
            chat, mid = mine.pop(random.randrange(len(mine)))
            self.sent_keys[uid] = [k for k in self.sent_keys[uid] if k[3] != mid]
            self.deleted.add(mid)
            await self.call(http, "DELETE", "/chat/message/{id}", f"/chat/message/{mid}", tok)
        else:
            chat, mid = random.choice(mine) if mine else (chat, None)
            status = data = None
            # Workers share users, so another worker may delete this message while the call
            # is in flight: then 409 `deleted` is the promised answer, and only then.
            if kind == "edit":
                status, data = await self.call(
                    http, "PATCH", "/chat/message/{id}", f"/chat/message/{mid}", tok,
                    {"text": f"edited {n}"}, expect=(200, 409))
            elif kind == "react":
                status, data = await self.call(
                    http, "PUT", "/chat/message/{id}/reactions/{emoji}",
                    f"/chat/message/{mid}/reactions/{THUMBS}", tok, expect=(200, 409))
            elif kind == "unreact":
                status, data = await self.call(
                    http, "DELETE", "/chat/message/{id}/reactions/{emoji}",
                    f"/chat/message/{mid}/reactions/{THUMBS}", tok, expect=(200, 409))
            elif kind == "read":
                status, data = await self.call(
                    http, "PATCH", "/chat/message/{id}/read",
                    f"/chat/message/{mid}/read", tok, expect=(200, 409))
            elif kind == "history":
                await self.call(http, "GET", "/chat/history/{chat_id}",
                                f"/chat/history/{chat}?limit=50", tok)
            elif kind == "list":
                await self.call(http, "GET", "/chat/list", "/chat/list?limit=50", tok)
            elif kind == "changes":
                after = random.randint(0, 50)
                await self.call(http, "GET", "/chat/changes/{chat_id}",
                                f"/chat/changes/{chat}?after_rev={after}&limit=50", tok)
            if kind in ("edit", "react", "unreact", "read") and status == 409:
                raced = mid in self.deleted and (data or {}).get("code") == "deleted"
                if not raced and len(self.unexpected) < 20:
                    self.unexpected.append(f"{kind} of {mid} -> 409 {json.dumps(data)[:300]}")

    async def worker(self, http, index, deadline):
        user = self.users[index % len(self.users)]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await self.op(http, user, f"{index}.{n}")

    async def ws_client(self, user, deadline, ready):
        seen = {"frames": Counter(), "out_of_order": 0, "errors": []}
        self.ws.append(seen)
        last_rev = {}
        async with websockets.connect(
            self.relay, additional_headers={"Authorization": f"Bearer {user['token']}"},
            max_size=1 << 22,
        ) as ws:
            first = json.loads(await ws.recv())
            seen["frames"][first["type"]] += 1
            ready.release()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=left))
                except asyncio.TimeoutError:
                    break
                kind = frame.get("type")
                seen["frames"][kind] += 1
                if kind == "error" and len(seen["errors"]) < 5:
                    seen["errors"].append(frame)
                if kind in ("message", "message_updated", "member"):
                    chat, rev = frame["chat_id"], frame["rev"]
                    if rev <= last_rev.get(chat, 0):
                        seen["out_of_order"] += 1
                    last_rev[chat] = max(rev, last_rev.get(chat, 0))

    async def sampler(self, start, deadline):
        while True:
            self.samples.append(
                (round(time.monotonic() - start, 1), rss_kib(self.pid), self.requests))
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, deadline - time.monotonic())))

    async def run(self):
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await self.setup(http)
            start = time.monotonic()
            deadline = start + self.seconds
            ready = asyncio.Semaphore(0)
            clients = [asyncio.create_task(self.ws_client(self.users[i], deadline, ready))
                       for i in range(WS_CLIENTS)]
            for _ in clients:
                await asyncio.wait_for(ready.acquire(), timeout=10)
            sampler = asyncio.create_task(self.sampler(start, deadline))
            await asyncio.gather(*(self.worker(http, i, deadline) for i in range(WORKERS)))
            await sampler
            # The clients stop at the deadline; the last frames may still be on their way.
            await asyncio.gather(*clients)
            self.elapsed = time.monotonic() - start


def main():
    api, relay, pid, seconds, report = sys.argv[1:6]
    soak = Soak(api, relay, int(pid), float(seconds))
    asyncio.run(soak.run())
    with open(report, "w") as f:
        json.dump({
            "seconds": round(soak.elapsed, 1),
            "requests": soak.requests,
            "statuses": dict(sorted(soak.statuses.items())),
            "unexpected": soak.unexpected,
            "transport_errors": dict(soak.transport_errors),
            "ops": dict(soak.ops),
            "samples": soak.samples,
            "ws": [{"frames": dict(w["frames"]), "out_of_order": w["out_of_order"],
                    "errors": w["errors"]} for w in soak.ws],
        }, f, indent=1)


if __name__ == "__main__":
    main()
PY

echo "windi check:"
check=0
./target/debug/windi check || check=$?

python3 - "$out/report.json" "$seconds" "$check" <<'PY'
import json, sys
report, seconds, check = json.load(open(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3])
failures = []
print(f"{report['requests']} requests in {report['seconds']} s "
      f"({report['requests'] / report['seconds']:.0f}/s); ops: {report['ops']}")
for line, n in report["statuses"].items():
    print(f"  {line}: {n}")
server_errors = sum(n for line, n in report["statuses"].items() if line.split()[-1].startswith("5"))
if server_errors:
    failures.append(f"{server_errors} answers were 5xx")
if report["unexpected"]:
    failures.append("unexpected answers:\n    " + "\n    ".join(report["unexpected"]))
if report["transport_errors"]:
    failures.append(f"transport errors: {report['transport_errors']}")
for i, ws in enumerate(report["ws"]):
    print(f"  ws client {i}: {ws['frames']}")
    if ws["out_of_order"]:
        failures.append(f"ws client {i}: {ws['out_of_order']} change frames out of rev order")
    if ws["errors"]:
        failures.append(f"ws client {i}: error frames {ws['errors']}")
    if not ws["frames"].get("message"):
        failures.append(f"ws client {i} received no message frame")

samples = report["samples"]
print("RSS samples (s: MiB):", ", ".join(f"{t:.0f}: {kib / 1024:.1f}" for t, kib, _ in samples))
warmup = max(20.0, seconds / 4)
after = [kib for t, kib, _ in samples if t >= warmup]
if len(after) < 2:
    failures.append("too few RSS samples after warm-up to judge memory")
else:
    base, peak, last = after[0], max(after), after[-1]
    allowed = max(16 * 1024, base // 10)
    print(f"RSS after {warmup:.0f} s warm-up: {base / 1024:.1f} MiB; peak {peak / 1024:.1f}, "
          f"last {last / 1024:.1f}; growth {(peak - base) / 1024:+.1f} MiB "
          f"(allowed {allowed / 1024:.1f})")
    if peak - base > allowed:
        failures.append(f"RSS grew {(peak - base) / 1024:.1f} MiB after warm-up")
if check:
    failures.append("windi check found broken invariants")
if failures:
    print("SOAK FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("soak passed: no 5xx, flat memory, windi check clean")
PY
