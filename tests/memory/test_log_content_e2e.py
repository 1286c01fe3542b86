"""Memory content is never logged unless the tenant's policy says so (`logging.log_content`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import RunningProxy, write_tenant
from tests.memory.conftest import KEY, client_for, models, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

SECRET_FACT = "I'm a vegetarian and my dog is called Pumpernickel."


@pytest.mark.parametrize("log_content", [False, True])
def test_the_write_path_logs_memory_text_only_when_the_policy_allows(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    start_proxy: Callable[..., RunningProxy],
    caplog: pytest.LogCaptureFixture,
    log_content: bool,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the libraries' too (MEMENTO_LOG_LEVEL=debug)
    write_tenant(
        policies_dir,
        "acme",
        KEY,
        models(upstream),
        memory={"retrieval": {"deadline_ms": 20_000}},
        logging={"log_content": log_content},
    )
    proxy = start_proxy(policies_dir)
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": SECRET_FACT}], user="ivy"
    )
    assert len(wait_for_memories(proxy, "ivy", 2)) >= 2  # the facts are learned

    ours = [r for r in caplog.records if r.name.startswith("memento")]
    verdicts = [r.getMessage() for r in ours if r.name == "memento.sanitize"]
    assert any("candidate fact from user for tenant acme user ivy: accept" in v for v in verdicts)
    logged = "\n".join(r.getMessage() for r in ours)
    assert ("Pumpernickel" in logged) is log_content
    assert ("vegetarian" in logged) is log_content
    if not log_content:  # nor do the libraries log it: aiosqlite logs each statement's values
        everything = "\n".join(r.getMessage() for r in caplog.records)
        assert "Pumpernickel" not in everything
