"""Erased content leaves the index's storage, in a folder and on S3: old table versions, which
still hold it, are pruned by maintenance."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from storage.embedders import LocalEmbedder
from storage.index_location import IndexLocation
from storage.index_settings import MaintenanceSettings
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from tests.s3_server import stored_files

SECRET = "Quillbertzeppelin"


def _holding(location: IndexLocation, text: str) -> list[str]:
    return [name for name, data in stored_files(location).items() if text.encode() in data]


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\)")  # no other process here
async def test_an_erased_users_content_is_pruned_from_the_index_storage(
    tmp_path: Path, local_embedder: LocalEmbedder, index_location: IndexLocation
) -> None:
    settings = MaintenanceSettings(prune_older_than=timedelta(0))
    store = await open_embedded_store(
        tmp_path / "data",
        local_embedder,
        maintenance_interval_s=0,
        maintenance=settings,
        index_location=index_location,
    )
    try:
        ann, bob = Scope("acme", "ann"), Scope("acme", "bob")
        await store.memories.add(ann, [NewMemory(kind="fact", text=f"Ann's airship is {SECRET}")])
        await store.memories.add(bob, [NewMemory(kind="fact", text="Bob rides a red bicycle")])
        await store.maintenance.maintain()
        assert _holding(index_location, SECRET)  # the check can see the content at all
        await store.memories.delete_user("acme", "ann", actor="test")
        await store.maintenance.maintain()
        assert _holding(index_location, SECRET) == []
        assert await store.index.index.count("acme") == 1
        hits = await store.memories.search(bob, query_text="bicycle")
        assert [hit.record.text for hit in hits] == ["Bob rides a red bicycle"]
    finally:
        await store.close()
