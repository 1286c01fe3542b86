"""With an extraction model, the model proposes memories; only evidence-backed ones are kept."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import client_for, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

QUESTION = "I'm training for a marathon in May. Can you plan my week?"
ANSWER = "Run five times: two easy runs, one long run, one tempo run and one interval session."


def test_model_extraction_keeps_only_memories_with_verbatim_evidence(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(
        memory={"extraction": {"model": "extractor"}},
        extra_models={"extractor": {"model": "openai/extractor-model", "api_base": upstream.url}},
    )
    extraction = {
        "memories": [
            {
                "kind": "fact",
                "text": "The user is training for a marathon in May.",
                "evidence": "I'm training for a marathon in May.",
            },
            {
                "kind": "preference",
                "text": "The user hates swimming.",
                "evidence": "I hate swimming.",
            },  # never said: dropped
        ],
        "case": {
            "task": "Weekly marathon training plan",
            "approach": "Five mixed runs a week",
            "task_evidence": "Can you plan my week?",
            "approach_evidence": "two easy runs, one long run",
        },
    }
    upstream.script(Reply(content=ANSWER), Reply(content=json.dumps(extraction)))
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], user="vera"
    )
    memories = wait_for_memories(proxy, "vera", 2)
    assert sorted((m["kind"], m["text"]) for m in memories) == [
        ("case", "Request: Weekly marathon training plan → Answer: Five mixed runs a week"),
        ("fact", "The user is training for a marathon in May."),
    ]
    extraction_call = next(
        r.json for r in upstream.received if r.json["model"] == "extractor-model"
    )
    assert extraction_call["response_format"]["type"] == "json_schema"
    sent = json.loads(extraction_call["messages"][1]["content"])
    assert sent["new_user_turns"] == [QUESTION] and sent["answer"] == ANSWER
