"""Why this memory, and why not that one: a request's trace read back as decisions.

The spans record each stage's decisions in its own terms (retrieve: every ranked candidate's
score and weighted terms, and every hit it left out with the reason; budget: what did not fit;
inject: what went in; sanitize and write: each candidate's verdict and what was written).
`explain_memory` joins them into one row per candidate that says whether it was injected and, if
not, why; `explain_writes` turns each verdict and its consolidation into a sentence. Both only
read what the ranker and the pipeline recorded: the score terms are the ranker's own, never
re-derived here. `trace_document` adds both to every view of a trace (JSON, page, terminal).
"""

from __future__ import annotations

from typing import Any

from proxy.memory.inject import short_id

SCORE_LEGEND = (
    "score = relevance + utility + recency + trust. Relevance and utility are z-scores against "
    "the other candidates of this request, so a negative score means below this request's "
    "average candidate, not unsuitable; recency favours facts and preferences used lately; trust "
    "adds or takes a little around 0.5. Memories are injected by value per token until the "
    "budget is spent."
)
TERMS = ("relevance", "utility", "recency", "trust")
SIGNALS = ("rel", "z_rel", "q", "z_q", "cosine")

_NOT_CONSIDERED = {
    "trust": "trust below the floor",
    "relevance": "relevance gate",
    "utility": "utility gate",
    "duplicate": "duplicate",
    "lesson": "resembles an attack lesson",
    "inactive": "not active",
    "expired": "expired",
}
_BUDGET_REASONS = {
    "budget": (
        "budget",
        "did not fit in the {available}-token memory budget once memories with more value per "
        "token were in",
    ),
    "k2_cases": (
        "case limit",
        "more past cases than retrieval.k2_cases allows; better-ranked cases took the places",
    ),
    "no_room": (
        "no room",
        "no memory fits: the request itself (its messages, tools and the output it asks for) "
        "fills the model's context window, leaving {available} tokens, no more than the "
        "memory block's frame (fence and preamble, {frame} tokens)",
    ),
    "frame": (
        "no room",
        "no memory fits: memory.budget.max_tokens is no larger than the memory block's frame "
        "(fence and preamble, {frame} tokens), so no budget is left for any memory; raise it "
        "(see `memento-proxy policy check`)",
    ),
}
_VERDICTS = {
    "accept": "Accepted",
    "quarantine": "Quarantined (held for review, not used until released)",
    "reject": "Rejected (stored as rejected, never used)",
}


