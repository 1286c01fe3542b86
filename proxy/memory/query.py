"""Query: whose memory this call uses, what memory may do, and the text it is searched with.

The scope comes from the tenant (the key), the user (OpenAI `user` field or `X-Memento-User`) and
the session (`X-Memento-Session`). `X-Memento-Mode` narrows memory for one request, never beyond
what the tenant's policy allows. The query is the latest user turn, plus the recent turns it
refers to when it cannot stand alone ("that", "the same restaurant"); tool results are context of
the conversation, never the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, get_args

from proxy.messages import message_text
from proxy.policy import MemoryMode, Policy
from storage.records import Scope

MODES: tuple[MemoryMode, ...] = get_args(MemoryMode)
_READS = {"read", "full"}
_WRITES = {"write", "full"}

# Words that point back into the conversation: with them the latest turn alone is no query.
_REFERRING = re.compile(
    r"\b(that|this|these|those|it|its|they|them|their|there|he|she|him|her|"
    r"the same|same one|above|previous|earlier|again|one more|another)\b",
    re.IGNORECASE,
)
_SHORT_TURN_WORDS = 6
CONTEXT_CHARS = 300
# A longer turn is searched with its beginning and its end, this much in all: the ask is there,
# not in the middle of a pasted document, the embedder reads its first 256 tokens anyway, and
# the word checks and BM25 analysis would otherwise read megabytes on the event loop.
MAX_QUERY_CHARS = 2_000
# Where a text may be cut short: after a sentence's end, or at a line break.
_BOUNDARY = re.compile(r"[.!?]\s|\n")


class InvalidMemoryMode(ValueError):
    """`X-Memento-Mode` carried a value that is not a memory mode."""


@dataclass(frozen=True)
class MemoryAccess:
    """What memory does for one request: where it reads and writes, and whether it may."""

    scope: Scope | None  # None: no memory scope (anonymous call, tenant-shared memory off)
    mode: MemoryMode
    include_shared: bool

    @property
    def reads(self) -> bool:
        return self.scope is not None and self.mode in _READS

    @property
    def writes(self) -> bool:
        return self.scope is not None and self.mode in _WRITES


def resolve_mode(policy: Policy, header: str | None) -> MemoryMode:
    """The request's effective mode: the header's wish, cut down to what the policy allows.

    A mode the policy does not allow keeps only the capabilities (read, write) that some allowed
    mode grants, so `full` under a read-only policy becomes `read`.
    """
    memory = policy.memory
    if not memory.enabled:
        return "off"
    if header is None or not header.strip():
        wanted: str = memory.default_mode
    else:
        wanted = header.strip().lower()
        if wanted not in MODES:
            raise InvalidMemoryMode(
                f"X-Memento-Mode must be one of {', '.join(MODES)}; got {header.strip()!r}"
            )
    if wanted in memory.allowed_modes:
        return wanted
    may_read = any(mode in _READS for mode in memory.allowed_modes)
    may_write = any(mode in _WRITES for mode in memory.allowed_modes)
    reads = wanted in _READS and may_read
    writes = wanted in _WRITES and may_write
    if reads and writes:
        return "full"
    if reads:
        return "read"
    if writes:
        return "write"
    return "off"


def resolve_access(
    policy: Policy,
    *,
    user_id: str | None,
    session_id: str | None,
    mode_header: str | None,
) -> MemoryAccess:
    """Scope and mode of one request. Without a user, the policy's `anonymous` rule decides."""
    mode = resolve_mode(policy, mode_header)
    user = user_id.strip() if user_id else None
    if not user:
        if policy.memory.anonymous == "off":
            return MemoryAccess(scope=None, mode="off", include_shared=False)
        return MemoryAccess(Scope(policy.tenant, None, session_id), mode, include_shared=False)
    shared = bool(policy.memory.shared_kinds)
    return MemoryAccess(Scope(policy.tenant, user, session_id), mode, include_shared=shared)


def build_query(messages: list[dict[str, Any]], context_turns: int) -> str:
    """The search text for a conversation: its latest user turn, with context when it refers back.

    Context is up to `context_turns` earlier user and assistant turns (their last few hundred
    characters each), added only when the latest turn is short or uses a referring word. A
    latest turn of more than `MAX_QUERY_CHARS` is searched with its beginning and end.
    """
    latest_index = None
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user" and message_text(messages[index]).strip():
            latest_index = index
            break
    if latest_index is None:
        return ""
    latest = head_and_tail(message_text(messages[latest_index]).strip(), MAX_QUERY_CHARS)
    if context_turns <= 0 or not needs_context(latest):
        return latest
    context: list[str] = []
    for message in reversed(messages[:latest_index]):
        if len(context) >= context_turns:
            break
        if message.get("role") not in ("user", "assistant"):
            continue  # system prompts and tool results are not what the user asks about
        text = message_text(message).strip()
        if text:
            context.append(text[-CONTEXT_CHARS:])
    return "\n".join([*reversed(context), latest])


def needs_context(turn: str) -> bool:
    """Whether a turn cannot stand alone: it is short, or it refers back ("that", "the same")."""
    return len(turn.split()) < _SHORT_TURN_WORDS or bool(_REFERRING.search(turn))


def head_and_tail(text: str, limit: int) -> str:
    """`text` itself when it has at most `limit` characters; else its first and last parts, at
    most `limit` characters in all, joined by a blank line. Each part is cut at a sentence's
    end or a line break where one lies in its outer half, so that no sentence is cut short
    there: what is read of the text is its own verbatim sentences."""
    if len(text) <= limit:
        return text
    half = limit // 2
    head, tail = text[:half], text[len(text) - half :]
    ends = [match.end() for match in _BOUNDARY.finditer(head, half // 2)]
    if ends:
        head = head[: ends[-1]]
    start = _BOUNDARY.search(tail, 0, half // 2)
    if start is not None:
        tail = tail[start.end() :]
    return f"{head.rstrip()}\n\n{tail.lstrip()}"
