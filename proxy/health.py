"""What keeps the proxy from being ready, beyond starting up: problems components report.

A component (the store's index, for one) reports a named problem when something it needs fails
and clears it once it works again, by itself or after an operator's fix. `/readyz` answers 503
while any problem is open and lists them, so a load balancer stops sending traffic that would
only get answers without memory, and an operator sees why in one request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from storage.api import Store


@dataclass(frozen=True)
class Problem:
    component: str
    message: str
    since: float  # when it was first reported (epoch seconds)


class Health:
    """The open problems of this process, by component (a `storage.api.HealthReporter`)."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}

    def report(self, component: str, message: str) -> None:
        """Open (or update the message of) `component`'s problem."""
        known = self._problems.get(component)
        since = known.since if known is not None else time.time()
        self._problems[component] = Problem(component, message, since)

    def clear(self, component: str) -> None:
        """`component` works again."""
        self._problems.pop(component, None)

    def problems(self) -> list[Problem]:
        return sorted(self._problems.values(), key=lambda problem: problem.component)


def watch_memory(memory: Any, health: Health) -> None:
    """Have the memory hooks, once started, report to `health`: their store's problems (the
    index, a full disk) and exchanges waiting for the write queue."""
    try:
        store: Store | None = getattr(memory, "store", None)
        backlog = getattr(memory, "backlog", None)
    except RuntimeError:  # memory that was never started has no store
        return
    if store is not None:
        store.attach_health(health)
    if backlog is not None:
        backlog.attach_health(health)