def explain_memory(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's memory decisions: every candidate with its outcome, and the budget."""
    scores: dict[str, Any] = {}
    excluded: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    injected: list[str] = []
    budget: dict[str, Any] = {}
    failure: str | None = None
    for span in spans:
        if span["phase"] != "request":
            continue
        attrs = span["attributes"]
        if span["name"] == "memento.retrieve":
            scores = _mapping(attrs.get("memento.memory.scores"))
            excluded = [e for e in _list(attrs.get("memento.memory.excluded")) if _is_entry(e)]
            failure = attrs.get("memento.memory.error")
        elif span["name"] == "memento.budget":
            budget = {
                key.removeprefix("memento.budget."): value
                for key, value in attrs.items()
                if key.startswith("memento.budget.") and key != "memento.budget.dropped_ids"
            }
            for pair in _list(attrs.get("memento.budget.dropped_ids")):
                if isinstance(pair, list) and len(pair) == 2:
                    dropped[str(pair[0])] = str(pair[1])
        elif span["name"] == "memento.inject":
            injected = [str(i) for i in _list(attrs.get("memento.memory.ids"))]
    ranked = sorted(scores.items(), key=lambda item: -_number(_parts(item[1]).get("score")))
    candidates = [
        _ranked_candidate(memory_id, _parts(parts), rank, len(ranked), injected, dropped, budget)
        for rank, (memory_id, parts) in enumerate(ranked, start=1)
    ]
    candidates.extend(_excluded_candidate(entry) for entry in excluded)
    return {
        "injected_ids": injected,
        "candidates": candidates,
        "budget": budget,
        "failure": failure,
        "legend": SCORE_LEGEND,
    }


def _ranked_candidate(
    memory_id: str,
    parts: dict[str, Any],
    rank: int,
    total: int,
    injected: list[str],
    dropped: dict[str, str],
    budget: dict[str, Any],
) -> dict[str, Any]:
    terms = _mapping(parts.get("terms"))
    entry: dict[str, Any] = {
        "id": memory_id,
        "short_id": short_id(memory_id),
        "kind": parts.get("kind"),
        "date": parts.get("date"),
        "rank": rank,
        "score": parts.get("score"),
        "terms": {name: terms[name] for name in TERMS if name in terms} or None,
        "signals": {name: parts[name] for name in SIGNALS if name in parts},
        "memory_trust": parts.get("trust"),
        "injected": memory_id in injected,
    }
    if memory_id in injected:
        used, available = budget.get("used"), budget.get("available")
        room = f" ({used} of {available} tokens used)" if used is not None else ""
        why = f"ranked {rank} of {total} and fitted in the memory budget{room}"
        return {**entry, "reason": "injected", "why": why}
    code = dropped.get(memory_id)
    if code in _BUDGET_REASONS:
        reason, why = _BUDGET_REASONS[code]
        numbers = {"available": budget.get("available"), "frame": budget.get("frame", "?")}
        return {**entry, "reason": reason, "why": why.format(**numbers)}
    if not injected and not budget:
        why = "retrieval stopped before the budget stage (see the timeline)"
        return {**entry, "reason": "not reached", "why": why}
    return {**entry, "reason": "unknown", "why": "no reason was recorded for this candidate"}


def _excluded_candidate(entry: dict[str, Any]) -> dict[str, Any]:
    memory_id = str(entry["id"])
    code = str(entry.get("reason") or "")
    duplicate_of = entry.get("duplicate_of")
    return {
        "id": memory_id,
        "short_id": short_id(memory_id),
        "kind": entry.get("kind"),
        "date": entry.get("date"),
        "rank": None,
        "score": None,
        "terms": None,
        "signals": {},
        "memory_trust": None,
        "injected": False,
        "reason": _NOT_CONSIDERED.get(code, code or "excluded"),
        "why": str(entry.get("detail") or ""),
        "duplicate_of": str(duplicate_of) if duplicate_of else None,
        "duplicate_of_short": short_id(str(duplicate_of)) if duplicate_of else None,
    }


def explain_writes(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each candidate the write path judged: its verdict as a sentence, its trust signals, and
    what consolidation did with it (verdicts and decisions are recorded in the same order)."""
    verdicts: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    for span in spans:
        attrs = span["attributes"]
        verdicts.extend(v for v in _list(attrs.get("memento.verdicts")) if isinstance(v, dict))
        decisions.extend(d for d in _list(attrs.get("memento.decisions")) if isinstance(d, dict))
    writes = []
    for index, verdict in enumerate(verdicts):
        decision = decisions[index] if index < len(decisions) else {}
        writes.append(_write_entry(verdict, decision))
    return writes


def _write_entry(verdict: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    kind = verdict.get("kind") or decision.get("kind") or "memory"
    trust = verdict.get("trust")
    label = _VERDICTS.get(str(verdict.get("verdict")), str(verdict.get("verdict")))
    trust_text = f" with trust {trust:.2f}" if isinstance(trust, int | float) else ""
    signals = [
        {
            "signal": str(r.get("signal")),
            "delta": r.get("delta"),
            "detail": r.get("detail") or "",
            "hard": bool(r.get("hard")),
        }
        for r in _list(verdict.get("reasons"))
        if isinstance(r, dict)
    ]
    memory_id = decision.get("memory_id")
    target = decision.get("target")
    return {
        "kind": kind,
        "verdict": verdict.get("verdict"),
        "trust": trust,
        "sentence": f"{label}: a {kind}{trust_text}.",
        "signals": signals,
        "operation": decision.get("operation"),
        "outcome": _outcome(decision),
        "memory_id": memory_id,
        "memory_short_id": short_id(str(memory_id)) if memory_id else None,
        "target": target,
        "target_short_id": short_id(str(target)) if target else None,
    }


def _outcome(decision: dict[str, Any]) -> str:
    """What consolidation did, in words; ids are shown next to it as links."""
    operation = decision.get("operation")
    reason = decision.get("reason")
    why = f" ({reason})" if reason else ""
    if operation == "ADD":
        status = decision.get("status")
        held = f" with status {status}" if status and status != "active" else ""
        return f"Written as a new memory{held}{why}."
    if operation == "UPDATE":
        return f"Written as the new version of an existing memory, which it supersedes{why}."
    if operation == "DELETE":
        return f"An existing memory was forgotten on request{why}."
    if operation == "NOOP":
        return f"Nothing written: an existing memory already says this{why}."
    return "Not recorded." if operation is None else f"{operation}{why}."


def _parts(value: Any) -> dict[str, Any]:
    """A candidate's recorded parts; a bare number is its score alone."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"score": value}
    return _mapping(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_entry(value: Any) -> bool:
    return isinstance(value, dict) and "id" in value


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("-inf")
