"""What every view shows of one request: the tree, the injected memory, the verdicts."""

from __future__ import annotations

import io
import json

from proxy.routes.traces import trace_document
from proxy.ui.pages import injected_memory, render, timeline_bars, verdicts
from proxy.ui.terminal import print_tree
from storage.records import SpanRow

T0 = 1_700_000_000_000_000_000
REQUEST_TRACE = "a" * 32
WRITE_TRACE = "b" * 32


def row(
    name: str,
    span_id: str,
    *,
    trace_id: str = REQUEST_TRACE,
    parent: str | None = None,
    start_ms: float = 0,
    ms: float = 1,
    attributes: dict[str, object] | None = None,
    links: list[dict[str, object]] | None = None,
) -> SpanRow:
    start = T0 + int(start_ms * 1e6)
    return SpanRow(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        tenant_id="acme",
        request_id="req-1",
        user_id="alice",
        name=name,
        start_ns=start,
        end_ns=start + int(ms * 1e6),
        status="unset",
        attributes=attributes or {},
        events=[],
        links=links or [],
    )


BLOCK = '<memory type="reference-data">\n- [12345678] (fact) I live in Lisbon\n</memory>'
ROWS = [
    # Out of order on purpose: the store returns start order, the tree is rebuilt from parents.
    row(
        "memento.sanitize",
        "s1",
        trace_id=WRITE_TRACE,
        start_ms=50,
        attributes={"memento.verdicts": json.dumps([{"verdict": "accept", "trust": 0.8}])},
        links=[{"trace_id": REQUEST_TRACE, "span_id": "r1", "attributes": {}}],
    ),
    row(
        "memento.inject",
        "i1",
        parent="r1",
        start_ms=3,
        attributes={
            "memento.memory.ids": ["mem_12345678"],
            "memento.memory.block": BLOCK,
        },
    ),
    row("memento.request", "r1", ms=20, attributes={"gen_ai.request.model": "echo"}),
    row(
        "memento.retrieve",
        "q1",
        parent="r1",
        start_ms=1,
        attributes={
            "memento.memory.scores": json.dumps(
                {"mem_other": {"score": -0.2}, "mem_12345678": {"score": 1.5, "rrf": 0.03}}
            ),
        },
    ),
    row("memento.auth", "a1", parent="r1", start_ms=0.5, ms=0.2),
]


def test_tree_order_depths_and_phases() -> None:
    doc = trace_document("req-1", ROWS)
    order = [(s["name"], s["depth"], s["phase"]) for s in doc["spans"]]
    assert order == [
        ("memento.request", 0, "request"),
        ("memento.auth", 1, "request"),
        ("memento.retrieve", 1, "request"),
        ("memento.inject", 1, "request"),
        ("memento.sanitize", 0, "write"),
    ]
    assert doc["trace_id"] == REQUEST_TRACE
    assert doc["model"] == "echo"
    assert doc["duration_ms"] == 20
    assert [s["offset_ms"] for s in doc["spans"]] == [0, 0.5, 1, 3, 50]
    # Decisions stored as JSON text come back as structures.
    retrieve = doc["spans"][2]["attributes"]["memento.memory.scores"]
    assert retrieve["mem_12345678"]["score"] == 1.5


def test_injected_memory_scores_and_verdicts_for_the_page() -> None:
    doc = trace_document("req-1", ROWS)
    memory = injected_memory(doc)
    assert memory["ids"] == ["mem_12345678"]
    assert memory["block"] == BLOCK
    assert memory["scores"] == [  # best first
        {"id": "mem_12345678", "score": 1.5, "rrf": 0.03, "injected": "yes"},
        {"id": "mem_other", "score": -0.2, "injected": ""},
    ]
    assert verdicts(doc) == [{"stage": "memento.sanitize", "verdict": "accept", "trust": 0.8}]
    bars = timeline_bars(doc)
    assert bars[0] == {"x": 0.0, "w": 117.65}  # the request: 20 of 51 ms
    assert bars[-1]["x"] == 294.12


def test_terminal_tree() -> None:
    out = io.StringIO()
    print_tree("acme", trace_document("req-1", ROWS), out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("request req-1  tenant acme  user alice  model echo  2023-11-14")
    assert lines[0].endswith("  20.0 ms  ok")
    assert lines[1] == f"trace {REQUEST_TRACE}"
    assert lines[2] == "memento.request  +0.0 ms  20.0 ms"
    assert "  memento.inject  +3.0 ms  1.0 ms" in lines
    assert "        | - [12345678] (fact) I live in Lisbon" in lines
    later = lines.index("-- later, linked to the request (write path) --")
    assert lines[later + 1] == "memento.sanitize  +50.0 ms  1.0 ms"


def test_the_page_escapes_everything_a_trace_carries() -> None:
    hostile = "<script>alert(1)</script>"
    rows = [
        row("memento.request", "r1", ms=5, attributes={"gen_ai.request.model": hostile}),
        row(
            "memento.inject",
            "i1",
            parent="r1",
            attributes={
                "memento.memory.ids": [hostile],
                "memento.memory.block": f"<memory>{hostile}</memory>",
            },
        ),
        row(
            "memento.sanitize",
            "s1",
            trace_id=WRITE_TRACE,
            start_ms=9,
            attributes={
                "memento.verdicts": json.dumps([{"verdict": "reject", "reasons": [hostile]}]),
            },
        ),
    ]
    doc = trace_document("req-1", rows)
    response = render(
        "request.html",
        tenant="acme",
        trace=doc,
        memory=injected_memory(doc),
        verdicts=verdicts(doc),
        bars=timeline_bars(doc),
        content_policy="full",
    )
    html = bytes(response.body).decode()
    assert hostile not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script-src" not in response.headers["content-security-policy"]  # none allowed
    assert response.headers["x-frame-options"] == "DENY"


def test_consolidation_decisions_are_listed_apart_from_verdicts() -> None:
    decided = row(
        "memento.write",
        "w1",
        trace_id=WRITE_TRACE,
        start_ms=60,
        attributes={"memento.decisions": json.dumps([{"operation": "UPDATE", "target": "m1"}])},
    )
    doc = trace_document("req-1", [*ROWS, decided])
    assert verdicts(doc, "memento.decisions") == [
        {"stage": "memento.write", "operation": "UPDATE", "target": "m1"}
    ]
    assert [v["stage"] for v in verdicts(doc)] == ["memento.sanitize"]
