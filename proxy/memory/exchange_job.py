"""The queued exchange: what `after_call` puts in the durable queue for the write path to learn.

It is stored as JSON in the job queue, so its shape outlives the code that wrote it: `to_json`
writes the keys jobs have always carried, and `from_json` reads a job written by any version,
a key missing from an older job taking the value it had when that version read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from proxy.memory.seam import InjectedMemory

EXCHANGE_JOB = "exchange"  # the job kind in the queue


@dataclass(frozen=True)
class ExchangeJob:
    """One answered exchange to learn from, with the request it came from."""

    request_id: str
    user_id: str | None
    session_id: str | None
    model: str  # the client's model alias ("" when unknown)
    messages: list[dict[str, Any]]  # as the client sent them
    response: dict[str, Any]  # chat.completion-shaped: the answer's message only
    injected: list[InjectedMemory]  # the memories the prompt carried
    trace_id: str | None  # hex ids of the request's root span, linked from the write path
    span_id: str | None
    created_at: float

    @classmethod
    def answered(
        cls,
        *,
        request_id: str,
        user_id: str | None,
        session_id: str | None,
        model: str,
        messages: list[dict[str, Any]],
        answer: dict[str, Any],
        injected: list[InjectedMemory],
        trace_id: str | None,
        span_id: str | None,
    ) -> ExchangeJob:
        """The job for an exchange answered now with the assistant message `answer`."""
        return cls(
            request_id=request_id,
            user_id=user_id,
            session_id=session_id,
            model=model,
            messages=messages,
            response={"choices": [{"message": answer}]},
            injected=injected,
            trace_id=trace_id,
            span_id=span_id,
            created_at=time.time(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "model": self.model,
            "messages": self.messages,
            "response": self.response,
            "injected": [{"id": i.id, "text": i.text} for i in self.injected],
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ExchangeJob:
        """Read a stored job leniently: an older or partial one still teaches what it can."""
        injected = [i for i in payload.get("injected") or [] if isinstance(i, dict)]
        trace_id, span_id = payload.get("trace_id"), payload.get("span_id")
        return cls(
            request_id=str(payload.get("request_id")),
            user_id=payload.get("user_id"),
            session_id=payload.get("session_id"),
            model=str(payload.get("model") or ""),
            messages=list(payload.get("messages") or []),
            response=dict(payload.get("response") or {}),
            injected=[
                InjectedMemory(str(i["id"]) if "id" in i else None, str(i.get("text", "")))
                for i in injected
            ],
            trace_id=str(trace_id) if trace_id else None,
            span_id=str(span_id) if span_id else None,
            created_at=float(payload.get("created_at") or time.time()),
        )
