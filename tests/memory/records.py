"""Building real MemoryRecord / SearchHit values for stage tests (plain data, no stand-ins)."""

from __future__ import annotations

import time
from typing import Any

from storage.records import MemoryRecord, SearchHit


def record(memory_id: str, text: str, kind: str = "fact", **changes: Any) -> MemoryRecord:
    now = time.time()
    values: dict[str, Any] = {
        "id": memory_id,
        "tenant_id": "acme",
        "user_id": "u1",
        "session_id": None,
        "agent_id": None,
        "kind": kind,
        "text": text,
        "key_text": text,
        "fields": {},
        "metadata": {},
        "keywords": [],
        "tags": [],
        "source_role": "user",
        "source_request_id": None,
        "trace_id": None,
        "trust": 0.8,
        "trust_reasons": [],
        "status": "active",
        "version": 1,
        "supersedes": None,
        "superseded_by": None,
        "q": 0.0,
        "q_visits": 0,
        "reward_ma": 0.0,
        "last_reward": None,
        "n_pos": 0,
        "n_neg": 0,
        "created_at": now,
        "updated_at": now,
        "last_used_at": None,
        "valid_from": now,
        "valid_to": None,
        "expires_at": None,
        "embedding_model": "local",
        "derived_from_ids": [],
        "evidence": [],
        "model": None,
    }
    values.update(changes)
    return MemoryRecord(**values)


def hit(
    rec: MemoryRecord,
    bm25_rank: int | None,
    vector_rank: int | None,
    cosine: float = 0.6,
    vector: list[float] | None = None,
) -> SearchHit:
    return SearchHit(
        rec, 1.0 if bm25_rank is not None else None, bm25_rank, cosine, vector_rank, vector
    )
