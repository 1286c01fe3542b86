"""The Responses API's stored answers: by tenant always, erased by user, kept across a reopen."""

from __future__ import annotations

from pathlib import Path

from storage.records import StoredResponse
from storage.store import open_database
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES


def stored(tenant: str, response_id: str, user: str | None) -> StoredResponse:
    return StoredResponse(
        tenant_id=tenant,
        response_id=response_id,
        user_id=user,
        previous_response_id=None,
        created_at=1.0,
        input_items=[{"type": "message", "role": "user", "content": f"from {tenant}"}],
        response={"id": response_id, "object": "response", "output": []},
    )


async def test_responses_are_read_deleted_and_erased_within_one_tenant(
    tmp_path: Path, database_url: str | None
) -> None:
    db = await open_database(tmp_path, database_url, lease_s=120)
    try:
        responses = db.responses
        for tenant in ("acme", "globex"):
            await responses.put_response(stored(tenant, "resp_1", "ann"))
            await responses.put_response(stored(tenant, "resp_2", "bob"))
        await responses.put_response(stored("acme", "resp_1", "ann"))  # stored again: replaced
        got = await responses.get_response("acme", "resp_1")
        assert got is not None and got.input_items[0]["content"] == "from acme"
        assert got.user_id == "ann" and got.response["id"] == "resp_1"

        assert await responses.delete_response("acme", "resp_2")
        assert not await responses.delete_response("acme", "resp_2")
        assert await responses.get_response("globex", "resp_2") is not None  # not another's

        assert await responses.delete_user_responses("acme", "ann") == 1
        assert await responses.get_response("acme", "resp_1") is None
        assert await responses.get_response("globex", "resp_1") is not None
    finally:
        await db.close()
    reopened = await open_database(tmp_path, database_url, lease_s=120)
    try:
        assert await reopened.responses.get_response("globex", "resp_2") is not None
    finally:
        await reopened.close()
