"""The room a call leaves for memories: counted exactly, and tokenized only when it matters."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import tokens
from proxy.llm import import_litellm, openai_window, window_of
from proxy.memory.budget import available_tokens, prompt_tokens, utf8_bytes
from proxy.policy import BudgetSettings, ModelRoute
from proxy.tokens import count_tokens

ENCODINGS = ["cl100k_base", "o200k_base"]
TEXTS = [
    "plain ASCII words, numbers 1234567890 and punctuation!?",
    "東京の秋、紅葉がきれいです。北京烤鸭。서울의 밤.",
    "emoji 🧗‍♀️🍜🇯🇵 and combining e\u0301 a\u0308",
    " \t\n\n   spaces   and \r\n line breaks \u00a0\u2003",
    "x" * 5_000,
    "🙂" * 300,
    '{"tool": {"name": "search", "arguments": {"q": "ramen"}}}',
]


@pytest.mark.parametrize("encoding_name", ENCODINGS)
@pytest.mark.parametrize("text", TEXTS)
def test_tokens_never_outnumber_utf8_bytes(text: str, encoding_name: str) -> None:
    assert count_tokens(text, encoding_name) <= utf8_bytes(text)


def _call(question: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]
    return messages, {"messages": messages}


def test_a_prompt_that_leaves_the_whole_budget_free_is_not_tokenized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_tokenizer(name: str = "") -> Any:
        raise AssertionError("the prompt was tokenized")

    monkeypatch.setattr(tokens, "encoding", no_tokenizer)
    messages, body = _call("What do I like? " * 2_000)  # 32 KB, in a 128k window
    route = ModelRoute(model="openai/gpt-4o-mini", context_window=128_000)
    room = available_tokens(messages, body, None, route, BudgetSettings(), "o200k_base")
    assert room == BudgetSettings().max_tokens


@pytest.mark.parametrize("encoding_name", ENCODINGS)
def test_near_the_window_the_room_is_what_counting_tokens_gives(encoding_name: str) -> None:
    settings = BudgetSettings(max_tokens=500, reserve_output_tokens=100)
    messages, body = _call("東京の秋 and a few words more. " * 40)
    exact = prompt_tokens(messages, body, encoding_name)
    bound = prompt_tokens(messages, body, encoding_name, utf8_bytes)
    assert exact < bound  # the windows below sit between the two: the bound alone would be wrong
    for window in range(exact + 100, bound + 700, 37):
        route = ModelRoute(model="openai/gpt-4o-mini", context_window=window)
        room = available_tokens(messages, body, None, route, settings, encoding_name)
        assert room == max(0, min(500, window - exact - 100)), window


def test_openai_windows_read_from_the_map_are_what_litellm_answers() -> None:
    """Every model litellm's bundled map lists under `openai`, bare and with its provider: the
    window read without litellm is the one `get_model_info` gives."""
    litellm = import_litellm()
    names = [
        name
        for name, entry in litellm.model_cost.items()
        if entry.get("litellm_provider") == "openai"
    ]
    assert len(names) > 100
    for name in names:
        for model in (name, f"openai/{name}"):
            known, window = openai_window(model)
            assert known, model
            try:
                expected = window_of(litellm.get_model_info(model))
            except Exception:  # litellm raises a bare Exception for models it does not know
                expected = None
            assert window == expected, model
    assert openai_window("openai/my-own-model") == (False, None)
    assert openai_window("anthropic/claude-3-5-sonnet-20241022") == (False, None)
