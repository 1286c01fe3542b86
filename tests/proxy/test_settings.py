"""Process settings: MEMENTO_* variables, flags that win, and values that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import Settings


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
