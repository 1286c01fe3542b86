"""Proxy overhead: added latency, time to first byte, throughput, start-up time and RSS.

The scripted upstream (tests/scripted_upstream.py) runs in its own process and is measured
called directly, through Memento Proxy (pass-through and litellm paths), through Memento Proxy
with memory on (`memento-memory`: `BENCH_MEMORIES` memories, default 10,000, for the calling
user, `X-Memento-Mode: read`, a new question each call so no cache answers; the table's `mem%`
is the share of calls whose answer says memories were injected), the same served by
`BENCH_MEMORY_PROCESSES` serving processes (default 2, `serve --processes`; 1 leaves it out), and
through LiteLLM
Proxy when it is installed in its own environment (`make bench-env`), at concurrency 1, 8 and
32, streaming and not. Every server is a separate process started the way an operator would
start it; the load generator (aiohttp) runs here. `BENCH_SCALE` (default 1.0) scales request
counts. Results: a table on stdout and bench/results/overhead.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from bench.shared_data import persona_facts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "overhead.json"
LITELLM_BIN = Path(
    os.environ.get("LITELLM_PROXY_BIN", ROOT / "bench" / ".venv-litellm" / "bin" / "litellm")
)
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
LOAD_AT_START = os.getloadavg()
CONCURRENCY = (1, 8, 32)
REQUESTS = {1: 400, 8: 1200, 32: 2400}
WARMUP = 60
# Each measured run stops at its request count or after this long, whichever comes first.
RUN_SECONDS = float(os.environ.get("BENCH_RUN_SECONDS", "15"))
MEMORIES = int(os.environ.get("BENCH_MEMORIES", "10000"))
MEMORY_TARGET = "memento-memory"
MEMORY_PROCESSES = int(os.environ.get("BENCH_MEMORY_PROCESSES", "2"))
MEMORY_USER = "caller"
PROXY_KEY = "bench-proxy-key"
# LiteLLM Proxy refuses to start without a strong master key; both proxies authenticate each call.
LITELLM_MASTER_KEY = "sk-" + secrets.token_hex(32)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper."},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children: cost per request, unlike
    latency, barely moves when other work shares the machine."""
    total = 0.0
    for process in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return float(total) / 2**20


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str  # chat completions URL
    model: str
    headers: dict[str, str]
    startup_s: float = 0.0
    idle_rss_mb: float = 0.0
    rss_after_mb: float = 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def spawn(
    name: str, argv: list[str], ready_url: str, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    wait_ready(ready_url, process)
    return process, time.perf_counter() - started


def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process, _ = spawn(
        "upstream",
        [sys.executable, "-m", "tests.scripted_upstream", "--port", str(port)],
        f"http://127.0.0.1:{port}/v1/models",
        {},
        tmp / "upstream.log",
    )
    return process, f"http://127.0.0.1:{port}/v1"


def seed_memories(data_dir: Path, count: int) -> None:
    """`count` persona facts for MEMORY_USER, written through the store as an import writes
    them, then folded into the indexes as the proxy's maintenance does after a while."""
    from storage import open_store
    from storage.embedders import load_embedder
    from storage.records import NewMemory, Scope

    async def write() -> None:
        embedder = await load_embedder(os.environ.get("MEMENTO_EMBEDDER", "local"))
        store = await open_store(data_dir, embedder)
        facts = persona_facts()
        scope = Scope("bench", MEMORY_USER)
        for start in range(0, count, 500):
            texts = [facts[i % len(facts)] for i in range(start, min(count, start + 500))]
            await store.memories.add(scope, [NewMemory(kind="fact", text=t) for t in texts])
        await store.maintenance.maintain()
        await store.close()

    asyncio.run(write())


def memory_processes_target() -> str:
    """The memory target served by MEMORY_PROCESSES processes."""
    return f"{MEMORY_TARGET}-{MEMORY_PROCESSES}p"


def start_memento(
    upstream: str,
    tmp: Path,
    name: str = "memento",
    env: dict[str, str] | None = None,
    extra_models: dict[str, dict[str, Any]] | None = None,
    memories: int = 0,
    data_like: str | None = None,
) -> Server:
    """A Memento Proxy process; with `memories`, memory is on and the caller has that many
    (in a copy of server `data_like`'s data folder, when given, instead of seeding anew)."""
    import hashlib

    policies = tmp / f"policies-{name}"
    policies.mkdir()
    policy: dict[str, Any] = {
        "tenant": "bench",
        "keys": ["sha256:" + hashlib.sha256(PROXY_KEY.encode()).hexdigest()],
        "models": {
            "bench": {"model": "openai/bench-model", "api_base": upstream},
            **(extra_models or {}),
        },
        "memory": {"enabled": False},
    }
    if not memories:  # the memory target's process loads no litellm: its RSS is the footprint
        policy["models"]["bench-litellm"] = {
            "model": "openai/bench-model",
            "api_base": upstream,
            "passthrough": False,
        }
    else:
        # The window is given, so the route needs no model info (and no litellm).
        policy["models"]["bench"]["context_window"] = 128_000
        policy["memory"] = {"enabled": True}
        started = time.perf_counter()
        if data_like is not None:
            shutil.copytree(tmp / f"data-{data_like}", tmp / f"data-{name}")
        else:
            subprocess.run(
                [sys.executable, "-m", "bench.bench_overhead", "--seed", str(tmp / f"data-{name}")],
                cwd=ROOT,
                check=True,
                env={**os.environ, "BENCH_MEMORIES": str(memories)},
            )
        print(f"  seeded {memories} memories in {time.perf_counter() - started:.1f} s", flush=True)
    (policies / "bench.yaml").write_text(yaml.safe_dump(policy))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--port",
        str(port),
        "--policies",
        str(policies),
        "--data-dir",
        str(tmp / f"data-{name}"),
    ]
    process, startup = spawn(
        name, argv, f"http://127.0.0.1:{port}/readyz", env or {}, tmp / f"{name}.log"
    )
    headers = {"authorization": f"Bearer {PROXY_KEY}"}
    if memories:
        headers["x-memento-mode"] = "read"  # memories in, no exchange queued to learn from
    server = Server(
        name, process, f"http://127.0.0.1:{port}/v1/chat/completions", "bench", headers, startup
    )
    time.sleep(1.0)
    server.idle_rss_mb = rss_mb(process.pid)
    return server


