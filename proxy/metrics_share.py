"""The metrics of several serving processes as one scrape.

With `serve --processes N` a scrape of `GET /metrics` reaches whichever process accepts it. So
each process leaves a snapshot of its metrics in a folder its supervisor made for them (every
`SNAPSHOT_S`, and at each scrape it answers), and the process that answers adds the others'
snapshots to its own. Every series then carries `process="<slot>"`: the slot (0 to N-1) a
process holds while it lives, as a `flock` on `slot-<n>.lock`, and that its replacement takes
over. A slot's counters only grow, as Prometheus expects, until a replacement starts them from
zero again (a counter reset, which `rate()` handles). The write queue's gauges describe the
store, the same whichever process reads them: the answering process gives them once, with no
slot. A snapshot whose slot nobody holds (its process ended and was not replaced) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("memento.proxy")

# Seconds between two snapshots of a process that answers no scrape.
SNAPSHOT_S = 5.0
# Families that describe the store rather than the process: given once, by the answering one.
STORE_WIDE = frozenset({"memento_write_queue_depth", "memento_write_queue_oldest_age_seconds"})


class SharedMetrics:
    """This process's share of the metrics folder of the serving processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.slot, self._lock = _take_slot(folder)
        self._leaving: asyncio.Task[None] | None = None

    def start(self, render: Callable[[], bytes]) -> None:
        """Leave `render()` for the others every SNAPSHOT_S, until `close`."""
        self._leaving = asyncio.create_task(self._keep_leaving(render))

    def merged(self, own: bytes) -> bytes:
        """`own` (this process's exposition) labelled with its slot and left for the others,
        followed by every other live process's latest snapshot, one family at a time."""
        merged = self._leave(own)
        for family in self._others():
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
        return _exposition(merged.values())

    def leave_snapshot(self, own: bytes) -> None:
        """Leave `own` for the others without answering a scrape."""
        self._leave(own)

    async def _keep_leaving(self, render: Callable[[], bytes]) -> None:
        while True:
            try:
                self.leave_snapshot(render())
            except OSError as exc:  # the folder is gone or full: the next one may do
                log.warning("could not leave this process's metrics for the others: %s", exc)
            await asyncio.sleep(SNAPSHOT_S)

    def close(self) -> None:
        if self._leaving is not None:
            self._leaving.cancel()
        with contextlib.suppress(OSError):
            self._path(self.slot).unlink()
        self._lock.close()

    def _path(self, slot: int) -> Path:
        return self.folder / f"{slot}.prom"

    def _leave(self, own: bytes) -> dict[str, Metric]:
        """`own`'s families by name, this process's labelled with its slot and written for
        the others (atomically: readers see the old snapshot or the new one); the store's
        families as they are, for this scrape only."""
        families: dict[str, Metric] = {}
        for family in text_string_to_metric_families(own.decode()):
            store_wide = family.name in STORE_WIDE
            families[family.name] = family if store_wide else _labelled(family, self.slot)
        mine = [f for name, f in families.items() if name not in STORE_WIDE]
        partial = self.folder / f".{self.slot}.prom.{os.getpid()}"
        partial.write_bytes(_exposition(mine))
        partial.replace(self._path(self.slot))
        return families

    def _others(self) -> Iterator[Metric]:
        for path in sorted(self.folder.glob("*.prom")):
            slot = int(path.stem)
            if slot == self.slot or not _held(self.folder, slot):
                continue
            with contextlib.suppress(FileNotFoundError):
                yield from text_string_to_metric_families(path.read_text())


def _take_slot(folder: Path) -> tuple[int, IO[str]]:
    """The lowest slot no live process holds: a replacement takes its predecessor's."""
    slot = 0
    while (handle := _locked(folder, slot)) is None:
        slot += 1
    return slot, handle


def _held(folder: Path, slot: int) -> bool:
    """Whether a live process holds `slot`."""
    try:
        handle = _locked(folder, slot)
    except OSError:
        return False
    if handle is None:
        return True
    handle.close()  # releases the lock
    return False


def _locked(folder: Path, slot: int) -> IO[str] | None:
    """`slot`'s lock file, open and locked by this process; None when another holds it."""
    handle = (folder / f"slot-{slot}.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _labelled(family: Metric, slot: int) -> Metric:
    family.samples = [
        Sample(s.name, {**s.labels, "process": str(slot)}, s.value, s.timestamp, s.exemplar)
        for s in family.samples
    ]
    return family


class _Families:
    """Parsed families in the shape `generate_latest` reads a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def _exposition(families: Iterable[Metric]) -> bytes:
    return bytes(generate_latest(_Families(families)))
