"""The built-in `echo` model: a local responder that needs no provider key.

It answers with a short description of what it received, so a newcomer's first request works
offline and anyone can see exactly what the proxy sent upstream, memory block included.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import ProxyError
from proxy.messages import message_text
from proxy.tokens import count_tokens
from proxy.upstreams.base import DONE, Target, UpstreamReply, UpstreamStream, sse_event

MEMORY_MARKERS = ("memento", "memory", "memories")


def describe_request(body: dict[str, Any]) -> str:
    """What the echo model says: message counts by role, the last user turn, any memory block."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    roles = Counter(str(m.get("role")) for m in messages)
    counts = ", ".join(f"{n} {role}" for role, n in roles.items())
    lines = [f"echo: received {len(messages)} message(s) ({counts})."]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        lines.append(f"tools offered: {len(tools)}.")
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last_user is not None:
        text = message_text(last_user)
        lines.append(f"last user message: {text[:200]!r}")
    for message in messages:
        text = message_text(message)
        if message.get("role") == "system" and any(k in text.lower() for k in MEMORY_MARKERS):
            lines.append("memory block:\n" + text)
    return "\n".join(lines)


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages", [])
    return sum(count_tokens(message_text(m)) + 4 for m in messages if isinstance(m, dict))


class EchoUpstream:
    """Answers locally, in the same shapes an OpenAI upstream would."""

    async def _answered(self, body: dict[str, Any]) -> tuple[str, dict[str, int], str, int]:
        """The answer, its tokens counted in a worker thread: tiktoken lets go of the
        interpreter while it counts, and a 3 MB message held the event loop for 0.2 s."""
        return await asyncio.to_thread(self._answer, body)

    def _answer(self, body: dict[str, Any]) -> tuple[str, dict[str, int], str, int]:
        text = describe_request(body)
        prompt = _prompt_tokens(body)
        completion = count_tokens(text)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return text, usage, f"chatcmpl-echo-{uuid.uuid4().hex[:24]}", int(time.time())

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        text, usage, call_id, created = await self._answered(body)
        n = body.get("n") or 1
        completion = {
            "id": call_id,
            "object": "chat.completion",
            "created": created,
            "model": "echo",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": usage,
        }
        return UpstreamReply(
            200, json.dumps(completion).encode(), {"content-type": "application/json"}
        )

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        """The answer as OpenAI streams it: for each of the `n` choices its role, its words and
        its finish, each chunk carrying the choice's index (the choices interleaved, as
        OpenAI's are), then the usage when asked for."""
        text, usage, call_id, created = await self._answered(body)
        choices = range(body.get("n") or 1)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse_event(
                {
                    "id": call_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": "echo",
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
                    **({"usage": None} if include_usage else {}),
                }
            )

        async def chunks() -> AsyncIterator[bytes]:
            for index in choices:
                yield chunk(index, {"role": "assistant", "content": ""})
            words = text.split(" ")
            for i, word in enumerate(words):
                for index in choices:
                    yield chunk(index, {"content": word if i == len(words) - 1 else word + " "})
            for index in choices:
                yield chunk(index, {}, "stop")
            if include_usage:
                yield sse_event(
                    {
                        "id": call_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": "echo",
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield DONE

        async def close() -> None:
            return None

        return UpstreamStream(chunks(), close)

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        raise ProxyError(
            400,
            f"Model '{target.alias}' is the built-in echo responder and has no embeddings; "
            "point an alias at an embedding model to use /v1/embeddings.",
            param="model",
            code="model_not_supported",
        )
