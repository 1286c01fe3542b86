"""A full disk: writes that cannot be kept say so (507), chats keep their exchanges and their
traces, `/readyz` says not ready, and everything recovers once space is freed, without a restart.

The data folder lives on a small tmpfs the test mounts, and the disk is filled with a file, as an
operator's disk fills up; it needs root (CI runs as root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunningProxy, write_tenant
from tests.memory.conftest import KEY, api, wait_for_memories


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk with one file until it refuses even small writes; returns the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def test_full_disk_is_loud_keeps_exchanges_and_recovers(
    policies_dir: Path, small_disk: Path
) -> None:
    write_tenant(policies_dir, "acme", KEY, {"echo": {"model": "echo"}}, memory={})
    with RunningProxy(policies_dir, small_disk / "data") as proxy, api(proxy) as http:
        said = {"user": "ana", "kind": "fact", "text": "The user grows tomatoes."}
        assert http.post("/v1/memories", json=said).status_code in (200, 201)
        filler = fill(small_disk)

        refused = http.post(
            "/v1/memories", json={"user": "ana", "kind": "fact", "text": "The user rows boats."}
        )
        assert refused.status_code == 507, refused.text
        assert refused.json()["error"]["code"] == "insufficient_storage"

        users = [f"user-{n}" for n in range(5)]
        answered = []
        for user in users:
            chat = http.post(
                "/v1/chat/completions",
                json={
                    "model": "echo",
                    "user": user,
                    "messages": [{"role": "user", "content": "I am a beekeeper."}],
                },
            )
            assert chat.status_code == 200, chat.text
            answered.append(chat.headers["x-request-id"])
        ready = http.get("/readyz")
        assert ready.status_code == 503
        problems = " ".join(p["message"] for p in ready.json()["problems"])
        assert "answered exchanges held in memory" in problems

        filler.unlink()
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, http.get("/readyz").json()
            time.sleep(0.2)
        again = http.post(
            "/v1/memories", json={"user": "ana", "kind": "fact", "text": "The user rows boats."}
        )
        assert again.status_code in (200, 201), again.text
        for user in users:  # every held exchange was queued and learned from
            facts = [m["text"] for m in wait_for_memories(proxy, user, 1, timeout_s=120)]
            assert "The user is a beekeeper." in facts
        for request_id in answered:  # spans that could not be written waited, and are kept
            deadline = time.monotonic() + 30
            while http.get(f"/v1/traces/{request_id}").status_code != 200:
                assert time.monotonic() < deadline, f"trace {request_id} lost"
                time.sleep(0.2)
        listed = http.get("/v1/memories", params={"user": "ana"}).json()["data"]
        assert {m["text"] for m in listed} >= {"The user grows tomatoes.", "The user rows boats."}
