"""Embedders: the local model (offline, batched) and a litellm model over a loopback upstream."""

from __future__ import annotations

import numpy as np
import pytest

from storage.embedders import EmbedderError, LiteLLMEmbedder, LocalEmbedder, load_embedder
from tests.scripted_upstream import Reply, ScriptedUpstream


async def test_local_embedder_unit_vectors_and_similarity(local_embedder: LocalEmbedder) -> None:
    texts = ["I love hiking in the mountains", "Mountain trekking is my hobby", "Tax forms"]
    vectors = np.asarray(await local_embedder.embed(texts))
    assert vectors.shape == (3, local_embedder.dimensions) == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


async def test_local_embedder_batches_match_single_calls(local_embedder: LocalEmbedder) -> None:
    texts = [f"memory number {i} about topic {i % 7}" for i in range(70)]  # more than one batch
    batched = np.asarray(await local_embedder.embed(texts))
    single = np.asarray(await local_embedder.embed([texts[69]]))
    assert batched.shape == (70, 384)
    assert np.allclose(batched[69], single[0], atol=1e-5)
    assert await local_embedder.embed([]) == []


async def test_load_embedder_local_spec() -> None:
    embedder = await load_embedder("local")
    assert embedder.model_id == "local/all-MiniLM-L6-v2"
    assert embedder.dimensions == 384


async def test_litellm_embedder_over_loopback(upstream: ScriptedUpstream) -> None:
    embedder = LiteLLMEmbedder("openai/stub-embedding", api_base=upstream.url, api_key="k")
    vectors = await embedder.embed(["ab", "abcd"])
    assert embedder.dimensions == 3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] != vectors[1]
    request = upstream.last().json
    assert request["input"] == ["ab", "abcd"]
    assert request["model"] == "stub-embedding"


async def test_litellm_embedder_error_says_what_to_fix(upstream: ScriptedUpstream) -> None:
    upstream.script(*[Reply(status=401)] * 5)
    embedder = LiteLLMEmbedder("openai/stub-embedding", api_base=upstream.url, api_key="bad")
    with pytest.raises(EmbedderError, match="MEMENTO_EMBEDDER=local"):
        await embedder.embed(["hello"])
