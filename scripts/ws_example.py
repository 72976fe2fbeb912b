#!/usr/bin/env python3
"""A minimal windi WebSocket client: log in, connect to the relay, resume, send, print frames.

    pip install websockets
    python3 scripts/ws_example.py alice@example.com secret-alice 1

Arguments: email, password, and a chat id to resume from seq 0 and send one message to.
"""

import asyncio
import json
import sys
import urllib.parse
import urllib.request

import websockets

API = "http://localhost:8000"
RELAY = "ws://localhost:8001/ws"


def login(email: str, password: str) -> str:
    form = urllib.parse.urlencode({"username": email, "password": password}).encode()
    with urllib.request.urlopen(f"{API}/auth/login", data=form) as response:
        return json.load(response)["access_token"]


async def main(email: str, password: str, chat_id: int) -> None:
    token = login(email, password)
    async with websockets.connect(
        RELAY, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        print("<", await ws.recv())  # {"type":"ready",...}
        # Everything after seq 0 (i.e. the whole chat), then live messages.
        await ws.send(json.dumps({"type": "resume", "chats": {str(chat_id): 0}}))
        await ws.send(json.dumps({"type": "send", "chat_id": chat_id,
                                  "text": "hello from Python", "dedup_key": "py-1"}))
        try:
            while True:
                print("<", await asyncio.wait_for(ws.recv(), timeout=3))
        except asyncio.TimeoutError:
            pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
