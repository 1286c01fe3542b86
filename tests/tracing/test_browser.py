"""The trace pages in real headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage import open_span_store
from storage.records import SpanRow
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


def number(text: str) -> float:
    return float(text.replace("−", "-"))


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    """Poll until `predicate` returns something truthy (the write path runs in a worker)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


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

        # The injected memories: their short ids (as in the block the model saw), the block
        # itself, and each candidate's row with the same id and its text (content: full).
        injected = page.locator("#injected")
        block = injected.locator("pre.memory-block").inner_text()
        assert "I live in Lisbon and keep bees." in block
        short = memory_id[-8:]
        assert f"[{short}]" in block
        assert short in injected.locator("p a.memory-link code").all_inner_texts()
        row = page.locator(f"table.candidates tr[data-memory-id='{memory_id}']")
        assert row.locator("a.memory-link code").first.inner_text() == short
        assert "I live in Lisbon and keep bees." in row.inner_text()
        assert row.locator("td.outcome").inner_text() == "yes"

        # A stage opens to show its recorded decisions.
        page.click("table.timeline summary:text-is('memento.inject')")
        assert page.locator("table.timeline details[open] table.attributes").is_visible()

        # The JSON twin opens under the page's login and is what the API answers a key.
        twin = page.locator("a.json-twin").get_attribute("href")
        followed = page.request.get(f"{proxy.base_url}/ui/requests/{mine}{twin}")
        assert followed.status == 200
        expected = httpx.get(
            f"{proxy.base_url}/v1/traces/{mine}",
            headers={"authorization": f"Bearer {KEY_A}"},
            timeout=120,
        ).json()
        assert followed.json() == expected

        # Another tenant's request is not reachable by URL either.
        response = page.goto(f"{proxy.base_url}/ui/requests/{theirs}")
        assert response is not None and response.status == 404
        assert "globex private" not in page.content()
    finally:
        page.close()


# One memory fits in this budget (a 63-token frame, a 5-token heading and a line of 22-30
# tokens, by its short id's digits; two lines need at least 47 of the 32 left after the frame
# and heading): the rest is "budget".
ONE_MEMORY = {**PATIENT, "budget": {"max_tokens": 100}}


