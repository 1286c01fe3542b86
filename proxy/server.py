"""Serving the app: uvicorn over httptools, in one process or several, with every request's head
bounded.

With `Settings.processes` above 1 this process binds the port and supervises that many serving
processes on it (uvicorn's supervisor: a process that dies is replaced, SIGTERM or SIGINT stops
them all, each draining what it accepted; SIGHUP replaces them one at a time). Each is a whole
proxy on the same store, as replicas are (docs/deploy.md): the store's locks and outbox are
shared through the data folder or the database. Their configuration is pickled to them, so it
carries the settings, and each builds its app and protocol class itself (`ServingConfig.load`).

uvicorn's httptools protocol sets no limit on a request's head (its request line and headers).
httptools gathers a header value chunk by chunk, copying all of it at each chunk, on the event
loop: one unauthenticated 100 MB header held every other request up for seconds and grew the
process by about as much as the header. `BoundedHeadProtocol` counts a head's bytes as they
arrive and, past `Settings.max_header_bytes`, answers 431 and closes the connection, so a head
costs at most the limit plus one read from the socket. `memento-proxy serve` uses it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from proxy.errors import ProxyError
from proxy.settings import Settings

log = logging.getLogger("memento.proxy")


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is over the limit."""


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over `max_head_bytes` with 431."""

    max_head_bytes = Settings.max_header_bytes
    _in_head = False  # from the first byte of a request until its headers are complete
    _head_bytes = 0  # of the request line and the headers parsed so far
    _read_bytes = 0  # of the reads since the request began that ended inside its head
    _refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._read_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes > self.max_head_bytes:
            self._refused = True
            raise HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # A header still arriving is gathered inside httptools, unseen: count the reads
        # instead. A read that also ended the previous request counts whole, which errs by
        # less than one read, and only for pipelined requests.
        self._read_bytes += len(data)
        if self._read_bytes > self.max_head_bytes:
            self._refused = True
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        error = ProxyError(
            431,
            f"The request line and headers exceed {self.max_head_bytes} bytes. Send fewer or "
            "shorter headers (the operator sets the limit with MEMENTO_MAX_HEADER_BYTES).",
            code="request_header_fields_too_large",
        )
        body = error.to_response().body
        log.warning(
            "refused a request head over %d bytes from %s", self.max_head_bytes, self.client
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn should serve `settings`' app with."""
    return type(
        "BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": settings.max_header_bytes}
    )


def configure_logging(settings: Settings) -> None:
    """The proxy's loggers (`memento.*`): level and format from `settings`."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


async def _built_by_load(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("ServingConfig.load builds the app")


class ServingConfig(uvicorn.Config):
    """uvicorn's configuration for serving `settings`. The app is built by `load`, in the
    process that serves it, not before: a configuration sent to a serving process must pickle,
    which an app holding open resources and a protocol class made at run time do not."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(
            app=_built_by_load,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
            loop="auto",
            http=BoundedHeadProtocol,
            workers=settings.processes,
            timeout_graceful_shutdown=10,
        )

    def configure_logging(self) -> None:
        super().configure_logging()  # uvicorn's loggers; ours, in each serving process, too
        configure_logging(self.settings)

    def load(self) -> None:
        from proxy.app import build_app
        from proxy.tenants import PolicyFileError

        try:
            self.app = build_app(self.settings)
        except PolicyFileError as exc:  # changed since `serve` checked them
            log.error("invalid policies: %s", "; ".join(str(p) for p in exc.problems))
            sys.exit(STARTUP_FAILURE)  # a supervisor stops instead of restarting in a loop
        self.http = http_protocol(self.settings)
        super().load()


def serve(settings: Settings) -> int:
    """Serve until stopped; the process's exit status (uvicorn's 3 when start-up failed)."""
    if settings.processes > 1:
        with tempfile.TemporaryDirectory(prefix="memento-metrics-") as folder:
            config = ServingConfig(replace(settings, metrics_share_dir=Path(folder)))
            supervisor = Multiprocess(config, sockets=[config.bind_socket()])
            supervisor.run()
        # It stops when a process fails to start, rather than starting it again and again.
        failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
        return STARTUP_FAILURE if failed else 0
    config = ServingConfig(settings)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
