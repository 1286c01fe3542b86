"""Each client API door's overhead: the Responses API and Anthropic's Messages API, beside chat
completions measured the same way in the same run.

The scripted upstream (tests/scripted_upstream.py) serves chat completions and both doors
natively. For each door, streamed and not, at concurrency 1 and 8, the same request is sent to:
- `direct`: the upstream's own endpoint for that door (the baseline);
- `memento-relay`: Memento Proxy relaying the door to the upstream that serves it
  (`native_apis`), memory off, as `bench_overhead` measures chat completions;
- `memento-translated`: Memento Proxy translating the door to the upstream's chat completions
  (for chat itself: through litellm);
- `litellm-proxy`: LiteLLM Proxy serving the same door for the same model (when installed with
  `make bench-env`); it picks its own path (for `openai/…` models it relays the Responses API
  and translates Messages to chat completions).
Added p50/p99 are against `direct` of the same door and mode. `BENCH_SCALE` scales request counts.
Results: a table on stdout and bench/results/doors.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bench_overhead import (
    LOAD_AT_START,
    ROOT,
    SCALE,
    Server,
    measure,
    start_litellm,
    start_memento,
    start_upstream,
)

RESULTS = ROOT / "bench" / "results" / "doors.json"
CONCURRENCY = (1, 8)
REQUESTS = {1: 300, 8: 800}
QUESTION = "Summarise the plot of a short story about a lighthouse keeper."
INSTRUCTIONS = "You are a helpful assistant."


def chat_body(model: str, stream: bool) -> dict[str, Any]:
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    return {"model": model, "messages": messages, "stream": stream}


def responses_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "instructions": INSTRUCTIONS, "input": QUESTION, "stream": stream}


def messages_body(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 256,
        "system": INSTRUCTIONS,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": stream,
    }


DOORS = {
    "chat": ("/chat/completions", chat_body, {}),
    "responses": ("/responses", responses_body, {}),
    "messages": ("/messages", messages_body, {"anthropic-version": "2023-06-01"}),
}


async def measure_door(
    door: str, targets: list[tuple[str, str, str, dict[str, str], int | None]]
) -> list[dict[str, Any]]:
    """One door's runs: every target, streamed and not, at each concurrency."""
    _, body_for, door_headers = DOORS[door]
    runs = await measure(
        targets,
        body_for,
        headers_for_all=door_headers,
        concurrency_levels=CONCURRENCY,
        requests=REQUESTS,
    )
    return [{"door": door, **asdict(run)} for run in runs]


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'door':9} {'target':18} {'mode':6} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'+p50':>7} {'+p99':>7} {'rps':>7} {'cpu/req':>7} {'err':>4}"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        added = [
            f"{run[key]:7.2f}" if run[key] is not None else f"{'':7}"
            for key in ("added_p50_ms", "added_p99_ms")
        ]
        lines.append(
            f"{run['door']:9} {run['target']:18} {'stream' if run['stream'] else 'json':6} "
            f"{run['concurrency']:>4} {run['p50_ms']:8.2f} {run['p99_ms']:8.2f} "
            f"{added[0]} {added[1]} {run['rps']:7.0f} {run['cpu_ms_per_request']:7.2f} "
            f"{run['errors']:>4}"
        )
    return "\n".join(lines)


def verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar: each door's relay adds under 2 ms p50 at concurrency 1, like chat."""
    result: dict[str, Any] = {}
    for run in runs:
        if (run["target"], run["concurrency"]) == ("memento-relay", 1):
            mode = "stream" if run["stream"] else "json"
            result[f"{run['door']}_{mode}_relay_added_p50_ms"] = round(run["added_p50_ms"], 2)
            result[f"{run['door']}_{mode}_relay_added_p50_under_2ms"] = run["added_p50_ms"] < 2.0
    return result


def main() -> None:
    servers: list[Server] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-doors-") as name:
        tmp = Path(name)
        upstream_process, upstream = start_upstream(tmp)
        try:
            native = {
                "model": "openai/bench-model",
                "api_base": upstream,
                "native_apis": ["responses", "messages"],
            }
            memento = start_memento(upstream, tmp, extra_models={"bench-native": native})
            servers.append(memento)
            litellm = start_litellm(upstream, tmp)
            if litellm is not None:
                servers.append(litellm)
            memento_pid = memento.process.pid
            for door, (path, _, _) in DOORS.items():
                base = memento.url.removesuffix("/chat/completions")
                # Chat completions are translated when litellm carries them (`bench-litellm`).
                translated = "bench-litellm" if door == "chat" else "bench"
                targets: list[tuple[str, str, str, dict[str, str], int | None]] = [
                    ("direct", upstream + path, "bench-model", {}, upstream_process.pid),
                    ("memento-relay", base + path, "bench-native", memento.headers, memento_pid),
                    ("memento-translated", base + path, translated, memento.headers, memento_pid),
                ]
                if litellm is not None:
                    litellm_base = litellm.url.removesuffix("/chat/completions")
                    targets.append(
                        (
                            "litellm-proxy",
                            litellm_base + path,
                            "bench",
                            litellm.headers,
                            litellm.process.pid,
                        )
                    )
                runs += asyncio.run(measure_door(door, targets))
        finally:
            for server in servers:
                server.stop()
            upstream_process.terminate()
            upstream_process.wait(timeout=15)
    print()
    print(table(runs))
    summary = verdicts(runs)
    print()
    print(json.dumps(summary, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_at_start": LOAD_AT_START,
                    "load_avg_at_end": os.getloadavg(),
                },
                "scale": SCALE,
                "runs": runs,
                "verdicts": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
