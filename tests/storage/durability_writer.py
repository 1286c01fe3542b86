"""A process that writes memories until it is killed (driven by test_store_durability.py).

Usage: python durability_writer.py DATA_DIR TAG MODE. MODE `add` writes batches through
`store.memories.add` forever, printing `BEGIN n size` before and `ACK n` after each batch. MODE
`commit` commits one batch to SQLite (the first half of `add`) without touching the index, prints
`ACK`, then waits to be killed, which is the crash between the SQLite commit and the index write.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import numpy as np

from storage import open_store
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope
from storage.sqlite.outbox import embedding_input

SCOPE = Scope("durable", "writer")


def batch_texts(tag: str, batch: int, size: int) -> list[str]:
    return [f"note tok{tag}x{batch}x{i} about durable writes" for i in range(size)]


async def main(data_dir: str, tag: str, mode: str) -> None:
    embedder = LocalEmbedder()
    await embedder.load()
    store = await open_store(data_dir, embedder)
    print("READY", flush=True)
    if mode == "commit":
        texts = batch_texts(tag, 0, 3)
        now = time.time()
        records = [
            store.memories._new_record(SCOPE, NewMemory(kind="fact", text=t), now) for t in texts
        ]
        vectors = await embedder.embed([embedding_input(r.key_text, r.text) for r in records])
        blobs = [np.asarray(vector, dtype=np.float32).tobytes() for vector in vectors]
        await store.db.memories.insert_memories(records, blobs, actor="test")
        print("BEGIN 0 3", flush=True)
        print("ACK 0", flush=True)
        await asyncio.sleep(3600)
    rng = random.Random()
    batch = 0
    while True:
        size = rng.randint(1, 4)
        print(f"BEGIN {batch} {size}", flush=True)
        memories = [NewMemory(kind="fact", text=t) for t in batch_texts(tag, batch, size)]
        await store.memories.add(SCOPE, memories)
        print(f"ACK {batch}", flush=True)
        batch += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
