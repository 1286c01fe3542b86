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
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.tenants import hash_key
from storage.store import DB_FILE

RESULTS = Path(__file__).parent / "results" / "crash.json"
KEY = "bench-crash-key"
CLIENTS = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    policies = root / "policies"
    policies.mkdir()
    tenant = {"tenant": "bench", "keys": [hash_key(KEY)], "models": {"echo": {"model": "echo"}}}
    (policies / "bench.yaml").write_text(yaml.safe_dump({**tenant, "memory": {}}))
    port = _free_port()
    command = [sys.executable, "-m", "proxy.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--policies", str(policies), "--data-dir", str(root / "data")]
    env = {**os.environ, "MEMENTO_LOG_LEVEL": "error"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the proxy exited during start-up")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the proxy did not become ready in 180 s")


def _queued(data_dir: Path) -> set[str]:
    with sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT payload FROM jobs WHERE kind = 'exchange'").fetchall()
    return {json.loads(payload)["request_id"] for (payload,) in rows}


def run(stream: bool, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as folder:
        root = Path(folder)
        process, base = _serve(root)
        answered: list[str] = []
        stop = threading.Event()

        def client(number: int) -> None:
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
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
                        continue
                    complete = content.rstrip().endswith(b"[DONE]") if stream else True
                    if reply.status_code == 200 and complete:
                        answered.append(reply.headers["x-request-id"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        queued = _queued(root / "data")
        lost = sum(1 for request_id in answered if request_id not in queued)
        return {
            "mode": "streamed" if stream else "non-streamed",
            "clients": CLIENTS,
            "seconds": seconds,
            "answered": len(answered),
            "queued": len(queued),
            "lost": lost,
        }


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
