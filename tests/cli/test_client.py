"""The CLI's HTTP client (aiohttp) against real sockets on loopback: a streamed export arrives
line for line whatever the chunks, and each way of not reaching a proxy is one line and exit 3.

The servers here are plain HTTP servers from the standard library, not the proxy: they answer
in ways the proxy never does (a line split across chunks, a multi-byte character split across
chunks, no answer at all), which the client must still get right.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from proxy.cli import client, main

KEY = ["--key", "any-key"]
# Lines split mid-line, mid-"\r\n" and mid-character (é is two bytes in UTF-8).
EXPORT_LINES = ['{"text": "café"}', '{"text": "' + "x" * 70_000 + '"}', '{"text": "thé"}']


class ChunkedExport(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = "\r\n".join(EXPORT_LINES).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 7):  # 7 bytes: every kind of split occurs
            chunk = body[start : start + 7]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def export_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChunkedExport)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_an_export_prints_each_line_whole(
    export_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["memories", "export", "--url", export_server, *KEY]) == 0
    assert capsys.readouterr().out.splitlines() == EXPORT_LINES


@pytest.mark.parametrize("command", [["memories", "list"], ["memories", "export"]])
def test_a_proxy_that_never_answers_is_exit_3(
    silent_server: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "TIMEOUT", aiohttp.ClientTimeout(total=None, sock_read=0.5))
    assert main([*command, "--url", silent_server, *KEY]) == 3
    error = capsys.readouterr().err
    assert error == f"memento-proxy {' '.join(command)}: the proxy at {silent_server} did not " + (
        "answer in time\n"
    )


@pytest.mark.parametrize("url", ["127.0.0.1:4000", "ftp://127.0.0.1", "http://127.0.0.1:99999"])
def test_an_address_that_is_no_url_says_so(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A usage error (2), asked of nobody: not "cannot reach" (3), as if a proxy could be there.
    assert main(["jobs", "list", "--url", url, *KEY]) == 2
    assert f"--url {url!r} is not a URL of the proxy" in capsys.readouterr().err
