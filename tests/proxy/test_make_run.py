"""`make run` as the README tells a newcomer to use it: `make run PORT=… DATA_DIR=…` and
`MEMENTO_PORT=… make run` both move the server, and the data folder follows.

Make runs with the interpreter's own environment as its venv and the install stamp taken as up
to date (`-o`), so these tests start the server and never install anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (VENV / "bin" / "memento-proxy").exists(),
    reason="needs make and the memento-proxy script in this interpreter's environment",
)


def serve_with_make(args: list[str], env: dict[str, str], port: int) -> None:
    """Run `make run ARGS` with `env` added, wait until it answers on `port`, then stop it."""
    command = ["make", "--no-print-directory", "-C", str(ROOT), "run", f"VENV={VENV}"]
    command += ["-o", f"{VENV}/.installed", *args]
    environment = {**os.environ, "MEMENTO_LOG_LEVEL": "warning", **env}
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # make and the server in a group of their own, stopped together
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"make run exited: {process.stderr.read().decode()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nothing answered on port {port} in 120 s"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_make_variables_choose_port_and_data_folder(tmp_path: Path) -> None:
    port = free_port()
    serve_with_make([f"PORT={port}", f"DATA_DIR={tmp_path / 'data'}"], {}, port)
    assert (tmp_path / "data" / "memento.db").exists()


def test_memento_environment_variables_reach_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = {"MEMENTO_PORT": str(port), "MEMENTO_DATA_DIR": str(tmp_path / "data")}
    serve_with_make([], env, port)
    assert (tmp_path / "data" / "memento.db").exists()
