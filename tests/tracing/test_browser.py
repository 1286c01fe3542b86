"""The trace pages in real headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import RunningProxy, write_tenant

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY_A = "key-acme-browser-0123"
KEY_B = "key-globex-browser-0123"
ECHO = {"echo": {"model": "echo"}}
# A loaded test machine can miss the default 250 ms retrieval deadline on a first call.
PATIENT = {"retrieval": {"deadline_ms": 30000}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "Chromium is not installed and could not be installed by `make test` (needs root): "
            "run `apt-get install -y chromium chromium-driver` to run the page test"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


def chat(proxy: RunningProxy, key: str, text: str, user: str) -> str:
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "echo", "user": user, "messages": [{"role": "user", "content": text}]},
        timeout=120,  # a first call on a cold, busy machine loads models and tokenizers
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def test_list_then_one_request_timeline(
    browser: Any, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> None:
    write_tenant(policies_dir, "acme", KEY_A, ECHO, tracing={"content": "full"}, memory=PATIENT)
    write_tenant(policies_dir, "globex", KEY_B, ECHO, memory=PATIENT)
    proxy = start_proxy(policies_dir)
    remembered = httpx.post(
        f"{proxy.base_url}/v1/memories",
        headers={"authorization": f"Bearer {KEY_A}"},
        json={"kind": "fact", "text": "I live in Lisbon and keep bees.", "user": "alice"},
        timeout=120,
    )
    assert remembered.status_code == 201, remembered.text
    memory_id = remembered.json()["id"]
    mine = chat(proxy, KEY_A, "Where do I live?", "alice")
    theirs = chat(proxy, KEY_B, "globex private", "alice")
    assert proxy.app.state.tracing.force_flush()

    page = browser.new_page()
    try:
        page.goto(f"{proxy.base_url}/ui/")
        page.fill("input[name=key]", KEY_A)
        page.click("button[type=submit]")
        page.wait_for_selector("table.requests")
        assert page.inner_text("header .tenant") == "tenant acme"
        links = page.locator("a.request-link").all_inner_texts()
        assert mine in links
        assert theirs not in links
        # The key lives only in an HttpOnly cookie: page script cannot read it.
        assert page.evaluate("document.cookie") == ""

        page.click(f"a.request-link:text-is('{mine}')")
        page.wait_for_selector("#timeline")
        assert mine in page.inner_text("h1")
        stages = [s.strip() for s in page.locator("table.timeline summary").all_inner_texts()]
        assert stages[0] == "memento.request"
        assert {"memento.retrieve", "memento.inject", "memento.upstream"} <= set(stages)

        # The injected memories: their ids, the block exactly as the model saw it, the scores.
        injected = page.locator("#injected")
        assert injected.locator("code.memory-id").all_inner_texts() == [memory_id]
        assert (
            "I live in Lisbon and keep bees." in injected.locator("pre.memory-block").inner_text()
        )
        score_ids = page.locator("table.scores tbody tr td:first-child").all_inner_texts()
        assert memory_id in score_ids

        # A stage opens to show its recorded decisions.
        page.click("table.timeline summary:text-is('memento.inject')")
        assert page.locator("table.timeline details[open] table.attributes").is_visible()

        # Another tenant's request is not reachable by URL either.
        response = page.goto(f"{proxy.base_url}/ui/requests/{theirs}")
        assert response is not None and response.status == 404
        assert "globex private" not in page.content()
    finally:
        page.close()
