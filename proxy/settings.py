"""Process settings: where policies and data live, how to listen, how to reach upstreams.

One home for configuration an operator changes per process: the environment (`MEMENTO_*`),
overridden by command-line flags. Tenant behaviour lives in the policy files instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from storage.numbers import parse_whole_number

# Each serving process loads the embedder and keeps caches of its own (about 220 MB idle): more
# than a few per CPU only divide the same cores, and `--processes 5000` exhausted the memory of
# a 24 GB machine (the kernel killing every process on it) before any of them served.
PROCESSES_PER_CPU = 4


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MEMENTO_{name}", default)


def _whole_number(name: str, default: int) -> int:
    raw = _env(name, "").strip()
    if not raw:
        return default
    value = parse_whole_number(raw)  # ASCII digits, at most a 64-bit integer
    if value is None:
        raise ValueError(f"MEMENTO_{name} must be a whole number, got {raw!r}")
    return value


def _seconds(name: str, default: float) -> float:
    raw = _env(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"MEMENTO_{name} must be a number of seconds (0 or more), got {raw!r}")
    return value


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# The smallest MEMENTO_MAX_HEADER_BYTES: room for a request line and the headers every client
# sends (an OpenAI SDK's chat call is about 560 bytes of head); less refuses every request.
MIN_HEADER_BYTES = 1024


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4000
    policies_dir: Path = Path("policies")
    data_dir: Path = Path("data")
    log_level: str = "info"
    # How often policy files are checked for changes (seconds; 0 disables hot reload).
    policy_reload_s: float = 1.0
    # Shared connection pool to OpenAI-compatible upstreams.
    upstream_max_connections: int = 512
    upstream_keepalive_s: float = 30.0  # idle upstream connections are closed after this
    # Bytes accepted before a tenant is known (the tenant's own limit applies after auth).
    max_body_bytes: int = 32 * 1024 * 1024
    # Bytes of a request's line and headers; more is refused with 431 before anything else.
    max_header_bytes: int = 64 * 1024
    access_log: bool = False
    # Embedder for memory vectors: `local` (all-MiniLM-L6-v2, offline) or a litellm model name.
    embedder: str = "local"
    # Write-path workers of this process, shared by all tenants; each tenant's policy bounds how
    # many of its jobs run at once (memory.workers). 0 only queues: another process drains it.
    memory_workers: int = 2
    # Serving processes sharing the port, each a whole proxy on the same store (one core each
    # serves more calls a second than threads sharing one interpreter).
    processes: int = 1
    # Retrievals run at once, by all the serving processes together (each runs its share: the
    # CPU they share decides how many finish within the deadline); more calls wait in arrival
    # order (the policy's memory.retrieval.queue_ms bounds the wait).
    retrieval_slots: int = 8
    # A bearer token `GET /metrics` asks for (Prometheus' `authorization` setting); None serves
    # the metrics to anyone who can reach the port.
    metrics_token: str | None = None
    # Set by `serve` for its serving processes (not from the environment): where each leaves
    # its metrics for the others (`proxy.metrics_share`).
    metrics_share_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def retrieval_slots_per_process(self) -> int:
        """This serving process's share of `retrieval_slots` (rounded up)."""
        return -(-self.retrieval_slots // self.processes)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from `MEMENTO_*` variables; keyword overrides (e.g. CLI flags) win."""
        base = cls(
            host=_env("HOST", cls.host),
            port=_whole_number("PORT", cls.port),
            policies_dir=Path(_env("POLICIES", str(cls.policies_dir))),
            data_dir=Path(_env("DATA_DIR", str(cls.data_dir))),
            log_level=_env("LOG_LEVEL", cls.log_level).strip().lower() or cls.log_level,
            policy_reload_s=_seconds("POLICY_RELOAD_S", cls.policy_reload_s),
            upstream_max_connections=_whole_number(
                "UPSTREAM_MAX_CONNECTIONS", cls.upstream_max_connections
            ),
            upstream_keepalive_s=_seconds("UPSTREAM_KEEPALIVE_S", cls.upstream_keepalive_s),
            max_body_bytes=_whole_number("MAX_BODY_BYTES", cls.max_body_bytes),
            max_header_bytes=_whole_number("MAX_HEADER_BYTES", cls.max_header_bytes),
            access_log=_env("ACCESS_LOG", "0").lower() in {"1", "true", "yes"},
            embedder=_env("EMBEDDER", cls.embedder),
            memory_workers=_whole_number("MEMORY_WORKERS", cls.memory_workers),
            processes=_whole_number("PROCESSES", cls.processes),
            retrieval_slots=_whole_number("RETRIEVAL_SLOTS", cls.retrieval_slots),
            metrics_token=_env("METRICS_TOKEN", "").strip() or None,
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in ("policies_dir", "data_dir"):
            if key in given:
                given[key] = Path(given[key])
        settings = replace(base, **given)
        most = PROCESSES_PER_CPU * (os.cpu_count() or 1)
        if not 1 <= settings.processes <= most:
            raise ValueError(
                f"MEMENTO_PROCESSES (serve --processes) must be from 1 to {most} "
                f"({PROCESSES_PER_CPU} per CPU here), got {settings.processes}"
            )
        if settings.retrieval_slots < 1:
            raise ValueError("MEMENTO_RETRIEVAL_SLOTS must be at least 1, got 0")
        if settings.max_header_bytes < MIN_HEADER_BYTES:
            raise ValueError(
                f"MEMENTO_MAX_HEADER_BYTES must be at least {MIN_HEADER_BYTES} (a request line "
                f"and its usual headers), got {settings.max_header_bytes}"
            )
        if not 0 <= settings.port <= 65535:
            raise ValueError(f"the port must be from 0 to 65535, got {settings.port}")
        if settings.log_level not in LOG_LEVELS:
            raise ValueError(
                f"MEMENTO_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                f"got {settings.log_level!r}"
            )
        return settings
