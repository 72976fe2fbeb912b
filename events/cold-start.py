#!/usr/bin/env python3
"""Cold start of a windi function, measured locally the way Lambda starts it.

Runs a function binary (e.g. target/lambda/windi-auth/bootstrap from `cargo lambda build
--release`) against a minimal stand-in for the Lambda Runtime API that hands it one event, and
reports the time from process start to
  - init: the first `GET .../invocation/next` (config read, Postgres pool and NATS connected,
    JetStream stream ensured), and
  - answer: the response to that first event posted back (the first answered request).

Usage (DATABASE_URL, NATS_URL and JWT_SECRET_KEY in the environment, as for the function):
  events/cold-start.py target/lambda/windi-auth/bootstrap events/auth-me.json [--runs 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


class RuntimeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, event: bytes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.event = event
        self.served = False
        self.lock = threading.Lock()
        self.first_next_at = None
        self.answered = threading.Event()
        self.closing = threading.Event()
        self.answered_at = None
        self.answer = None


class Handler(BaseHTTPRequestHandler):
    server: RuntimeApi

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path != f"{PREFIX}/invocation/next":
            self.send_error(404)
            return
        with self.server.lock:
            first = not self.server.served
            self.server.served = True
            if self.server.first_next_at is None:
                self.server.first_next_at = time.perf_counter()
        if not first:
            # Lambda long-polls here until the next event; there is none.
            self.server.closing.wait(30)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", "cold-start-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30_000))
        self.send_header(
            "Lambda-Runtime-Invoked-Function-Arn",
            "arn:aws:lambda:eu-west-1:123456789012:function:windi",
        )
        self.send_header("Content-Length", str(len(self.server.event)))
        self.end_headers()
        self.wfile.write(self.server.event)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        now = time.perf_counter()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if self.path.endswith("/response") or self.path.endswith("/error"):
            self.server.answered_at = now
            self.server.answer = (self.path, body)
            self.server.answered.set()


def run_once(binary: str, event: bytes) -> tuple[float, float, dict]:
    api = RuntimeApi(event)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update(
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{api.server_address[1]}",
        AWS_LAMBDA_FUNCTION_NAME=os.path.basename(os.path.dirname(binary)) or "windi",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/windi",
        AWS_LAMBDA_LOG_STREAM_NAME="cold-start",
        RUST_LOG=env.get("RUST_LOG", "warn"),
    )
    started = time.perf_counter()
    process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
    try:
        if not api.answered.wait(30):
            sys.exit(f"{binary}: no answer within 30 s")
    finally:
        process.kill()
        process.wait()
        api.closing.set()
        api.shutdown()
    path, body = api.answer
    if path.endswith("/error"):
        sys.exit(f"{binary}: the function reported an error: {body.decode(errors='replace')}")
    init_ms = (api.first_next_at - started) * 1000
    answer_ms = (api.answered_at - started) * 1000
    return init_ms, answer_ms, json.loads(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("event")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with open(args.event, "rb") as f:
        event = f.read()
    inits, answers = [], []
    for _ in range(args.runs):
        init_ms, answer_ms, response = run_once(args.binary, event)
        inits.append(init_ms)
        answers.append(answer_ms)
    size = os.path.getsize(args.binary)
    print(
        f"{args.binary} ({size / 1e6:.1f} MB), {os.path.basename(args.event)} -> "
        f"{response.get('statusCode')}, {args.runs} runs: "
        f"init median {statistics.median(inits):.1f} ms, "
        f"first answer median {statistics.median(answers):.1f} ms "
        f"(min {min(answers):.1f}, max {max(answers):.1f})"
    )


if __name__ == "__main__":
    main()
