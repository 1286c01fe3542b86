"""Crash under load: `kill -9` while 32 clients chat with memory on, then count what survived.

For each mode (non-streamed, streamed) a fresh `memento-proxy serve` runs in a subprocess with an
empty data folder and the built-in `echo` model; 32 clients send chats whose user says something
worth remembering. After `BENCH_CRASH_S` seconds (default 20) the server gets SIGKILL with
requests in flight. Every exchange whose client got the complete answer (a 200; for a stream,
the final `[DONE]`) must be in the durable queue: the table shows answered, queued and lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from storage.store import DB_FILE
from tests.harness import ServerProcess, write_tenant

RESULTS = Path(__file__).parent / "results" / "crash.json"
KEY = "bench-crash-key"
CLIENTS = 32


def _queued(data_dir: Path) -> set[str]:
    with sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT payload FROM jobs WHERE kind = 'exchange'").fetchall()
    return {json.loads(payload)["request_id"] for (payload,) in rows}


def run(stream: bool, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as folder:
        root = Path(folder)
        write_tenant(root / "policies", "bench", KEY, {"echo": {"model": "echo"}}, memory={})
        with ServerProcess(root / "policies", root / "data", MEMENTO_LOG_LEVEL="error") as server:
            answered = load_then_kill(server, stream, seconds)
        queued = _queued(root / "data")
    return {
        "mode": "streamed" if stream else "non-streamed",
        "clients": CLIENTS,
        "seconds": seconds,
        "answered": len(answered),
        "queued": len(queued),
        "lost": sum(1 for request_id in answered if request_id not in queued),
    }


def load_then_kill(server: ServerProcess, stream: bool, seconds: float) -> list[str]:
    """Chat from CLIENTS threads for `seconds`, then SIGKILL the server; the ids of the calls
    whose client had the complete answer."""
    answered: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
            turn = 0
            while not stop.is_set():
                turn += 1
                body = {
                    "model": "echo",
                    "user": f"user-{number}",
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"I am on turn {turn}."}],
                }
                try:
                    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                        content = reply.read()
                except httpx.TransportError:
                    continue  # in flight when the server died: never answered
                complete = content.rstrip().endswith(b"[DONE]") if stream else True
                if reply.status_code == 200 and complete:
                    answered.append(reply.headers["x-request-id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    return answered


def main() -> None:
    seconds = float(os.environ.get("BENCH_CRASH_S", "20"))
    rows = [run(stream, seconds) for stream in (False, True)]
    print(f"{'mode':<14} {'clients':>7} {'s':>5} {'answered':>9} {'queued':>7} {'lost':>5}")
    for row in rows:
        print(
            f"{row['mode']:<14} {row['clients']:>7} {row['seconds']:>5.0f} "
            f"{row['answered']:>9} {row['queued']:>7} {row['lost']:>5}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    if any(row["lost"] for row in rows):
        raise SystemExit("answered exchanges were lost")


if __name__ == "__main__":
    main()
