"""Budget: how many tokens the memory block may use, and which memories fit in them.

Tokens are counted with tiktoken in the model's own encoding (o200k for the GPT-4o and later
families, cl100k otherwise). The block gets the policy's memory budget, and never more than what is
left of the model's context window (litellm's model info, or the route's override) after the
caller's messages, tools and `max_tokens`. Memories are taken whole, greedily by value per token,
within per-kind shares (facts and preferences, cases, lessons) and at most k2 cases; whatever
share a kind leaves unused is then open to the others.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from proxy.llm import import_litellm, openai_window, window_of
from proxy.memory.inject import (
    SECTION_TITLES,
    block_frame_text,
    example_line,
    render_line,
    section_of,
)
from proxy.memory.retrieve import ScoredMemory
from proxy.messages import message_text
from proxy.policy import BudgetSettings, ModelRoute
from proxy.tokens import count_tokens

# Families tokenized with o200k_base; everything else (GPT-4, GPT-3.5, unknown models) cl100k.
_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)
_PER_MESSAGE_TOKENS = 4  # role and separators, as OpenAI counts chat messages
_REPLY_PRIMING_TOKENS = 3


def encoding_name_for(model: str) -> str:
    """The tiktoken encoding of a model string such as `openai/gpt-4o-mini` or `gpt-4`."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    return "cl100k_base"


# Memories' line costs kept (about 200 bytes each): a memory is counted once per version and
# encoding while it stays among the most recently costed, not on every request that finds it.
_LINE_TOKENS_KEPT = 65_536
_line_tokens_by_version: OrderedDict[tuple[str, int, str, float, str], int] = OrderedDict()


def line_tokens(item: ScoredMemory, encoding_name: str) -> int:
    """Tokens of a memory's line in the block, with the newline that ends it: exactly what the
    line adds to any block (see `fit_to_budget`). Kept by what the line shows: the memory's id
    and version (a new text is a new version), kind and date."""
    record = item.record
    when = record.valid_from or record.created_at
    key = (record.id, record.version, record.kind, when, encoding_name)
    tokens = _line_tokens_by_version.get(key)
    if tokens is not None:
        _line_tokens_by_version.move_to_end(key)
        return tokens
    tokens = count_tokens(render_line(item) + "\n", encoding_name)
    _line_tokens_by_version[key] = tokens
    if len(_line_tokens_by_version) > _LINE_TOKENS_KEPT:
        _line_tokens_by_version.popitem(last=False)
    return tokens


@lru_cache(maxsize=8)
def _frame_tokens(encoding_name: str) -> int:
    return count_tokens(block_frame_text(), encoding_name)


def unmet_budget_minimum(max_tokens: int, models: Iterable[str]) -> int | None:
    """The fewest tokens a block carrying one short memory takes (frame, a heading and the
    memory's line) in the encoding of any of `models`, when `max_tokens` is below it: such a
    budget never injects anything. None when it is not (found without tokenizing for any
    budget not smaller than the block's bytes, so for every usual one)."""
    text = block_frame_text() + "\n" + SECTION_TITLES["about"] + "\n" + example_line() + "\n"
    if max_tokens >= utf8_bytes(text):
        return None
    encodings = {encoding_name_for(model) for model in models} or {"cl100k_base"}
    minimum = max(
        _frame_tokens(name)
        + _heading_tokens(name)["about"]
        + count_tokens(example_line() + "\n", name)
        for name in encodings
    )
    return minimum if max_tokens < minimum else None


@lru_cache(maxsize=8)
def _heading_tokens(encoding_name: str) -> dict[str, int]:
    """Tokens of each section heading, with its newline."""
    return {
        section: count_tokens(title + "\n", encoding_name)
        for section, title in SECTION_TITLES.items()
    }


def prompt_tokens(
    messages: list[dict[str, Any]],
    body: dict[str, Any],
    encoding_name: str,
    count: Callable[[str, str], int] = count_tokens,
) -> int:
    """Tokens the caller's own request takes: the conversation (chat-shaped, as its door reads
    it), tool calls, and the body's tool definitions and output format. With `count=utf8_bytes`,
    a bound that is never below the count, found without tokenizing."""
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += _PER_MESSAGE_TOKENS + count(message_text(message), encoding_name)
        if message.get("tool_calls"):
            total += count(json.dumps(message["tool_calls"]), encoding_name)
    for key in ("tools", "functions", "response_format", "text"):
        if body.get(key):
            total += count(json.dumps(body[key]), encoding_name)
    return total


def utf8_bytes(text: str, encoding_name: str = "") -> int:
    """Bytes of `text` in UTF-8, never fewer than its tokens: the encodings are byte-level BPE,
    every token one byte or more (a lone surrogate counts 3 bytes, as U+FFFD would)."""
    del encoding_name  # the bound holds for every byte-level encoding
    return len(text.encode("utf-8", "surrogatepass"))


