"""What every view shows of one request: the tree, the injected memory, the verdicts."""

from __future__ import annotations

import io
import json

from proxy.cli.trace import print_tree
from proxy.shapes import trace_document
from proxy.ui.explain import explain_memory, explain_writes
from proxy.ui.pages import memory_block, render, timeline_bars
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
    assert memory_block(doc) == BLOCK
    memory = doc["memory"]
    assert memory["injected_ids"] == ["mem_12345678"]
    # Best first; an old trace without the score's terms still lists its candidates.
    assert [(c["short_id"], c["score"], c["injected"]) for c in memory["candidates"]] == [
        ("12345678", 1.5, True),
        ("em_other", -0.2, False),
    ]
    assert doc["writes"][0]["sentence"] == "Accepted: a memory with trust 0.80."
    bars = timeline_bars(doc)
    assert bars[0] == {"x": 0.0, "w": 117.65}  # the request: 20 of 51 ms
    assert bars[-1]["x"] == 294.12


def retrieval_spans(**budget: object) -> list[dict[str, object]]:
    """A request's memory stages as recorded: three ranked candidates, two left out earlier."""
    scores = {
        "a" * 24 + "11111111": {
            "score": 1.2,
            "terms": {"relevance": 0.85, "utility": 0.15, "recency": 0.1, "trust": 0.1},
            "kind": "fact",
            "date": 1_700_000_000.0,
            "rel": 1.0,
            "z_rel": 1.0,
            "z_q": 1.0,
            "q": 0.2,
            "recency": 0.5,
            "trust": 0.9,
            "cosine": 0.6,
        },
        "b" * 24 + "22222222": {
            "score": -0.45,
            "terms": {"relevance": -0.5, "utility": 0.0, "recency": 0.0, "trust": 0.05},
            "kind": "preference",
            "date": 1_700_000_000.0,
        },
        "c" * 24 + "33333333": {
            "score": -0.9,
            "terms": {"relevance": -1.0, "utility": 0.0, "recency": 0.0, "trust": 0.1},
            "kind": "case",
            "date": 1_700_000_000.0,
        },
    }
    excluded = [
        {
            "id": "d" * 24 + "44444444",
            "kind": "fact",
            "date": 1_700_000_000.0,
            "reason": "duplicate",
            "detail": "cosine 0.97 to a memory that ranked higher (retrieval.dedup_cos 0.92)",
            "duplicate_of": "a" * 24 + "11111111",
        },
        {
            "id": "e" * 24 + "55555555",
            "kind": "fact",
            "date": 1_700_000_000.0,
            "reason": "lesson",
            "detail": "resembles lesson abc",
        },
    ]
    rows = [
        row("memento.request", "r1", ms=20),
        row(
            "memento.retrieve",
            "q1",
            parent="r1",
            attributes={
                "memento.memory.scores": json.dumps(scores),
                "memento.memory.excluded": json.dumps(excluded),
            },
        ),
        row(
            "memento.budget",
            "b1",
            parent="r1",
            start_ms=2,
            attributes={
                "memento.budget.available": 117,
                "memento.budget.used": 95,
                "memento.budget.dropped": 2,
                "memento.budget.dropped_ids": json.dumps(
                    [["b" * 24 + "22222222", "budget"], ["c" * 24 + "33333333", "k2_cases"]]
                ),
                **budget,
            },
        ),
        row(
            "memento.inject",
            "i1",
            parent="r1",
            start_ms=3,
            attributes={"memento.memory.ids": ["a" * 24 + "11111111"]},
        ),
    ]
    return trace_document("req-1", rows)["spans"]


def test_every_candidate_says_whether_it_was_injected_and_why_not() -> None:
    memory = explain_memory(retrieval_spans())
    rows = {c["short_id"]: c for c in memory["candidates"]}
    assert rows["11111111"]["injected"] and rows["11111111"]["reason"] == "injected"
    assert rows["11111111"]["why"] == (
        "ranked 1 of 3 and fitted in the memory budget (95 of 117 tokens used)"
    )
    # A negative score is not a reason to leave a memory out, and is not shown as one.
    assert (rows["22222222"]["injected"], rows["22222222"]["reason"]) == (False, "budget")
    assert "117-token memory budget" in rows["22222222"]["why"]
    assert rows["33333333"]["reason"] == "case limit"
    assert rows["44444444"]["reason"] == "duplicate"
    assert rows["44444444"]["duplicate_of_short"] == "11111111"
    assert rows["55555555"]["reason"] == "resembles an attack lesson"
    for candidate in memory["candidates"]:
        if candidate["terms"]:
            assert round(sum(candidate["terms"].values()), 3) == candidate["score"]
    assert memory["legend"].startswith("score = relevance + utility + recency + trust.")


def test_the_page_shows_short_ids_linked_named_parts_and_reasons() -> None:
    rows = [
        row("memento.request", "r1", ms=5),
        *[
            row(s["name"], s["span_id"], parent="r1", attributes=s["attributes"])
            for s in retrieval_spans()[1:]
        ],
    ]
    doc = trace_document("req-1", rows)
    html = bytes(
        render(
            "request.html",
            tenant="acme",
            trace=doc,
            block=None,
            bars=timeline_bars(doc),
            content_policy="off",
        ).body
    ).decode()
    full = "a" * 24 + "11111111"
    assert f'href="/ui/memories/{full}"' in html
    assert ">11111111</code>" in html and f">{full}</code>" not in html
    assert "score = relevance + utility + recency + trust." in html
    assert "+0.850" in html and "−0.500" in html  # terms signed, with a true minus sign
    assert "<strong>budget</strong>" in html and "<strong>duplicate</strong>" in html


def test_a_write_reads_as_a_sentence_with_its_signals() -> None:
    sanitize = {
        "name": "memento.sanitize",
        "attributes": {
            "memento.verdicts": [
                {
                    "kind": "fact",
                    "verdict": "quarantine",
                    "trust": 0.42,
                    "reasons": [
                        {"signal": "source_prior", "delta": 0.8, "detail": "", "hard": False},
                        {"signal": "instructions", "delta": -0.38, "detail": "", "hard": False},
                    ],
                },
                {"kind": "preference", "verdict": "accept", "trust": 0.8, "reasons": []},
            ]
        },
    }
    write = {
        "name": "memento.write",
        "attributes": {
            "memento.decisions": [
                {"kind": "fact", "operation": "ADD", "status": "quarantined", "memory_id": "m1"},
                {
                    "kind": "preference",
                    "operation": "UPDATE",
                    "target": "old-00000001",
                    "reason": "changed preference",
                    "memory_id": "new-00000002",
                },
            ]
        },
    }
    held, updated = explain_writes([sanitize, write])
    assert held["sentence"] == (
        "Quarantined (held for review, not used until released): a fact with trust 0.42."
    )
    assert held["outcome"] == "Written as a new memory with status quarantined."
    assert [(s["signal"], s["delta"]) for s in held["signals"]] == [
        ("source_prior", 0.8),
        ("instructions", -0.38),
    ]
    assert updated["outcome"].startswith("Written as the new version of an existing memory")
    assert (updated["memory_short_id"], updated["target_short_id"]) == ("00000002", "00000001")


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
        block=memory_block(doc),
        bars=timeline_bars(doc),
        content_policy="full",
    )
    html = bytes(response.body).decode()
    assert hostile not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script-src" not in response.headers["content-security-policy"]  # none allowed
    assert response.headers["x-frame-options"] == "DENY"
