"""What stops a store or its embedder from starting as configured.

Kept free of heavy imports so that the command line can catch these without loading the
storage stack: each is reported as one line that says what to fix.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from storage.numbers import INT64_MAX, parse_whole_number


class SetupError(RuntimeError):
    """The store or its embedder cannot start as configured; the message says what to fix."""


def unreadable_database(path: Path, error: sqlite3.DatabaseError) -> SetupError | None:
    """The SetupError for a file at `path` that is not a readable SQLite database (another
    program's file, or a damaged one), or None when `error` is something else."""
    if error.sqlite_errorname not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return None
    return SetupError(
        f"{path} is not a readable SQLite database ({error}): point --data-dir "
        "(MEMENTO_DATA_DIR) at the folder `memento-proxy serve` writes, or restore the file "
        "from a backup"
    )


def whole_number(name: str, default: int, *, low: int = 0, high: int = INT64_MAX) -> int:
    """The process setting `name` as a whole number from `low` to `high`, `default` when
    unset; anything else is a SetupError that names the setting and the range."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = parse_whole_number(raw, low, high)
    if value is None:
        raise SetupError(
            f"bad setting: {name} must be a whole number from {low} to {high}, got {raw!r}"
        )
    return value
