"""Run the real proxy on a loopback port (in a thread, or as `memento-proxy serve` in a process of
its own for kill -9 and server-level tests), and write tenant policy files, for end-to-end tests.

Used through the fixtures in tests/conftest.py; importable (`tests.harness`) for benchmarks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
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


def free_port() -> int:
    """A loopback port free right now (closed again before the server binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m proxy.cli serve` in a subprocess on a free loopback port, ready on enter;
    `kill()` sends SIGKILL, exit stops it (SIGTERM) if it still runs. `env` adds MEMENTO_*
    settings (for instance MEMENTO_MEMORY_WORKERS="0" to leave queued work queued); `python`
    is the interpreter (another environment's, say)."""

    def __init__(
        self, policies: Path, data_dir: Path, *, python: str = sys.executable, **env: str
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._command = [python, "-m", "proxy.cli", "serve", "--host", "127.0.0.1"]
        self._command += ["--port", str(self.port), "--policies", str(policies)]
        self._command += ["--data-dir", str(data_dir)]
        self._env = {**os.environ, "MEMENTO_LOG_LEVEL": "warning", **env}
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody reads would stall the server once it is full.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self._command, env=self._env, stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                self._log.seek(0)
                stderr = self._log.read().decode(errors="replace")
                raise RuntimeError(f"the proxy subprocess exited: {stderr}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy subprocess did not become ready in 120 s")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()
