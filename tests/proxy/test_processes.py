"""`memento-proxy serve --processes N`: serving processes sharing one port, as an operator runs
them (the CLI in a subprocess), the client a plain HTTP one.

What must hold: every process serves the whole proxy (its own protocol limits too); one scrape
of `/metrics` counts every process's calls, each process's series under its slot; a process
that dies is replaced in its slot; the supervisor stops them all.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ServerProcess, write_tenant

KEY = "processes-key"
CALLS = 12


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    policies = tmp_path / "policies"
    write_tenant(policies, "acme", KEY, {"echo": {"model": "echo"}}, memory={"enabled": False})
    with ServerProcess(policies, tmp_path / "data", MEMENTO_PROCESSES="2") as server:
        yield server


def _call(server: ServerProcess) -> None:
    # A connection per call, so that the calls are spread as the kernel hands connections out.
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _scrape(server: ServerProcess) -> dict[str, dict[str, float]]:
    """Per metric sample name, its values by `process` label."""
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            process = sample.labels.get("process", "")
            values[sample.name][process] = values[sample.name].get(process, 0) + sample.value
    return values


def _serving(server: ServerProcess) -> list[psutil.Process]:
    """The serving processes under the supervisor (not multiprocessing's resource tracker)."""
    serving = []
    for child in psutil.Process(server.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                serving.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # ended, not yet reaped
            continue
    return serving


def _until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


def test_one_scrape_counts_the_calls_of_every_process(served: ServerProcess) -> None:
    assert len(_serving(served)) == 2
    for _ in range(CALLS):
        _call(served)

    def counted() -> bool:
        scraped = _scrape(served)
        by_process = scraped["memento_requests_total"]
        resident = scraped["process_resident_memory_bytes"]
        return sum(by_process.values()) == CALLS and set(resident) == {"0", "1"}

    _until(counted)  # the other process's snapshot is at most a few seconds old


def test_every_process_bounds_request_heads(served: ServerProcess) -> None:
    for _ in range(4):  # whichever process accepts the connection
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(
                b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
            )
            sock.settimeout(30)
            head = sock.recv(64)
        assert head.startswith(b"HTTP/1.1 431 ")


def test_a_process_that_dies_is_replaced_in_its_slot(served: ServerProcess) -> None:
    victim = _serving(served)[0]
    os.kill(victim.pid, signal.SIGKILL)
    _until(
        lambda: victim.pid not in {p.pid for p in _serving(served)} and len(_serving(served)) == 2
    )
    for _ in range(CALLS):  # the port is served throughout, by the other one meanwhile
        _call(served)
    _until(lambda: set(_scrape(served)["process_resident_memory_bytes"]) == {"0", "1"})


def test_stopping_the_supervisor_stops_every_process(served: ServerProcess) -> None:
    processes = _serving(served)
    assert served.process is not None
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive
