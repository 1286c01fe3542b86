"""The second retrieval round through the real proxy: the block holds what the best hit names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block
from tests.memory.test_recall import DISTRACTORS, LESSONS, NAMED, QUERY
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


@pytest.mark.parametrize("seeds", [0, 3])
def test_the_block_holds_what_the_best_hits_name_only_with_a_second_round(
    seeds: int, upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """ "What does my daughter do each week?" finds "My daughter is called Lena." but neither
    retriever's first five hold "Lena has violin lessons on Tuesdays."; the second round,
    seeded by the best hits, searches with their names ("Lena") and brings it into the
    injected block. Without it (`second_round_seeds: 0`) the block goes without."""
    retrieval = {"k1": 5, "second_round_seeds": seeds}
    proxy = memory_proxy(memory={"default_mode": "read", "retrieval": retrieval})
    with api(proxy) as http:
        for text in [NAMED, LESSONS, *DISTRACTORS]:
            response = http.post(
                "/v1/memories", json={"user": "ines", "kind": "fact", "text": text}
            )
            assert response.status_code == 201, response.text
    upstream.script(Reply(content="She has violin lessons on Tuesdays."))
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUERY}], user="ines"
    )
    block = memory_block(upstream.last().json)
    assert block is not None and NAMED.rstrip(".") in block
    assert (LESSONS.rstrip(".") in block) is (seeds > 0), block