def test_why_this_memory_then_its_page_versions_and_quarantine_review(
    browser: Any, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> None:
    # The default `tracing.content: off`: the trace page shows no memory text at all.
    write_tenant(policies_dir, "acme", KEY_A, ECHO, memory=ONE_MEMORY)
    proxy = start_proxy(policies_dir)
    api = httpx.Client(
        base_url=proxy.base_url, headers={"authorization": f"Bearer {KEY_A}"}, timeout=120
    )

    def memories(**params: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = api.get("/v1/memories", params=params).json()["data"]
        return data

    chat(proxy, KEY_A, "I like coffee.", "alice")
    (coffee,) = wait_for(lambda: memories(user="alice", kind="preference"), "the coffee memory")
    bees = api.post(
        "/v1/memories",
        json={"kind": "fact", "text": "I like honey from my own bees.", "user": "alice"},
    ).json()
    tea_request = chat(proxy, KEY_A, "I like tea now.", "alice")
    (tea,) = wait_for(
        lambda: (
            memories(user="alice", kind="preference", status="active")
            if memories(user="alice", status="superseded")
            else None
        ),
        "the tea memory to supersede the coffee one",
    )
    assert tea["supersedes"] == coffee["id"]
    assert proxy.app.state.tracing.force_flush()

    page = browser.new_page(viewport={"width": 1000, "height": 800})
    try:
        page.goto(f"{proxy.base_url}/ui/")
        page.fill("input[name=key]", KEY_A)
        page.click("button[type=submit]")
        page.click(f"a.request-link:text-is('{tea_request}')")
        page.wait_for_selector("table.candidates")
        html = page.content()
        assert "coffee" not in html and "honey" not in html  # content: off
        assert "score = relevance + utility + recency + trust." in page.inner_text("p.legend")

        # Every candidate: a short id linking to the memory, its kind and date, the named
        # parts of its score that add up to it, whether it was injected and why (not).
        rows = page.locator("table.candidates tbody tr")
        seen = {}
        for i in range(rows.count()):
            row = rows.nth(i)
            memory_id = row.get_attribute("data-memory-id")
            assert row.locator("a.memory-link code").first.inner_text() == memory_id[-8:]
            cells = row.locator("td")
            terms = [number(row.locator(f"td.term-{n}").inner_text()) for n in TERM_NAMES]
            assert abs(sum(terms) - number(row.locator("td.score").inner_text())) < 1e-9
            seen[memory_id] = (
                cells.nth(1).inner_text(),
                row.locator("td.outcome").inner_text(),
                row.locator("td.why strong").inner_text(),
            )
        assert set(seen) == {coffee["id"], bees["id"]}
        outcomes = sorted(outcome[1:] for outcome in seen.values())
        assert outcomes == [("no", "budget"), ("yes", "injected")]
        assert seen[coffee["id"]][0] == "preference" and seen[bees["id"]][0] == "fact"

        # The write: a sentence with its signals, linking to the memory it wrote.
        write = page.locator("#writes li.write").filter(has_text="preference").first
        assert "Accepted: a preference with trust" in write.inner_text()
        assert "new version of an existing memory" in write.inner_text()
        assert "source_prior" in write.locator("table.signals").inner_text()
        write.locator(f"a.memory-link[href='/ui/memories/{tea['id']}']").click()

        # The memory's own page shows its text (the API shows it to this key too), its trust
        # signals and its versions; the older version is one click away.
        page.wait_for_selector("#versions")
        assert page.inner_text("blockquote.memory-text") == tea["text"]
        versions = page.locator("table.versions tbody tr")
        assert versions.count() == 2
        assert "coffee" in versions.nth(0).inner_text()
        assert "superseded" in versions.nth(0).inner_text()
        versions.nth(0).locator("a.memory-link").click()
        page.wait_for_selector("#versions")
        assert page.inner_text("blockquote.memory-text") == coffee["text"]
        # Its JSON twin is a link the logged-in browser can follow (the /v1/ route wants a
        # Bearer key): the same document the API answers.
        twin = page.locator("a.json-twin").get_attribute("href")
        assert twin == "?format=json"
        followed = page.request.get(f"{proxy.base_url}/ui/memories/{coffee['id']}{twin}")
        assert followed.status == 200
        assert followed.json() == api.get(f"/v1/memories/{coffee['id']}").json()

        # The list and the search find it by user.
        page.goto(f"{proxy.base_url}/ui/memories?user=alice")
        listed = page.locator("table.memories a.memory-link").all_inner_texts()
        assert {coffee["id"][-8:], tea["id"][-8:], bees["id"][-8:]} <= set(listed)
        page.fill("input[name=q]", "honey")
        page.click("form.filter button[type=submit]")
        page.wait_for_selector("table.memories")
        assert page.locator("table.memories a.memory-link").first.inner_text() == bees["id"][-8:]

        # Quarantine review: a held memory is released with one click, and is active again.
        held = api.patch(f"/v1/memories/{bees['id']}", json={"status": "quarantined"})
        assert held.status_code == 200, held.text
        page.click("header nav a:text-is('Quarantine')")
        item = page.locator(f"ul.quarantine li[data-memory-id='{bees['id']}']")
        assert "I like honey from my own bees." in item.inner_text()
        item.locator("button.release").click()
        page.wait_for_selector("p.done")
        assert "released" in page.inner_text("p.done")
        assert page.locator(f"li[data-memory-id='{bees['id']}']").count() == 0
        assert api.get(f"/v1/memories/{bees['id']}").json()["status"] == "active"
    finally:
        page.close()
        api.close()


TERM_NAMES = ("relevance", "utility", "recency", "trust")
LANCE_PATH = "/root/.cargo/registry/src/index.crates.io/lance-0.19.2/src/dataset/" + "x" * 150
STACK = "\n".join(
    f'  File "/venv/lib/python3.11/site-packages/lancedb/table.py", line {n}, in search_'
    + "x" * 120
    for n in range(40)
)


async def write_failed_trace(data_dir: Path) -> None:
    """A request whose retrieval failed with a long, unbreakable stack trace, as the exporter
    stores it."""
    store = await open_span_store(data_dir)
    start = time.time_ns()
    common = {"tenant_id": "acme", "request_id": "req_failed", "user_id": "alice", "links": []}
    await store.write_spans(
        [
            SpanRow(
                trace_id="f" * 32,
                span_id="1" * 16,
                parent_span_id=None,
                name="memento.request",
                start_ns=start,
                end_ns=start + 5_000_000,
                status="unset",
                attributes={},
                events=[],
                **common,
            ),
            SpanRow(
                trace_id="f" * 32,
                span_id="2" * 16,
                parent_span_id="1" * 16,
                name="memento.retrieve",
                start_ns=start,
                end_ns=start + 4_000_000,
                status=f"error: memory unavailable: LanceError: {LANCE_PATH}",
                attributes={"memento.memory.error": "memory unavailable: LanceError"},
                events=[
                    {
                        "name": "exception",
                        "time_ns": start + 3_000_000,
                        "attributes": {
                            "exception.type": "LanceError",
                            "exception.message": f"LanceError(IO): {LANCE_PATH}",
                            "exception.stacktrace": "Traceback:" + "y" * 400 + "\n" + STACK,
                        },
                    }
                ],
                **common,
            ),
        ]
    )
    await store.close()


def test_a_long_stack_trace_stays_inside_the_window(
    browser: Any, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> None:
    write_tenant(policies_dir, "acme", KEY_A, ECHO)
    proxy = start_proxy(policies_dir)
    # Playwright's sync API runs an event loop in this thread: write from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write_failed_trace(proxy.settings.data_dir)).result()
    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:
        page.goto(f"{proxy.base_url}/ui/")
        page.fill("input[name=key]", KEY_A)
        page.click("button[type=submit]")
        page.goto(f"{proxy.base_url}/ui/requests/req_failed")
        assert "Retrieval failed (memory unavailable: LanceError)" in page.inner_text("#injected")
        page.click("table.timeline summary:text-is('memento.retrieve')")
        assert page.locator("p.event").first.is_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 900, f"the page is {width} px wide in a 900 px window"
    finally:
        page.close()
