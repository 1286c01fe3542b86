"""A Responses message's content parts: each says its type, and a text part carries its text,
relayed or translated (the proxy reads that text for memory and for the chat translation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api
from tests.responses.conftest import NATIVE, TRANSLATED
from tests.scripted_upstream import ScriptedUpstream


def _said(*parts: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}, *parts]}]


@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
@pytest.mark.parametrize(
    ("parts", "param", "says"),
    [
        (
            [{"type": "input_text"}],
            "input[0].content[1].text",
            "a 'input_text' part without its 'text'",
        ),
        ([{"type": "input_text", "text": 5}], "input[0].content[1].text", "got a number"),
        ([{"text": "Hi"}], "input[0].content[1].type", "must say what kind of part it is"),
        (["Hi"], "input[0].content[1]", 'a content part such as {"type": "input_text"'),
    ],
)
def test_a_part_without_its_type_or_text_is_refused(
    upstream: ScriptedUpstream,
    responses_proxy: Callable[..., RunningProxy],
    model: str,
    parts: list[Any],
    param: str,
    says: str,
) -> None:
    with api(responses_proxy()) as http:
        response = http.post("/v1/responses", json={"model": model, "input": _said(*parts)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"]
    assert upstream.received == []
