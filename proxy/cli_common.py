"""What every `memento-proxy` command shares: how it reaches its data, how it fails, how it prints.

A command reaches its data one of two ways, with the same option names everywhere and the
defaults `memento-proxy serve` uses:

- a running proxy (`memories`, `jobs`): `--url` (MEMENTO_URL, else http://MEMENTO_HOST:MEMENTO_PORT,
  i.e. http://127.0.0.1:4000) and `--key` (MEMENTO_KEY), the tenant key an application sends;
- a data folder (`trace`, `quarantine`, `reindex`, `sanitize --data-dir`): `--data-dir`
  (MEMENTO_DATA_DIR, default ./data). Nothing creates one by reading it: a missing folder or
  database is an error that says where the command looked.

A failure is one line on stderr, `memento-proxy COMMAND: what went wrong; what to do`, and an exit
status a script can test (EXIT_* below; 141 when the reader of the output went away, as with
`| head`, like any Unix tool killed by SIGPIPE).

Output is for people by default (aligned columns, readable text); `--json` prints one JSON
document instead, in the API's shape where the API has one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from proxy.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and the answer is no: refused, not found, problems found
EXIT_USAGE = 2  # bad arguments, a missing key, invalid settings or policy files (argparse's 2)
EXIT_UNREACHABLE = 3  # no proxy answers at --url, or no data folder/database at --data-dir
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader stopped early


class CommandError(Exception):
    """A failure the command reports as one line, with the exit status it means."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def settings_from_env(**overrides: Any) -> Settings:
    """`Settings.from_env`, with a bad MEMENTO_* value reported as a usage error."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as error:
        raise CommandError(f"bad setting: {error}", EXIT_USAGE) from None


# Defaults are SUPPRESS so that an option may be given on a command group and on its action
# (`memories --url U list` and `memories list --url U`) without one default hiding the other;
# the real default is worked out when the command runs.


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """`--url` and `--key`: the running proxy a command talks to, and the tenant key it uses."""
    parser.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="the proxy's address, with or without /v1 (MEMENTO_URL; default "
        "http://MEMENTO_HOST:MEMENTO_PORT, i.e. http://127.0.0.1:4000)",
    )
    parser.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        help="the tenant key an application sends as its API key (MEMENTO_KEY)",
    )


def add_data_dir_option(parser: argparse.ArgumentParser, what: str = "data folder") -> None:
    """`--data-dir`: the folder `memento-proxy serve` keeps its data in."""
    parser.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help=f"{what} (MEMENTO_DATA_DIR, default ./data: the one `serve` uses)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document (for scripts) instead of text",
    )


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def server_url(args: argparse.Namespace) -> str:
    """--url, else MEMENTO_URL, else where `memento-proxy serve` listens by the same settings."""
    given = getattr(args, "url", None) or os.environ.get("MEMENTO_URL")
    if given:
        # The base URL an OpenAI SDK is given (…/v1) names the same proxy.
        return str(given).rstrip("/").removesuffix("/v1")
    settings = settings_from_env()
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (listening everywhere: this machine answers)
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


class ProxyClient:
    """The proxy's JSON API as the tenant of `--key` sees it; every failure a CommandError."""

    def __init__(self, args: argparse.Namespace) -> None:
        key = getattr(args, "key", None) or os.environ.get("MEMENTO_KEY")
        if not key:
            raise CommandError(
                "give the tenant key with --key or MEMENTO_KEY (the key an application sends "
                "as its API key; the demo tenant's is memento-demo-key)",
                EXIT_USAGE,
            )
        self.url = server_url(args)
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
        )

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The reply's JSON; the server's own error message when it refuses."""
        with self._reaching():
            reply = self._http.request(method, path, **kwargs)
        return self._body(reply)

    @contextmanager
    def lines(self, path: str, **kwargs: Any) -> Iterator[Iterator[str]]:
        """A streamed reply's text, line by line (JSONL exports)."""
        with self._reaching(), self._http.stream("GET", path, **kwargs) as reply:
            if reply.status_code >= 400:
                reply.read()
                self._body(reply)
            yield self._guarded(reply.iter_lines())

    def _guarded(self, lines: Iterator[str]) -> Iterator[str]:
        with self._reaching():
            yield from lines

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise CommandError(
                f"the proxy at {self.url} did not answer in time", EXIT_UNREACHABLE
            ) from None
        except httpx.TransportError as error:
            raise CommandError(
                f"cannot reach the proxy at {self.url} ({_reason(error)}); start it with "
                "`memento-proxy serve` or pass --url (MEMENTO_URL)",
                EXIT_UNREACHABLE,
            ) from None

    def _body(self, reply: httpx.Response) -> Any:
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code < 400 and body is not None:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            raise CommandError(
                f"{self.url} answered {reply.status_code} {reply.reason_phrase} without an "
                "OpenAI-shaped body; is --url a Memento Proxy?",
                EXIT_UNREACHABLE if reply.status_code < 500 else EXIT_FAILED,
            )
        code = f" ({error['code']})" if error.get("code") else ""
        raise CommandError(f"the proxy answered {reply.status_code}{code}: {error['message']}")


def _reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused: nothing listens there"
    return text


def data_folder(args: argparse.Namespace, *required: str) -> Path:
    """The data folder the command names (or `serve` would use), which must exist and hold
    each of `required` (file names, e.g. the database): reading never creates them."""
    folder = settings_from_env(data_dir=getattr(args, "data_dir", None)).data_dir
    if not folder.is_dir():
        raise CommandError(
            f"no data folder at {folder.absolute()}: start the proxy once or pass --data-dir "
            "(MEMENTO_DATA_DIR)",
            EXIT_UNREACHABLE,
        )
    for name in required:
        if not (folder / name).is_file():
            raise CommandError(
                f"no {name} in the data folder {folder.absolute()}: start the proxy once with "
                "it, or pass the --data-dir that `memento-proxy serve` uses",
                EXIT_UNREACHABLE,
            )
    return folder


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for `-`."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def print_table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows under headings in aligned columns; the last column (free text) is not padded."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headings)]
    for row in [list(headings), *cells]:
        padded = [value.ljust(width) for value, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*padded, row[-1]]).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return " ".join(str(value).split())  # one line per row, whatever the text holds


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def when(epoch: float | None) -> str:
    """A timestamp as people read it (UTC, to the minute)."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """`name  value` lines, names aligned."""
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        print(f"{name.ljust(width)}  {_cell(value) if not isinstance(value, str) else value}")


def reasons_text(reasons: Any) -> str:
    """A trust verdict's reasons as `signal -0.40 (detail)`, comma-separated."""
    if not isinstance(reasons, list) or not reasons:
        return "-"
    parts = []
    for reason in reasons:
        if not isinstance(reason, dict):
            parts.append(str(reason))
            continue
        delta = reason.get("delta")
        part = str(reason.get("signal", "?"))
        if isinstance(delta, int | float):
            part += f" {delta:+.2f}"
        if reason.get("detail"):
            part += f" ({reason['detail']})"
        parts.append(part)
    return ", ".join(parts)
