"""Durability: a writer killed with SIGKILL at random points loses no acknowledged write.

After each restart every acknowledged memory is in SQLite and searchable, every batch is either
entirely present or entirely absent, and the index holds exactly the records SQLite holds.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import open_store
from storage.embedders import LocalEmbedder
from tests.storage.durability_writer import SCOPE, batch_texts

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("durability_writer.py")


class Writer:
    """The writer subprocess and the lines it has printed so far."""

    def __init__(self, data_dir: Path, tag: str, mode: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), str(data_dir), tag, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.endswith("\n"):  # a line cut by the kill was never acknowledged
                self.lines.append(line.strip())
                if line.startswith("READY"):
                    self.ready.set()

    def acked(self) -> int:
        return sum(1 for line in self.lines if line.startswith("ACK"))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)

    def batches(self) -> tuple[dict[int, int], set[int]]:
        """Batch sizes begun, and batch numbers acknowledged."""
        begun: dict[int, int] = {}
        acked: set[int] = set()
        for line in self.lines:
            word, *rest = line.split()
            if word == "BEGIN":
                begun[int(rest[0])] = int(rest[1])
            elif word == "ACK":
                acked.add(int(rest[0]))
        return begun, acked


def _wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


async def _check_store(
    data_dir: Path, embedder: LocalEmbedder, runs: list[tuple[str, dict[int, int], set[int]]]
) -> None:
    store = await open_store(data_dir, embedder)
    try:
        stored = {r.text: r for r in await store.memories.list(SCOPE, limit=100_000)}
        for tag, begun, acked in runs:
            for batch, size in begun.items():
                texts = batch_texts(tag, batch, size)
                present = [text in stored for text in texts]
                if batch in acked:
                    assert all(present), f"acknowledged batch {tag}/{batch} lost"
                else:
                    assert all(present) or not any(present), f"batch {tag}/{batch} half-written"
                for text in texts:
                    if text in stored:
                        token = text.split()[1]
                        hits = await store.memories.search(
                            SCOPE, query_text=token, query_vector=None
                        )
                        assert [hit.record.text for hit in hits] == [text]
        assert await store.index.index.count() == len(stored)
        assert set(
            await store.memories.vectors(SCOPE.tenant_id, [r.id for r in stored.values()])
        ) == {r.id for r in stored.values()}
        assert await store.db.outbox.outbox_pending() == 0
    finally:
        await store.close()
    with sqlite3.connect(data_dir / "memento.db") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.timeout(600)
async def test_sigkill_loses_no_acknowledged_write(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random()
    runs: list[tuple[str, dict[int, int], set[int]]] = []
    for round_number in range(3):
        tag = f"r{round_number}"
        writer = Writer(data_dir, tag, "add")
        assert writer.ready.wait(timeout=180), "writer did not start"
        target = rng.randint(1, 25)
        _wait_for(lambda w=writer, n=target: w.acked() >= n, 120)  # type: ignore[misc]
        time.sleep(rng.uniform(0, 0.3))  # land anywhere inside the next write
        writer.kill()
        begun, acked = writer.batches()
        assert acked, "the writer acknowledged nothing before the kill"
        runs.append((tag, begun, acked))
        await _check_store(data_dir, local_embedder, runs)


@pytest.mark.timeout(300)
async def test_crash_between_sqlite_commit_and_index_write_is_replayed(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data_dir = tmp_path / "data"
    writer = Writer(data_dir, "c", "commit")
    _wait_for(lambda: writer.acked() >= 1, 180)
    writer.kill()
    begun, acked = writer.batches()
    assert acked == {0}
    with sqlite3.connect(data_dir / "memento.db") as raw:
        assert raw.execute("SELECT count(*) FROM index_outbox").fetchone()[0] == 3
    await _check_store(data_dir, local_embedder, [("c", begun, acked)])
