"""Run the real proxy on a loopback port, and write tenant policy files, for end-to-end tests.

Used through the fixtures in tests/conftest.py; importable (`tests.harness`) for benchmarks.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette

from proxy.app import build_app
from proxy.memory.seam import MemoryHooks
from proxy.settings import Settings
from proxy.tenants import hash_key


def write_tenant(
    policies: Path, tenant: str, key: str, models: dict[str, dict[str, Any]], **extra: Any
) -> Path:
    """Write policies/<tenant>.yaml with one proxy key (stored hashed) and these model routes."""
    policies.mkdir(parents=True, exist_ok=True)
    path = policies / f"{tenant}.yaml"
    document = {"tenant": tenant, "keys": [hash_key(key)], "models": models, **extra}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


class RunningProxy:
    """The proxy app served by uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(
        self,
        policies: Path,
        data_dir: Path,
        *,
        memory: MemoryHooks | None = None,
        **settings: Any,
    ) -> None:
        settings.setdefault("policy_reload_s", 0.05)
        self.settings = Settings(policies_dir=policies, data_dir=data_dir, **settings)
        self.app: Starlette = build_app(self.settings, memory=memory)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> RunningProxy:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start; see the log above")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
