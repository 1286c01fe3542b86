"""`GET /metrics`: what an operator scrapes, in Prometheus' text format, moving with the calls."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import Reply, ScriptedUpstream

KEY = "metrics-tenant-key"


def scrape(proxy: RunningProxy, token: str | None = None) -> dict[str, float]:
    """Every sample as `name{label="value",...}` → value (labels sorted)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(proxy.base_url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        v
        for key, v in samples.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


@pytest.fixture
def proxy(
    upstream: ScriptedUpstream, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> RunningProxy:
    models = {
        "fast": {"model": "openai/upstream-model", "api_base": upstream.url},
        "echo": {"model": "echo"},
    }
    write_tenant(policies_dir, "metered", KEY, models, memory={"write_queue": {"max_depth": 2}})
    return start_proxy(policies_dir, memory_workers=0)  # nothing learns: queued jobs stay


def test_calls_errors_and_the_hot_path_are_counted(
    proxy: RunningProxy, upstream: ScriptedUpstream
) -> None:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    before = scrape(proxy)
    messages = [{"role": "user", "content": "I prefer tea."}]
    client.chat.completions.create(model="fast", messages=messages, user="ana")  # type: ignore[arg-type]
    upstream.script(Reply(status=500))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fast", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]
    after = scrape(proxy)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"api": "chat_completions", "tenant": "metered", "status": "200"}
    assert grew("memento_requests_total", **ok) == 1
    assert grew("memento_requests_total", tenant="metered", status="404") == 1
    assert grew("memento_requests_total", tenant="metered", status="502") == 1
    assert grew("memento_upstream_errors_total", tenant="metered", status="502") == 1
    assert grew("memento_request_duration_seconds_count", tenant="metered") == 3
    # One call read memory (the one for a user): the hot path's stages were timed.
    assert grew("memento_memory_read_duration_seconds_count", stage="before_call") == 1
    assert grew("memento_memory_read_duration_seconds_count", stage="retrieve") == 1
    assert grew("memento_memory_injected_count") == 1
    # The write queue is read from the store at each scrape: the one exchange waits there.
    assert after['memento_write_queue_depth{tenant="metered"}'] == 1
    assert after['memento_write_queue_oldest_age_seconds{tenant="metered"}'] >= 0


def test_the_collectors_passes_and_the_process_are_measured(proxy: RunningProxy) -> None:
    """Each garbage-collector pass holds the event loop: its length is a histogram by
    generation. The process's own metrics are those of prometheus_client's default registry."""
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    before = scrape(proxy)
    for _ in range(3):
        messages = [{"role": "user", "content": "Hello"}]
        client.chat.completions.create(model="echo", messages=messages)  # type: ignore[arg-type]
    gc.collect()  # the server runs in this process: a full pass, as its collector would make
    after = scrape(proxy)
    for generation in ("0", "2"):
        count = "memento_gc_pause_seconds_count"
        assert value(after, count, generation=generation) > value(
            before, count, generation=generation
        ), generation
    full = value(after, "memento_gc_pause_seconds_sum", generation="2") - value(
        before, "memento_gc_pause_seconds_sum", generation="2"
    )
    assert full > 0
    assert after["process_resident_memory_bytes{}"] > 50e6
    assert after["process_cpu_seconds_total{}"] > 0
    collections = 'python_gc_collections_total{generation="2"}'
    assert after[collections] > before[collections]


def test_a_tenant_over_its_write_queue_bound_sheds_exchanges(proxy: RunningProxy) -> None:
    """`memory.write_queue.max_depth: 2` and nobody draining the queue: answers go on, at most
    two exchanges wait, the rest are shed, counted and traced."""
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    before = scrape(proxy)
    answers = []
    for number in range(6):
        messages = [{"role": "user", "content": f"I have {number} cats."}]
        answers.append(
            client.chat.completions.with_raw_response.create(
                model="echo",
                messages=messages,  # type: ignore[arg-type]
                user="bo",
            )
        )
    assert all(a.http_response.status_code == 200 for a in answers)
    queued = httpx.get(proxy.base_url + "/readyz", timeout=30).json()["write_queue"]["depth"]
    shed = value(scrape(proxy), "memento_write_queue_shed_total", tenant="metered") - value(
        before, "memento_write_queue_shed_total", tenant="metered"
    )
    assert 1 <= queued <= 2  # never over the bound (counted twice at worst: sheds early)
    assert shed == 6 - queued
    shed_ids = [a.headers["x-request-id"] for a in answers[queued:]]
    root = request_span(proxy, shed_ids[-1])
    assert root["attributes"]["memento.memory.exchange_shed"] == "depth"
    # A streamed exchange is shed when its stream ends, and says so on its own request span.
    with client.chat.completions.with_streaming_response.create(
        model="echo",
        messages=[{"role": "user", "content": "I have 7 cats."}],
        user="bo",
        stream=True,
    ) as streamed:
        assert "[DONE]" in streamed.read().decode()
    root = request_span(proxy, streamed.headers["x-request-id"])
    assert root["attributes"]["memento.memory.exchange_shed"] == "depth"


def request_span(proxy: RunningProxy, request_id: str) -> dict[str, Any]:
    """The call's `memento.request` span, once the trace store has it (export is batched)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(
            f"{proxy.base_url}/v1/traces/{request_id}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        if response.status_code == 200:
            spans = response.json()["spans"]
            roots = [span for span in spans if span["name"] == "memento.request"]
            if roots:
                root: dict[str, Any] = roots[0]
                return root
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)


def test_a_metrics_token_is_required_once_set(
    policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> None:
    write_tenant(policies_dir, "metered", KEY, {"echo": {"model": "echo"}})
    proxy = start_proxy(policies_dir, metrics_token="scrape-secret")
    refused = httpx.get(proxy.base_url + "/metrics", timeout=30)
    assert refused.status_code == 401
    assert "MEMENTO_METRICS_TOKEN" in refused.json()["error"]["message"]
    wrong = httpx.get(
        proxy.base_url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert wrong.status_code == 401
    assert (
        "memento_requests_total"
        in httpx.get(
            proxy.base_url + "/metrics",
            headers={"Authorization": "Bearer scrape-secret"},
            timeout=30,
        ).text
    )
