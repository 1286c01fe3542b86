"""What the proxy keeps of Responses API calls: the conversation `previous_response_id` names.

Every answered call whose body does not say `store: false` is kept in the tenant's store, by
tenant and user, whichever way it was answered (relayed or translated): its response object as
the client got it, and its whole context as input items (the stored conversation it continued,
then its own input). A later call naming it continues that conversation: its items (context and
output) are the history the door reads. A translated response is kept before the client has it
whole (before a stream's final event), so the next call can name it at once; a relayed one,
whose conversation the upstream keeps, right after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy.doors.responses import ResponsesStreamReader, input_items, item_type
from proxy.errors import ProxyError
from proxy.routes.flow import OpenStream, Send
from proxy.upstreams.base import Target, UpstreamReply, UpstreamStream
from proxy.upstreams.responses_translate import new_id
from storage.api import ResponseStore
from storage.records import StoredResponse

log = logging.getLogger("memento.proxy")

_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def listed_item(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as `input_items` lists it: with its type and an id, a message's text as
    content parts."""
    kind = item_type(item)
    listed = {**item, "type": kind} if kind else dict(item)
    if kind == "message" and isinstance(listed.get("content"), str):
        part = "output_text" if listed.get("role") == "assistant" else "input_text"
        listed["content"] = [{"type": part, "text": listed["content"]}]
    listed.setdefault("id", new_id(_ID_PREFIXES.get(str(kind), "item")))
    return listed


def history_items(previous: StoredResponse | None) -> list[dict[str, Any]]:
    """The conversation a call continues: the named response's context, then its output."""
    if previous is None:
        return []
    output = previous.response.get("output")
    return previous.input_items + [i for i in output or [] if isinstance(i, dict)]


def not_found(response_id: str, param: str | None = None) -> ProxyError:
    return ProxyError(
        404 if param is None else 400,
        f"No response with id '{response_id}' is stored for this key's tenant and user: it was "
        "never stored (store: false), was deleted, or belongs to another user.",
        param=param,
        code="response_not_found",
    )


# Responses being kept after their answer went out (relayed calls), by tenant and id, until
# stored: a read of one of them in this process waits for it (`kept`).
_KEEPING: dict[tuple[str, str], asyncio.Task[None]] = {}


async def kept(tenant_id: str, response_id: str) -> None:
    """Wait until a response this process is keeping in the background is stored."""
    task = _KEEPING.get((tenant_id, response_id))
    if task is not None:
        await asyncio.shield(task)


@dataclass
class ResponseKeeper:
    """Keeps one call's answer in the store, once it came: before the answer goes out when the
    proxy holds the conversation (translated calls: the next call needs it at once), after it
    when the upstream holds it (`relayed`: the copy serves GET and memory's view of the
    conversation, and a call's latency does not wait for it)."""

    responses: ResponseStore
    tenant_id: str
    user_id: str | None
    body: dict[str, Any]  # the call's body as the client sent it
    history: list[dict[str, Any]]  # the conversation it continues, as items
    relayed: bool = False

    async def _keep_in_turn(self, response: Any) -> None:
        if not self.relayed:
            await self.keep(response)
            return
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        key = (self.tenant_id, response["id"])
        task = asyncio.create_task(self.keep(response))
        _KEEPING[key] = task
        task.add_done_callback(lambda _: _KEEPING.pop(key, None))

    async def keep(self, response: Any) -> None:
        """Store an answered response; a failure is logged, never the call's."""
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        if response.get("status") not in ("completed", "incomplete"):
            return
        stored = StoredResponse(
            tenant_id=self.tenant_id,
            response_id=response["id"],
            user_id=self.user_id,
            previous_response_id=self.body.get("previous_response_id"),
            created_at=time.time(),
            input_items=self.history + [listed_item(i) for i in input_items(self.body)],
            response=response,
        )
        try:
            await self.responses.put_response(stored)
        except Exception:
            log.exception("could not store response %s of %s", stored.response_id, self.tenant_id)

    def sending(self, send: Send) -> Send:
        """`send`, keeping what it answers."""

        async def send_and_keep(target: Target, body: dict[str, Any]) -> UpstreamReply:
            reply = await send(target, body)
            if reply.status < 400:
                try:
                    answer = json.loads(reply.body)
                except ValueError:
                    return reply  # not JSON: nothing a later call could continue
                await self._keep_in_turn(answer)
            return reply

        return send_and_keep

    def streaming(self, open_stream: OpenStream) -> OpenStream:
        """`open_stream`, keeping the response its stream ends with before the stream ends
        (the flow holds its final event back until then)."""

        async def stream_and_keep(target: Target, body: dict[str, Any]) -> UpstreamStream:
            opened = await open_stream(target, body)
            reader = ResponsesStreamReader()

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in opened.chunks:
                    reader.feed(chunk)
                    yield chunk
                await self._keep_in_turn(reader.response)

            return UpstreamStream(chunks(), opened.close, opened.headers)

        return stream_and_keep
