"""Concurrent embeddings: small requests share one batch and never wait behind a large one."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from storage.embed_queue import EncodeQueue, Vectors
from storage.embedders import LocalEmbedder


class SlowEncoder:
    """An encoder that takes a while per batch and remembers each batch it was given."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self.busy = threading.Event()

    def __call__(self, texts: list[str]) -> Vectors:
        self.batches.append(list(texts))
        self.busy.set()
        threading.Event().wait(self.seconds)
        return [[float(len(text))] for text in texts]


class CountingEncoder(SlowEncoder):
    """A slow encoder that also counts how many of its calls overlap at most."""

    def __init__(self, seconds: float = 0.02) -> None:
        super().__init__(seconds)
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, texts: list[str]) -> Vectors:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().__call__(texts)
        finally:
            with self.lock:
                self.now -= 1


def test_requests_that_arrive_while_the_encoder_is_busy_run_as_one_batch() -> None:
    encoder = SlowEncoder()

    async def scenario() -> list[Vectors]:
        queue = EncodeQueue(encoder, ThreadPoolExecutor(max_workers=1))
        first = asyncio.ensure_future(queue.encode(["a"]))
        while not encoder.busy.is_set():
            await asyncio.sleep(0.001)
        rest = [queue.encode(["b" * n]) for n in range(1, 10)]
        return [await first, *await asyncio.gather(*rest)]

    results = asyncio.run(scenario())
    assert [len(batch) for batch in encoder.batches] == [1, 9]
    assert results == [[[1.0]], *[[[float(n)]] for n in range(1, 10)]]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_query_does_not_wait_for_a_whole_import(workers: int) -> None:
    encoder = CountingEncoder(seconds=0.01)

    async def scenario() -> list[str]:
        executor = ThreadPoolExecutor(max_workers=workers)
        queue = EncodeQueue(encoder, executor, chunk=8, workers=workers)
        finished: list[str] = []

        async def run(name: str, texts: list[str]) -> None:
            await queue.encode(texts)
            finished.append(name)

        large = asyncio.ensure_future(run("import", [f"memory {i}" for i in range(80 * workers)]))
        while not encoder.busy.is_set():
            await asyncio.sleep(0.001)
        await run("query", ["what do I like?"])
        await large
        return finished

    assert asyncio.run(scenario()) == ["query", "import"]
    # It runs right after the chunks already running, one per worker.
    assert ["what do I like?"] in encoder.batches[: workers + 2]
    assert encoder.most == workers


def test_a_failing_batch_fails_its_requests_only() -> None:
    def encode(texts: list[str]) -> Vectors:
        if "bad" in texts:
            raise ValueError("cannot encode")
        return [[1.0] for _ in texts]

    async def scenario() -> Vectors:
        queue = EncodeQueue(encode, ThreadPoolExecutor(max_workers=1), chunk=8)
        with pytest.raises(ValueError):
            await queue.encode(["bad"])
        return await queue.encode(["good"])

    assert asyncio.run(scenario()) == [[1.0]]


def test_concurrent_embeddings_match_one_at_a_time() -> None:
    embedder = LocalEmbedder(cache_size=0)
    texts = [f"I practise {sport} on Sundays." for sport in ("kayaking", "chess", "tennis")] * 4

    async def one_at_a_time() -> Vectors:
        return [(await embedder.embed([text]))[0] for text in texts]

    async def together() -> Vectors:
        return [rows[0] for rows in await asyncio.gather(*(embedder.embed([t]) for t in texts))]

    alone, batched = asyncio.run(one_at_a_time()), asyncio.run(together())
    assert np.allclose(np.asarray(alone), np.asarray(batched), atol=1e-5)


def test_a_large_request_uses_every_worker_and_keeps_its_order() -> None:
    encoder = CountingEncoder()
    texts = [f"memory {'x' * i}" for i in range(80)]

    async def scenario() -> Vectors:
        queue = EncodeQueue(encoder, ThreadPoolExecutor(max_workers=2), chunk=8, workers=2)
        return await queue.encode(texts)

    assert asyncio.run(scenario()) == [[float(len(text))] for text in texts]
    assert encoder.most == 2
    assert sorted(len(batch) for batch in encoder.batches) == [8] * 10


def test_small_requests_run_one_batch_at_a_time_even_with_two_workers() -> None:
    encoder = CountingEncoder()

    async def scenario() -> None:
        queue = EncodeQueue(encoder, ThreadPoolExecutor(max_workers=2), workers=2)
        first = asyncio.ensure_future(queue.encode(["a"]))
        while not encoder.busy.is_set():
            await asyncio.sleep(0.001)
        await asyncio.gather(first, *(queue.encode(["b" * n]) for n in range(1, 10)))

    asyncio.run(scenario())
    assert [len(batch) for batch in encoder.batches] == [1, 9]
    assert encoder.most == 1


def test_texts_the_model_sees_alike_are_encoded_once_and_cached_as_one() -> None:
    embedder = LocalEmbedder()
    encoded: list[list[str]] = []
    encode = embedder._encode_sync

    def counting(texts: list[str]) -> Vectors:
        encoded.append(list(texts))
        return encode(texts)

    embedder._encode_sync = counting  # type: ignore[method-assign]

    async def scenario() -> tuple[Vectors, Vectors]:
        await embedder.load()
        # A statement's text and its key text differ in case only: the tokenizer lowercases.
        first = await embedder.embed(["The user has a boy.", "the user has a boy.", "I sail."])
        return first, await embedder.embed(["THE USER HAS A BOY."])

    first, again = asyncio.run(scenario())
    assert encoded == [["The user has a boy.", "I sail."]]
    assert first[0] == first[1] == again[0]
    assert not np.allclose(first[0], first[2])
