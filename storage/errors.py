"""What stops a store or its embedder from starting as configured.

Kept free of heavy imports so that the command line can catch these without loading the
storage stack: each is reported as one line that says what to fix.
"""

from __future__ import annotations

import os


class SetupError(RuntimeError):
    """The store or its embedder cannot start as configured; the message says what to fix."""


def whole_number(name: str, default: int) -> int:
    """The process setting `name` as a whole number ≥ 0, `default` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise SetupError(f"bad setting: {name} must be a whole number, got {raw!r}")
    return int(raw)
