"""The relay holds a stream's final event until the exchange is queued, whichever way it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.doors.chat import ChatDoor
from proxy.doors.messages import MessagesDoor
from proxy.doors.responses import ResponsesDoor
from proxy.streaming import SSERelay
from proxy.upstreams.base import UpstreamStream

ENDINGS = [
    (ChatDoor().final_events, b"data: [DONE]\n\n"),
    (ResponsesDoor([]).final_events, b'event: response.completed\ndata: {"x": 1}\n\n'),
    (ResponsesDoor([]).final_events, b'event: response.incomplete\ndata: {"x": 1}\n\n'),
    (ResponsesDoor([]).final_events, b'event: response.failed\ndata: {"x": 1}\n\n'),
    (MessagesDoor().final_events, b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
]


@pytest.mark.parametrize(("final_events", "ending"), ENDINGS)
def test_the_final_event_reaches_the_client_only_after_on_complete(
    final_events: tuple[bytes, ...], ending: bytes
) -> None:
    body = b'event: delta\ndata: {"text": "Hello"}\n\n' + ending
    # Cut anywhere, even inside the final event's first line: the hold must still find it.
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    timeline: list[Any] = []

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def close() -> None:
        return None

    async def on_complete() -> None:
        timeline.append("queued")

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client never goes away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            timeline.append(message["body"])

    relay = SSERelay(
        UpstreamStream(chunks(), close),
        headers={},
        on_complete=on_complete,
        final_events=final_events,
    )
    asyncio.run(relay({"type": "http"}, receive, send))
    queued_at = timeline.index("queued")
    before = b"".join(part for part in timeline[:queued_at] if isinstance(part, bytes))
    after = b"".join(part for part in timeline[queued_at:] if isinstance(part, bytes))
    assert before + after == body
    assert after == ending, "the final event went out before the exchange was queued"