def start_litellm(upstream: str, tmp: Path) -> Server | None:
    if not LITELLM_BIN.exists():
        print(f"LiteLLM Proxy not installed at {LITELLM_BIN} (run `make bench-env`); skipped")
        return None
    config = {
        "model_list": [
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": upstream,
                    "api_key": "sk-bench",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    argv = [
        str(LITELLM_BIN),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    process, startup = spawn(
        "litellm", argv, f"http://127.0.0.1:{port}/health/liveliness", env, tmp / "litellm.log"
    )
    server = Server(
        "litellm-proxy",
        process,
        f"http://127.0.0.1:{port}/v1/chat/completions",
        "bench",
        {"authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        startup,
    )
    time.sleep(1.0)
    server.idle_rss_mb = rss_mb(process.pid)
    return server


@dataclass
class Run:
    target: str
    stream: bool
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    rps: float
    rss_mb: float = 0.0
    cpu_ms_per_request: float = 0.0
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    # Share of answered calls whose `x-memento-memories` was at least 1 (memory targets only).
    with_memories_pct: float | None = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Load:
    """What one load run saw: latencies and times to first byte of the answered calls."""

    latencies: list[float]
    ttfbs: list[float]
    wall_s: float
    errors: int
    with_memories: int


async def load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    payload: bytes | Callable[[int], bytes],
    concurrency: int,
    total: int,
) -> Load:
    """`total` calls from `concurrency` workers; `payload` is one body, or one per call number."""
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = with_memories = 0
    remaining = total
    deadline = time.perf_counter() + RUN_SECONDS

    async def worker() -> None:
        nonlocal remaining, errors, with_memories
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            body = payload if isinstance(payload, bytes) else payload(remaining)
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    first = await response.content.readany()
                    ttfb = time.perf_counter() - started
                    async for _ in response.content.iter_any():
                        pass
                    done = time.perf_counter() - started
                    ok = response.status == 200 and bool(first)
                    injected = int(response.headers.get("x-memento-memories", "0") or 0)
            except aiohttp.ClientError:
                # A reset or refused connection is a failed request, counted in the table's
                # `err` column, not the end of the whole benchmark.
                ok = False
            if not ok:
                errors += 1
                continue
            latencies.append(done * 1000)
            ttfbs.append(ttfb * 1000)
            with_memories += injected > 0

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(latencies, ttfbs, time.perf_counter() - began, errors, with_memories)


def chat_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": stream}


def memory_questions(model: str, stream: bool, numbers: Iterator[int]) -> Callable[[int], bytes]:
    """A new question each call, from the persona facts the memory target's caller has, asked
    back. `numbers` is the target's one counter, shared by its warm-ups and every run: a question
    is never asked twice of one server, so the embedder's cache of recent queries never answers
    (the call number `load` passes restarts at every run, and would ask the same questions
    again)."""
    facts = persona_facts()

    def body(_: int) -> bytes:
        number = next(numbers)
        fact = facts[(number * 7919) % len(facts)].rstrip(".")
        question = f"{fact}? What else should I know, given that? (call {number})"
        messages = [{"role": "user", "content": question}]
        return json.dumps(
            {"model": model, "messages": messages, "stream": stream, "user": MEMORY_USER}
        ).encode()

    return body


async def measure(
    targets: list[tuple[str, str, str, dict[str, str], int | None]],
    body_for: Callable[[str, bool], dict[str, Any]] = chat_body,
    *,
    headers_for_all: dict[str, str] | None = None,
    concurrency_levels: tuple[int, ...] = CONCURRENCY,
    requests: dict[int, int] | None = None,
) -> list[Run]:
    """Every target, non-streamed then streamed, at each concurrency; added latency against
    the `direct` target of the same mode and concurrency. `body_for(model, stream)` makes the
    request body (chat completions by default)."""
    runs: list[Run] = []
    requests = requests or REQUESTS
    questions = {name: itertools.count() for name, *_ in targets}
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for stream in (False, True):
            for concurrency in concurrency_levels:
                total = max(50, int(requests[concurrency] * SCALE))
                for name, url, model, headers, pid in targets:
                    payload: bytes | Callable[[int], bytes] = (
                        memory_questions(model, stream, questions[name])
                        if name.startswith(MEMORY_TARGET)
                        else json.dumps(body_for(model, stream)).encode()
                    )
                    base = {
                        "content-type": "application/json",
                        **(headers_for_all or {}),
                        **headers,
                    }
                    await load(session, url, base, payload, concurrency, WARMUP)
                    cpu_before = cpu_s(pid) if pid else 0.0
                    seen = await load(session, url, base, payload, concurrency, total)
                    lat, ttfb = seen.latencies, seen.ttfbs
                    run = Run(
                        name,
                        stream,
                        concurrency,
                        len(lat) + seen.errors,
                        seen.errors,
                        percentile(lat, 0.5) if lat else float("nan"),
                        percentile(lat, 0.99) if lat else float("nan"),
                        percentile(ttfb, 0.5) if ttfb else float("nan"),
                        percentile(ttfb, 0.99) if ttfb else float("nan"),
                        len(lat) / seen.wall_s,
                        rss_mb(pid) if pid else 0.0,
                        (cpu_s(pid) - cpu_before) * 1000 / max(1, len(lat)) if pid else 0.0,
                    )
                    if name.startswith(MEMORY_TARGET):
                        run.with_memories_pct = 100 * seen.with_memories / max(1, len(lat))
                    runs.append(run)
                    memories = (
                        ""
                        if run.with_memories_pct is None
                        else f" mem={run.with_memories_pct:.1f}%"
                    )
                    print(
                        f"  {name:16} stream={stream!s:5} c={concurrency:<2} "
                        f"p50={run.p50_ms:.2f}ms rps={run.rps:.0f}{memories}",
                        flush=True,
                    )
    direct = {(r.stream, r.concurrency): r for r in runs if r.target == "direct"}
    for run in runs:
        if run.target != "direct":
            base_run = direct[(run.stream, run.concurrency)]
            run.added_p50_ms = run.p50_ms - base_run.p50_ms
            run.added_p99_ms = run.p99_ms - base_run.p99_ms
    return runs


def table(runs: list[Run], servers: list[Server]) -> str:
    head = (
        f"{'target':18} {'mode':6} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'+p50':>7} "
        f"{'+p99':>7} {'ttfb50':>7} {'ttfb99':>7} {'rps':>7} {'cpu/req':>7} {'rss MB':>7} "
        f"{'err':>4} {'mem%':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        added50 = "" if r.added_p50_ms is None else f"{r.added_p50_ms:+.2f}"
        added99 = "" if r.added_p99_ms is None else f"{r.added_p99_ms:+.2f}"
        memories = "" if r.with_memories_pct is None else f"{r.with_memories_pct:.1f}"
        lines.append(
            f"{r.target:18} {'stream' if r.stream else 'json':6} {r.concurrency:>4} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {added50:>7} {added99:>7} "
            f"{r.ttfb_p50_ms:>7.2f} {r.ttfb_p99_ms:>7.2f} {r.rps:>7.0f} "
            f"{r.cpu_ms_per_request:>7.2f} {r.rss_mb:>7.1f} "
            f"{r.errors:>4} {memories:>6}"
        )
    lines.append("")
    lines.append(f"{'server':18} {'start-up s':>10} {'idle RSS MB':>12} {'RSS after MB':>13}")
    for s in servers:
        lines.append(
            f"{s.name:18} {s.startup_s:>10.2f} {s.idle_rss_mb:>12.1f} {s.rss_after_mb:>13.1f}"
        )
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> dict[str, Any]:
    def pick(target: str, stream: bool, concurrency: int) -> Run | None:
        return next(
            (
                r
                for r in runs
                if (r.target, r.stream, r.concurrency) == (target, stream, concurrency)
            ),
            None,
        )

    c1 = pick("memento", False, 1)
    result: dict[str, Any] = {}
    if c1 is not None and c1.added_p50_ms is not None and c1.added_p99_ms is not None:
        result["added_p50_under_2ms"] = c1.added_p50_ms < 2.0
        result["added_p99_under_5ms"] = c1.added_p99_ms < 5.0
    for stream in (False, True):
        mode = "stream" if stream else "json"
        with_memory, litellm = pick(MEMORY_TARGET, stream, 1), pick("litellm-proxy", stream, 1)
        if with_memory and litellm and with_memory.added_p50_ms and litellm.added_p50_ms:
            # Target: memory on adds less than half what LiteLLM Proxy adds with no memory.
            ratio = with_memory.added_p50_ms / litellm.added_p50_ms
            result[f"c1_{mode}_memory_added_p50_over_litellm_proxy"] = round(ratio, 2)
        for target in (MEMORY_TARGET, memory_processes_target()):
            with_memory = pick(target, stream, 32)
            litellm = pick("litellm-proxy", stream, 32)
            if with_memory and litellm:
                # Target: ≥ 3× LiteLLM Proxy's throughput, ≥ 99 % of calls with their memories.
                key = f"c32_{mode}_{target.removeprefix('memento-').replace('-', '_')}"
                result[f"{key}_rps_ratio_vs_litellm_proxy"] = round(
                    with_memory.rps / litellm.rps, 2
                )
                result[f"{key}_calls_with_memories_pct"] = with_memory.with_memories_pct
        ours, theirs = pick("memento", stream, 32), pick("litellm-proxy", stream, 32)
        if ours is not None and theirs is not None:
            key = f"c32_{'stream' if stream else 'json'}_rps_ratio_vs_litellm_proxy"
            result[key] = round(ours.rps / theirs.rps, 2)
            cpu_key = (
                f"c32_{'stream' if stream else 'json'}_cpu_per_request_ratio_litellm_over_ours"
            )
            result[cpu_key] = round(theirs.cpu_ms_per_request / ours.cpu_ms_per_request, 2)
    return result


def main() -> None:
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        upstream_process, upstream = start_upstream(tmp)
        try:
            memento = start_memento(upstream, tmp)
            servers.append(memento)
            # The same proxy with OpenTelemetry off: how much of the overhead is tracing.
            untraced = start_memento(
                upstream, tmp, "memento-no-otel", {"OTEL_SDK_DISABLED": "true"}
            )
            servers.append(untraced)
            remembering = start_memento(upstream, tmp, MEMORY_TARGET, memories=MEMORIES)
            servers.append(remembering)
            if MEMORY_PROCESSES > 1:
                servers.append(
                    start_memento(
                        upstream,
                        tmp,
                        memory_processes_target(),
                        {"MEMENTO_PROCESSES": str(MEMORY_PROCESSES)},
                        memories=MEMORIES,
                        data_like=MEMORY_TARGET,
                    )
                )
            litellm = start_litellm(upstream, tmp)
            if litellm is not None:
                servers.append(litellm)
            targets: list[tuple[str, str, str, dict[str, str], int | None]] = [
                ("direct", f"{upstream}/chat/completions", "bench-model", {}, upstream_process.pid),
                ("memento", memento.url, "bench", memento.headers, memento.process.pid),
                (
                    "memento-no-otel",
                    untraced.url,
                    "bench",
                    untraced.headers,
                    untraced.process.pid,
                ),
                (
                    "memento-litellm",
                    memento.url,
                    "bench-litellm",
                    memento.headers,
                    memento.process.pid,
                ),
                (
                    MEMORY_TARGET,
                    remembering.url,
                    "bench",
                    remembering.headers,
                    remembering.process.pid,
                ),
            ]
            targets += [
                (s.name, s.url, "bench", s.headers, s.process.pid)
                for s in servers
                if s.name == memory_processes_target()
            ]
            if litellm is not None:
                targets.append(
                    ("litellm-proxy", litellm.url, "bench", litellm.headers, litellm.process.pid)
                )
            runs = asyncio.run(measure(targets))
            for server in servers:
                server.rss_after_mb = rss_mb(server.process.pid)
        finally:
            for server in servers:
                server.stop()
            upstream_process.terminate()
            upstream_process.wait(timeout=15)
    print()
    print(table(runs, servers))
    summary = verdicts(runs)
    print()
    print(json.dumps(summary, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg(),
                    "load_avg_at_start": LOAD_AT_START,
                },
                "scale": SCALE,
                "memories_for_the_caller": MEMORIES,
                "embedder": os.environ.get("MEMENTO_EMBEDDER", "local"),
                "servers": [
                    {
                        "name": s.name,
                        "startup_s": s.startup_s,
                        "idle_rss_mb": s.idle_rss_mb,
                        "rss_after_mb": s.rss_after_mb,
                    }
                    for s in servers
                ],
                "runs": [asdict(r) for r in runs],
                "verdicts": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed"]:
        seed_memories(Path(sys.argv[2]), MEMORIES)
    else:
        main()
