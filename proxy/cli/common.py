"""What every `memento-proxy` command shares: how it fails, how it finds its data folder, how it
prints.

A command reaches its data one of two ways, with the same option names everywhere
(proxy/cli/arguments.py) and the defaults `memento-proxy serve` uses:

- a running proxy (`memories`, `jobs`): `--url` (MEMENTO_URL, else http://MEMENTO_HOST:MEMENTO_PORT,
  i.e. http://127.0.0.1:4000) and `--key` (MEMENTO_KEY), the tenant key an application sends,
  through the client in proxy/cli/client.py;
- a data folder (`trace`, `quarantine`, `reindex`, `sanitize --data-dir`): `--data-dir`
  (MEMENTO_DATA_DIR, default ./data). Nothing creates one by reading it: a missing folder or
  database is an error that says where the command looked.

A failure is one line on stderr, `memento-proxy COMMAND: what went wrong; what to do`, and an exit
status a script can test (EXIT_* below; 141 when the reader of the output went away, as with
`| head`, like any Unix tool killed by SIGPIPE).

Output is for people by default (aligned columns, readable text); `--json` prints one JSON
document instead, in the API's shape where the API has one (proxy/shapes.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.settings import Settings
from proxy.tenants import PolicyFileError

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


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def print_result(args: argparse.Namespace, document: Any, text: str) -> int:
    """`document` as JSON with --json, else `text` for people; the command succeeded."""
    if wants_json(args):
        print_json(document)
    else:
        print(text)
    return EXIT_OK


def print_problems(exc: PolicyFileError) -> None:
    print(f"invalid policies ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


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


def create_data_folder(folder: Path) -> None:
    """The data folder `serve` and `migrate` write, created if missing; one that cannot be
    (a file in its place, a parent that cannot be written) is an error that names it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(
            f"cannot create the data folder {folder.absolute()}: {error.strerror or error}; "
            "pass a --data-dir (MEMENTO_DATA_DIR) that can be created and written",
            EXIT_UNREACHABLE,
        ) from None


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


# Every control character but tab and newline, shown as \xNN: memories, traces and reasons
# hold what end users sent, and an escape sequence printed raw is obeyed by the operator's
# terminal (colours, a hidden or rewritten line in a quarantine review, a new window title).
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
    if chr(code) not in "\t\n"
}


def for_terminal(text: str) -> str:
    """`text` as a terminal may show it: control characters escaped, tab and newline kept."""
    return text.translate(_CONTROLS)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return for_terminal(" ".join(str(value).split()))  # one line per row, whatever it holds


def shorten(text: str, width: int = 80) -> str:
    text = for_terminal(" ".join(text.split()))
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
        shown = _cell(value) if not isinstance(value, str) else for_terminal(value)
        print(f"{name.ljust(width)}  {shown}")


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
