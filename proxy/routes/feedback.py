"""`POST /v1/memory/feedback {"request_id", "reward" | "score", "comment"?}`: learn from outcomes.

The reward updates the utility Q of every memory injected into that request (and the outcome of
the case the request wrote). One reward counts per request: sending it again replaces it.
Unknown request ids, and those of another tenant, are 404.

`request_id` is the proxy's own id of the call, the `x-request-id` of its response. An id the
client chose (sent as `x-client-request-id` or `x-request-id`) is refused with a 400 saying so,
even when it names a single call: any number of calls may share it, including calls made without
memory that left no request log, so resolving it could reward the wrong user's memories.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.app_state import pipeline_of
from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.memory.learn import InvalidFeedback, reward_from
from proxy.validation import read_json_body
from storage.api import RequestStore

MAX_COMMENT = 2000
EXAMPLE = '{"request_id": "<the x-request-id of the chat response>", "reward": 1}'


async def post_feedback(request: Request) -> Response:
    policy = authenticate(request)
    pipeline = pipeline_of(request)
    body = await read_json_body(request, policy.limits.max_body_bytes, example=EXAMPLE)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise bad_request(
            "'request_id' is required, as a string: the x-request-id header of the chat "
            "response (req_ and 32 hex digits).",
            param="request_id",
        )
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise bad_request(
            f"'comment' must be a string of at most {MAX_COMMENT} characters.", param="comment"
        )
    try:
        reward = reward_from(body)
    except InvalidFeedback as exc:
        # The field the client sent: a bad 'score' is not named 'reward' (which it never sent).
        sent_score = "score" in body and "reward" not in body
        raise bad_request(str(exc), param="score" if sent_score else "reward") from None
    await pipeline.flush_request_logs()  # feedback sent the moment an answer arrives
    result = await pipeline.learner.apply(
        policy.tenant, request_id, reward, policy.memory.feedback, comment=comment
    )
    if result is None:
        await refuse_client_request_id(pipeline.store.requests, policy.tenant, request_id)
        raise ProxyError(
            404,
            f"No request {request_id!r} for this key's tenant. Use the x-request-id of a chat "
            "call made with memory on (a user id set, memory mode not off).",
            param="request_id",
            code="request_not_found",
        )
    return JSONResponse(result.as_dict())


async def refuse_client_request_id(requests: RequestStore, tenant_id: str, given: str) -> None:
    """A 400 when `given` is not a request id but an id a client sent with its calls."""
    named = await requests.requests_by_client_id(tenant_id, given)
    if named:
        calls = "1 call" if len(named) == 1 else f"{len(named)} calls"
        raise bad_request(
            f"{given!r} is a client request id (sent with {calls} as x-client-request-id or "
            "x-request-id), not the proxy's id of a call. Send the x-request-id header of the "
            "chat response you are rating (it starts with req_); GET "
            "/v1/traces?client_request_id=... lists the calls sent with a client id.",
            param="request_id",
            code="client_request_id_given",
        )


def feedback_routes() -> list[BaseRoute]:
    return [Route("/v1/memory/feedback", post_feedback, methods=["POST"])]
