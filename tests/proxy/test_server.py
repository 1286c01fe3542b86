"""`memento-proxy serve` as a client meets it: request heads are bounded before anything else.

The server runs as `make run` runs it (the CLI in a subprocess); the client is a raw socket,
since no HTTP library will send a 100 MB header.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ServerProcess, write_tenant

KEY = "server-key"
LIMIT = 64 * 1024  # Settings.max_header_bytes


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(port, pid) of `memento-proxy serve` with an echo tenant, shared by this module."""
    tmp_path = tmp_path_factory.mktemp("served")
    policies_dir = tmp_path / "policies"
    write_tenant(policies_dir, "acme", KEY, {"echo": {"model": "echo"}}, memory={"enabled": False})
    with ServerProcess(policies_dir, tmp_path / "data", MEMENTO_MEMORY_WORKERS="0") as server:
        yield server.port, server.pid


def _reply(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_head_over_the_limit_is_431_in_openais_shape(served: tuple[int, int]) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * LIMIT + b"\r\n\r\n")
        reply = _reply(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert "exceed 65536 bytes" in error["message"]


def test_a_100_mb_header_is_cut_off_without_growing_the_process(served: tuple[int, int]) -> None:
    port, pid = served
    before = _rss_kb(pid)
    sent, total, piece = 0, 100 * 1024 * 1024, b"a" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: ")
        try:
            while sent < total:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: what this test wants
    assert sent < total // 4, f"the server read {sent} bytes of one header"
    assert _rss_kb(pid) - before < 32 * 1024
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}


def test_heads_under_the_limit_and_large_bodies_are_served(served: tuple[int, int]) -> None:
    port, _ = served
    body = {"model": "echo", "messages": [{"role": "user", "content": "y" * 1_000_000}]}
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}", "cookie": "c" * (LIMIT - 1024)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert "echo: received 1 message(s)" in response.json()["choices"][0]["message"]["content"]
