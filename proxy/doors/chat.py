"""The chat-completions door: OpenAI's `/v1/chat/completions`, the shape the stages speak."""

from __future__ import annotations

from typing import Any

from proxy.memory.inject import inject_block
from proxy.streaming import StreamAssembler
from proxy.upstreams.base import DONE


class ChatDoor:
    """Chat completions: `messages` is the conversation; the block is a system message."""

    name = "chat_completions"
    final_events: tuple[bytes, ...] = (DONE.rstrip(),)

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        return messages if isinstance(messages, list) else []

    def with_block(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        return inject_block(body, block)

    def requested_output_tokens(self, body: dict[str, Any]) -> int | None:
        requested = body.get("max_completion_tokens") or body.get("max_tokens")
        return requested if isinstance(requested, int) else None

    def chat_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    def stream_reader(self) -> StreamAssembler:
        return StreamAssembler()


CHAT = ChatDoor()
