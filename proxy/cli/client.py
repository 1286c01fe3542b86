"""The proxy's JSON API as a command reaches it: `--url` and `--key`, every failure one line.

The client is aiohttp, the library the relay upstream already uses (chosen there for its CPU
per call on the hot path), so the product has one HTTP client: each call runs one
`aiohttp.ClientSession` under `asyncio.run`, with these limits: 60 s to connect
and 60 s between reads, proxy settings of the environment ignored. A command makes one or two
calls, so a session per call costs nothing a person notices.

What can go wrong, and the exit status it gets (proxy/cli/common.py): no answer in time, or no
proxy at the address (3); an answer that is not the proxy's OpenAI-shaped JSON (3 below 500,
else 1); the proxy's own refusal, quoted with its status and code (1).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from proxy.cli.common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    settings_from_env,
)

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=60, sock_read=60)
Params = Mapping[str, str | int]


def server_url(args: argparse.Namespace) -> str:
    """--url, else MEMENTO_URL, else where `memento-proxy serve` listens by the same settings."""
    given = getattr(args, "url", None) or os.environ.get("MEMENTO_URL")
    if given:
        check_url(str(given))
        # The base URL an OpenAI SDK is given (…/v1) names the same proxy.
        return str(given).rstrip("/").removesuffix("/v1")
    settings = settings_from_env()
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (listening everywhere: this machine answers)
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def check_url(url: str) -> None:
    """A usage error (exit 2), before anything is asked, for --url or MEMENTO_URL that is not
    an http(s) URL with a host: no proxy can answer at it, so "cannot reach" would mislead. A
    user:password@ (the tenant key is the credential, sent as a header) or a ?query (the API's
    paths are appended to the URL) cannot be part of the proxy's address either."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it checks the port: "host:abc" raises ValueError)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        valid = valid and "@" not in parts.netloc and not parts.query
        # A host name the resolver cannot encode ("a..b", a label over 63 characters) raised
        # UnicodeError (a ValueError) deep in the connection, under a traceback.
        (parts.hostname or "").encode("idna")
    except ValueError:
        valid = False
    if not valid:
        raise CommandError(
            f"--url {url!r} is not a URL of the proxy: give http://HOST:PORT or "
            "https://HOST[:PORT], with or without /v1 (MEMENTO_URL likewise)",
            EXIT_USAGE,
        )


def path_segment(value: str, what: str) -> str:
    """`value` as one segment of a path the client sends as it is (`ProxyClient.call`): every
    character but letters, digits, '-', '_' and '~' percent-encoded, dots included, so that '.'
    and '..' name a user or memory instead of moving up the path. An empty value names nothing:
    a usage error (exit 2), before anything is asked."""
    if not value:
        raise CommandError(f"the {what} is empty: pass one", EXIT_USAGE)
    return quote(value, safe="").replace(".", "%2E")


class ProxyClient:
    """The proxy's JSON API as the tenant of `--key` sees it; every failure a CommandError."""

    def __init__(self, args: argparse.Namespace) -> None:
        # The proxy strips what follows "Bearer ", so spaces around the key (a key file's line
        # end, "\r" of one written on Windows included) change nothing; one inside cannot be sent.
        key = (getattr(args, "key", None) or os.environ.get("MEMENTO_KEY") or "").strip()
        if not key:
            raise CommandError(
                "give the tenant key with --key or MEMENTO_KEY (the key an application sends "
                "as its API key; the demo tenant's is memento-demo-key)",
                EXIT_USAGE,
            )
        if not key.isprintable():
            raise CommandError(
                "the key holds a control character (a line break?): pass the key alone, "
                "with --key or MEMENTO_KEY",
                EXIT_USAGE,
            )
        self.url = server_url(args)
        self._headers = {"Authorization": f"Bearer {key}"}

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        data: bytes | None = None,
    ) -> Any:
        """The reply's JSON; the server's own error message when it refuses."""
        return asyncio.run(self._call(method, path, params=params, json=json, data=data))

    def each_line(self, path: str, handle: Callable[[str], None], params: Params) -> None:
        """`handle` each line of a streamed reply's text, as it arrives (JSONL exports)."""
        asyncio.run(self._lines(path, handle, params))

    def _address(self, path: str) -> URL:
        """The proxy's URL with `path` (already percent-encoded) appended, sent unchanged."""
        base = URL(self.url)
        return base.with_path(base.raw_path.rstrip("/") + path, encoded=True)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._reaching():
            async with (
                self._session() as http,
                http.request(method, self._address(path), **kwargs) as reply,
            ):
                return self._body(reply, await reply.read())

    async def _lines(self, path: str, handle: Callable[[str], None], params: Params) -> None:
        with self._reaching():
            async with (
                self._session() as http,
                http.get(self._address(path), params=params) as reply,
            ):
                if reply.status >= 400:
                    self._body(reply, await reply.read())
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                pending = ""
                async for chunk in reply.content.iter_any():
                    *lines, pending = (pending + decoder.decode(chunk)).split("\n")
                    for line in lines:
                        handle(line.removesuffix("\r"))
                pending += decoder.decode(b"", final=True)
                if pending:
                    handle(pending.removesuffix("\r"))

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=self._headers, timeout=TIMEOUT, trust_env=False)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
            raise CommandError(
                f"the proxy at {self.url} did not answer in time", EXIT_UNREACHABLE
            ) from None
        except aiohttp.ClientError as error:
            raise CommandError(
                f"cannot reach the proxy at {self.url} ({_reason(error, self.url)}); start it with "
                "`memento-proxy serve` or pass --url (MEMENTO_URL)",
                EXIT_UNREACHABLE,
            ) from None

    def _body(self, reply: aiohttp.ClientResponse, content: bytes) -> Any:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if reply.status < 400 and body is not None:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            raise CommandError(
                f"{self.url} answered {reply.status} {reply.reason or ''} without an "
                "OpenAI-shaped body; is --url a Memento Proxy?",
                EXIT_UNREACHABLE if reply.status < 500 else EXIT_FAILED,
            )
        code = f" ({error['code']})" if error.get("code") else ""
        raise ProxyRefused(
            f"the proxy answered {reply.status}{code}: {error['message']}", reply.status
        )


class ProxyRefused(CommandError):
    """The proxy refused the request with an error of its own (`http_status`)."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


def _reason(error: aiohttp.ClientError, url: str) -> str:
    """Why the proxy could not be reached, as the operating system or the URL says it."""
    if isinstance(error, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        scheme = urlsplit(url).scheme
        if not scheme:
            return "Request URL is missing an 'http://' or 'https://' protocol."
        if scheme not in ("http", "https"):
            return f"Request URL has an unsupported protocol '{scheme}://'."
        return "not a valid URL"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        return str(error.os_error)  # "[Errno -2] Name or service not known", …
    return str(error) or type(error).__name__
