"""Process settings: MEMENTO_* variables, flags that win, and values that say what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import Settings
from tests.harness import write_tenant
from tests.postgres_server import BOTH_DATABASES


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMENTO_PORT", "4100")
    monkeypatch.setenv("MEMENTO_DATA_DIR", "/srv/memento")
    monkeypatch.setenv("MEMENTO_EMBEDDER", "openai/text-embedding-3-small")
    monkeypatch.setenv("MEMENTO_MEMORY_WORKERS", "0")

    settings = Settings.from_env(port=4200)

    assert settings.port == 4200  # the flag wins
    assert settings.data_dir == Path("/srv/memento")
    assert settings.embedder == "openai/text-embedding-3-small"
    assert settings.memory_workers == 0


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEMENTO_EMBEDDER", "MEMENTO_MEMORY_WORKERS", "MEMENTO_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.embedder, settings.memory_workers, settings.port) == ("local", 2, 4000)


def test_a_bad_worker_count_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMENTO_MEMORY_WORKERS", "two")
    with pytest.raises(ValueError, match="MEMENTO_MEMORY_WORKERS must be a whole number"):
        Settings.from_env()


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown settings: colour"):
        Settings.from_env(colour="blue")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MEMENTO_PORT", "abc", "MEMENTO_PORT must be a whole number, got 'abc'"),
        ("MEMENTO_PORT", "70000", "the port must be from 0 to 65535, got 70000"),
        ("MEMENTO_POLICY_RELOAD_S", "soon", "MEMENTO_POLICY_RELOAD_S must be a number of seconds"),
        ("MEMENTO_UPSTREAM_KEEPALIVE_S", "nan", "MEMENTO_UPSTREAM_KEEPALIVE_S must be a number"),
        ("MEMENTO_MAX_BODY_BYTES", "4MB", "MEMENTO_MAX_BODY_BYTES must be a whole number"),
        ("MEMENTO_LOG_LEVEL", "loud", "MEMENTO_LOG_LEVEL must be one of critical, error"),
        ("MEMENTO_PROCESSES", "0", r"MEMENTO_PROCESSES \(serve --processes\) must be from 1 to"),
        # 5,000 serving processes exhausted the machine's memory before any served.
        ("MEMENTO_PROCESSES", "5000", r"must be from 1 to \d+ \(4 per CPU here\), got 5000"),
        # "²" passed str.isdigit(), then int() raised "invalid literal for int()".
        ("MEMENTO_PORT", "\u00b2", "MEMENTO_PORT must be a whole number, got '\u00b2'"),
        ("MEMENTO_MAX_BODY_BYTES", "9" * 30, "MEMENTO_MAX_BODY_BYTES must be a whole number"),
        ("MEMENTO_MAX_HEADER_BYTES", "10", "MEMENTO_MAX_HEADER_BYTES must be at least 1024"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings.from_env()


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("MEMENTO_PORT", "abc", "MEMENTO_PORT must be a whole number, got 'abc'"),
        ("MEMENTO_PORT", "\u00b2", "MEMENTO_PORT must be a whole number, got '\u00b2'"),
        (
            "MEMENTO_MAX_HEADER_BYTES",
            "10",
            "MEMENTO_MAX_HEADER_BYTES must be at least 1024 (a request line and its usual "
            "headers), got 10",
        ),
    ],
)
def test_serve_reports_a_bad_setting_in_one_line(
    tmp_path: Path, setting: str, value: str, says: str
) -> None:
    # `serve` read the environment without the other commands' check: a traceback, exit 1.
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, setting: value},
    )
    assert result.returncode == 2
    assert result.stderr == f"memento-proxy serve: bad setting: {says}\n"


def serve_echo(policies: Path, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`memento-proxy serve` for a tenant with the echo model, with `env` added, until it exits
    (these tests only start it when it cannot start)."""
    write_tenant(policies, "acme", "key-acme-0123456789", {"echo": {"model": "echo"}})
    command = [sys.executable, "-m", "proxy.cli", "serve", "--port", "0"]
    command += ["--policies", str(policies), "--data-dir", str(data)]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=120, env={**os.environ, **env}
    )


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_exits_when_start_up_fails(
    policies_dir: Path, tmp_path: Path, processes: str
) -> None:
    # A failure while the memory pipeline starts left the tracing threads running, so the
    # process hung after uvicorn's "Application startup failed. Exiting."
    # No model can be exported into a cache that cannot exist: the embedder fails to load.
    # Serving processes failing so are not started again and again: their supervisor stops.
    result = serve_echo(
        policies_dir,
        tmp_path / "data",
        MEMENTO_MODEL_CACHE="/dev/null/models",
        MEMENTO_PROCESSES=processes,
    )
    assert result.returncode != 0
    assert "Application startup failed" in result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("MEMENTO_VECTOR_CACHE_MB", "lots", "MEMENTO_VECTOR_CACHE_MB must be a whole number"),
        ("MEMENTO_EMBED_THREADS", "two", "MEMENTO_EMBED_THREADS must be a whole number"),
        ("MEMENTO_INDEX_CACHE_MB", "0", "MEMENTO_INDEX_CACHE_MB must be a whole number"),
        # "²" passed str.isdigit() and failed int(); 30 digits overflowed a 64-bit setting.
        ("MEMENTO_VECTOR_CACHE_MB", "\u00b2", "MEMENTO_VECTOR_CACHE_MB must be a whole number"),
        ("MEMENTO_VECTOR_CACHE_MAX_ROWS", "9" * 30, "MEMENTO_VECTOR_CACHE_MAX_ROWS must be a"),
        ("MEMENTO_INDEX_CACHE_MB", "\u00b2", "MEMENTO_INDEX_CACHE_MB must be a whole number"),
        ("MEMENTO_INDEX_CACHE_MB", "9" * 19, "MEMENTO_INDEX_CACHE_MB must be a whole number"),
        ("MEMENTO_EMBED_THREADS", "\u00b2", "MEMENTO_EMBED_THREADS must be a whole number"),
        ("MEMENTO_EMBED_THREADS", "99999", "MEMENTO_EMBED_THREADS must be a whole number"),
    ],
)
def test_a_bad_storage_setting_is_one_line_before_anything_starts(
    policies_dir: Path, tmp_path: Path, setting: str, value: str, says: str
) -> None:
    result = serve_echo(policies_dir, tmp_path / "data", **{setting: value})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"memento-proxy serve: bad setting: {says}"), line
    assert not (tmp_path / "data").exists()  # nothing made for a start that never happened


