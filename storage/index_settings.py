"""Settings of the index's background maintenance and of LanceDB's caches (process-level)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from storage.errors import SetupError
from storage.numbers import INT64_MAX, parse_whole_number


@dataclass
class MaintenanceSettings:
    """When the background maintenance builds indexes, and how much LanceDB may cache;
    process-level, not per tenant.

    Row counts are per tenant table. The index type was chosen by measuring one tenant of
    100k rows, k=30, a scope filter covering the table: IVF_FLAT with small partitions is an
    order of magnitude faster than a flat search and builds in seconds, at full recall@30
    for queries near the data's topics and most of it for random ones. Larger
    partitions were slower for the same recall; IVF_PQ (refine 5) and IVF_RQ were no
    faster and lost recall, and they and IVF_HNSW_SQ took far longer to build (figures:
    docs/storage.md#measured-choices).
    """

    # Below this a tenant's table is searched flat (cheap while it is small, slow at 100k
    # rows); above it an IVF index pays off, and builds quickly.
    vector_index_min_rows: int = 5_000
    # IVF_FLAT: exact distances inside the probed partitions; a query reads about
    # nprobes * rows_per_partition vectors (7.5k here) whatever the tenant's size.
    rows_per_partition: int = 250
    nprobes: int = 30
    prune_older_than: timedelta = timedelta(minutes=5)
    # Load a table's vector and full-text indexes into LanceDB's cache after maintaining it
    # (memory, and a moment per table off the request path). Otherwise IVF partitions are read on
    # first use, and searches round-robin over many large tenants ran several times slower
    # until every partition had been touched.
    prewarm_indexes: bool = True
    # LanceDB's caches (its defaults: 6 GiB of indexes, 1 GiB of metadata). Every write commits
    # a new table version, and the version's manifest and file metadata enter the metadata
    # cache; every maintenance pass gives the table's indexes new ids, loaded into the index
    # cache anew. Entries of superseded versions are never read again but stay until the
    # cache is full: RSS rose with every memory written and was never given back. The bounds
    # below make LanceDB evict them. The index cache must hold the indexes searches use (the
    # prewarmed ones: ~1.6 KB per row); the metadata cache only the current versions' files.
    index_cache_bytes: int = 1 << 30
    metadata_cache_bytes: int = 64 << 20
    # Bounds alone let superseded entries fill the caches before any is evicted: at the
    # defaults RSS kept climbing through a 20-minute soak. So once the caches hold
    # this much more than they did after the last fresh start, and at least twice as much,
    # maintenance reopens the tables in a new, empty Session and prewarms only what is current.
    # Doubling keeps the reopen's cost (re-reading manifests, reloading indexes) amortised.
    recycle_after_bytes: int = 64 << 20

    @classmethod
    def from_env(cls) -> MaintenanceSettings:
        """MEMENTO_INDEX_CACHE_MB and MEMENTO_INDEX_METADATA_CACHE_MB."""
        return cls(
            index_cache_bytes=_megabytes("INDEX_CACHE_MB", cls.index_cache_bytes),
            metadata_cache_bytes=_megabytes("INDEX_METADATA_CACHE_MB", cls.metadata_cache_bytes),
        )


def _megabytes(name: str, default_bytes: int) -> int:
    raw = os.environ.get(f"MEMENTO_{name}", "").strip()
    if not raw:
        return default_bytes
    megabytes = parse_whole_number(raw, 1, INT64_MAX >> 20)  # in bytes, still a 64-bit integer
    if megabytes is None:
        raise SetupError(
            f"bad setting: MEMENTO_{name} must be a whole number of megabytes (at least 1), "
            f"got {raw!r}"
        )
    return megabytes << 20