@lru_cache(maxsize=256)
def litellm_context_window(model: str) -> int | None:
    """The model's input window from litellm's bundled model info; None when unknown. One of
    OpenAI's is read from the map without importing litellm."""
    known, window = openai_window(model)
    if known:
        return window
    try:
        info = import_litellm().get_model_info(model)
    except Exception:  # litellm raises a bare Exception for models it does not know
        return None
    return window_of(info)


def context_window(route: ModelRoute) -> int | None:
    """The route's override, else litellm's model info (the built-in echo model has none)."""
    if not _asks_model_info(route):
        return route.context_window
    return litellm_context_window(route.model)


def window_needs_litellm(route: ModelRoute) -> bool:
    """Whether `context_window(route)` imports litellm: no override, not the echo model, and
    not one of OpenAI's models, whose windows are read from litellm's map without it."""
    return _asks_model_info(route) and not openai_window(route.model)[0]


def _asks_model_info(route: ModelRoute) -> bool:
    return not (route.context_window or route.model == "echo")


def available_tokens(
    messages: list[dict[str, Any]],
    body: dict[str, Any],
    requested_output: int | None,
    route: ModelRoute,
    settings: BudgetSettings,
    encoding_name: str,
) -> int:
    """Tokens the memory block may use for this request (0 when nothing fits): the policy's
    budget, within what the model's window leaves after the prompt and the output asked for."""
    budget = settings.max_tokens
    window = context_window(route)
    if window is not None:
        output = requested_output or settings.reserve_output_tokens
        # Most prompts leave the whole budget free even counted in bytes: then they need no
        # tokenizing, which for a long conversation costs milliseconds a call.
        if window - prompt_tokens(messages, body, encoding_name, utf8_bytes) - output < budget:
            budget = min(budget, window - prompt_tokens(messages, body, encoding_name) - output)
    return max(0, budget)


@dataclass
class BudgetPlan:
    """The memories that fit, in injection order, and what was left out and why."""

    selected: list[ScoredMemory]
    dropped: list[tuple[ScoredMemory, str]] = field(default_factory=list)
    used_tokens: int = 0
    available_tokens: int = 0
    frame_tokens: int = 0  # what the block's fence and preamble take before any memory


def fit_to_budget(
    ranked: Sequence[ScoredMemory],
    available: int,
    settings: BudgetSettings,
    *,
    k2_cases: int,
    encoding_name: str,
) -> BudgetPlan:
    """Choose whole memories for `available` tokens: shares first, then any room left over.

    The block's frame (fence and preamble) is reserved first, and a section's heading is paid
    for with its first memory. Only the k2 best-scored cases compete (the cap is on the best,
    not the shortest); selection is greedy by exp(score) per token, and the selected memories
    keep their ranking order.

    The block's tokens are the sum of its lines' (each with its newline), so the sum is what
    the block costs, with no tokenizing of the block itself: the encodings' pre-tokenizers
    never put a line break and the visible text after it in one piece, and every line of the
    block starts with a visible character (a memory's whitespace, line breaks included, is
    collapsed to single spaces by `render_line`).
    """
    frame = _frame_tokens(encoding_name)
    room = available - frame
    if room <= 0 or not ranked:
        # Too small a policy budget is the operator's to fix; a full window, the caller's.
        reason = "frame" if settings.max_tokens <= frame else "no_room"
        dropped = [(item, reason) for item in ranked]
        return BudgetPlan([], dropped, 0, max(0, available), frame)
    best_cases = [item for item in ranked if _group(item) == "case"][:k2_cases]
    over_k2 = {id(item) for item in ranked if _group(item) == "case"} - {id(i) for i in best_cases}
    competing = [item for item in ranked if id(item) not in over_k2]
    costs = {id(item): line_tokens(item, encoding_name) for item in competing}
    order = sorted(competing, key=lambda item: math.exp(item.score) / costs[id(item)], reverse=True)
    shares = {
        "about": settings.fact_share * room,
        "case": settings.case_share * room,
        "lesson": settings.lesson_share * room,
    }
    headings = _heading_tokens(encoding_name)
    spent = {group: 0 for group in shares}
    opened: set[str] = set()
    chosen: set[int] = set()
    used = 0
    for respect_shares in (True, False):
        for item in order:
            if id(item) in chosen:
                continue
            group, section = _group(item), section_of(item)
            cost = costs[id(item)] + (0 if section in opened else headings[section])
            if used + cost > room:
                continue
            if respect_shares and spent[group] + cost > shares[group]:
                continue
            chosen.add(id(item))
            opened.add(section)
            spent[group] += cost
            used += cost
    selected = [item for item in ranked if id(item) in chosen]
    dropped = [
        (item, "k2_cases" if id(item) in over_k2 else "budget")
        for item in ranked
        if id(item) not in chosen
    ]
    used = frame + used if selected else 0  # the fence and preamble, headings and lines
    return BudgetPlan(selected, dropped, used, available, frame)


def _group(item: ScoredMemory) -> str:
    kind = item.record.kind
    return "about" if kind in ("fact", "preference") else kind