def test_an_unknown_embedder_is_one_line_as_reindex_says_it(
    policies_dir: Path, tmp_path: Path
) -> None:
    # `serve` found out in the app's start-up: a traceback and exit 3, where `reindex` said
    # it in one line and exited 2.
    served = serve_echo(policies_dir, tmp_path / "data", MEMENTO_EMBEDDER="bogus")
    assert served.returncode == 2, served.stderr
    (line,) = served.stderr.strip().splitlines()
    assert line.startswith("memento-proxy serve: unknown embedder 'bogus': "), line
    assert "local, local-fp32, or a litellm embedding model" in line
    assert not (tmp_path / "data").exists()

    store = tmp_path / "store"
    store.mkdir()
    (store / "memento.db").touch()  # a data folder to rebuild; the embedder is refused first
    command = [sys.executable, "-m", "proxy.cli", "reindex", "--embedder", "bogus"]
    reindexed = subprocess.run(
        [*command, "--data-dir", str(store)], capture_output=True, text=True, timeout=120
    )
    assert reindexed.returncode == 2
    assert reindexed.stderr.strip().splitlines() == [line.replace("serve", "reindex", 1)]
    assert reindexed.stdout == ""  # litellm's own "Provider List" notice included


@BOTH_DATABASES
def test_a_data_folder_of_the_float_model_is_refused_in_one_line(
    policies_dir: Path, tmp_path: Path, each_database: str | None
) -> None:
    """The upgrade to the int8 default: `serve` and a data-folder command say what to type
    (the memories in SQLite, then in PostgreSQL)."""
    import asyncio

    from storage import open_store
    from storage.embedders import LocalEmbedder
    from storage.records import NewMemory, Scope

    data = tmp_path / "data"

    async def written_by_the_float_model() -> None:
        embedder = LocalEmbedder(precision="fp32")
        store = await open_store(data, embedder)
        await store.memories.add(Scope("acme", "ana"), [NewMemory(kind="fact", text="I sail")])
        await store.close()
        embedder.close()

    asyncio.run(written_by_the_float_model())
    write_tenant(policies_dir, "acme", "key-acme-0123456789", {"echo": {"model": "echo"}})
    for words in (
        ["serve", "--port", "0", "--policies", str(policies_dir)],
        ["quarantine", "list", "--tenant", "acme", "--policies", str(policies_dir)],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "proxy.cli", *words, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"memento-proxy reindex --data-dir {data}" in line, line
        assert "MEMENTO_EMBEDDER=local-fp32" in line, line
