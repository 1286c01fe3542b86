"""The `Door` protocol: what the memory stages and the call flow need from a client API."""

from __future__ import annotations

from typing import Any, Protocol


class StreamReader(Protocol):
    """Rebuilds a streamed answer from the raw server-sent-event bytes it is fed."""

    def feed(self, data: bytes) -> None: ...

    def result(self) -> dict[str, Any]:
        """The answer as a chat.completion dict; with an `error` key when the stream broke (an
        error event, or no final event), which the write path does not learn from."""
        ...


class Door(Protocol):
    """One client API, as the memory stages and the call flow see it."""

    name: str  # the API's name in spans and logs: chat_completions, responses, messages
    # How a stream's final event starts (one of these: a stream may end in several ways), held
    # back from the client until the exchange is queued durably (chat's is `data: [DONE]`).
    final_events: tuple[bytes, ...]

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The call's conversation as chat-completions messages (role, content, tool_calls),
        what the query, the budget and extraction read."""
        ...

    def with_block(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        """A copy of the request body with the memory block where this API keeps instructions."""
        ...

    def requested_output_tokens(self, body: dict[str, Any]) -> int | None:
        """The output tokens the call asks for, if it says."""
        ...

    def chat_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A whole (non-streamed, successful) answer of this API as a chat.completion dict."""
        ...

    def stream_reader(self) -> StreamReader:
        """A reader for one streamed answer of this API."""
        ...
