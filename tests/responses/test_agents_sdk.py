"""The OpenAI Agents SDK (which speaks the Responses API) runs an agent through the proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import openai
import pytest
from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled

from tests.harness import RunningProxy
from tests.memory.conftest import KEY
from tests.responses.conftest import NATIVE, TRANSLATED
from tests.scripted_upstream import Reply, ScriptedUpstream


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}, 21C"


async def run_streamed(agent: Agent, question: str) -> str:
    result = Runner.run_streamed(agent, question)
    async for _ in result.stream_events():
        pass
    return str(result.final_output)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_an_agent_with_one_function_tool_runs_to_completion(
    upstream: ScriptedUpstream,
    responses_proxy: Callable[..., RunningProxy],
    model: str,
    stream: bool,
) -> None:
    proxy = responses_proxy()
    set_tracing_disabled(True)
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0),
        use_for_tracing=False,
    )
    call = {
        "id": "call_agent_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})},
    }
    upstream.script(Reply(tool_calls=[call]), Reply(content="It is sunny in Oslo."))
    agent = Agent(
        name="Weather", instructions="Answer weather questions.", model=model, tools=[get_weather]
    )

    question = "What is the weather in Oslo?"
    if stream:
        answer = asyncio.run(run_streamed(agent, question))
    else:
        answer = Runner.run_sync(agent, question).final_output

    assert answer == "It is sunny in Oslo."
    first, second = upstream.received[-2:]
    path = "/v1/responses" if model == NATIVE else "/v1/chat/completions"
    assert first.path == second.path == path
    sent = json.dumps(second.json)
    assert "Sunny in Oslo, 21C" in sent  # the tool's output went back to the model
