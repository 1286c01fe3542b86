"""`POST /v1/memory/feedback {"request_id", "reward" | "score", "comment"?}`: learn from outcomes.

The reward updates the utility Q of every memory injected into that request (and the outcome of
the case the request wrote). One reward counts per request: sending it again replaces it.
Unknown request ids, and those of another tenant, are 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.memory.learn import InvalidFeedback, reward_from
from proxy.routes.memories import pipeline_of
from proxy.validation import read_json_body

MAX_COMMENT = 2000


async def post_feedback(request: Request) -> Response:
    policy = authenticate(request)
    pipeline = pipeline_of(request)
    body = await read_json_body(request, policy.limits.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request('Send {"request_id": "...", "reward": 1}.')
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise bad_request(
            "'request_id' is required: the x-request-id header of the chat response.",
            param="request_id",
        )
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise bad_request(f"'comment' must be a string of at most {MAX_COMMENT} characters.")
    try:
        reward = reward_from(body)
    except InvalidFeedback as exc:
        raise bad_request(str(exc), param="reward") from None
    result = await pipeline.learner.apply(
        policy.tenant, request_id, reward, policy.memory.feedback, comment=comment
    )
    if result is None:
        raise ProxyError(
            404,
            f"No request {request_id!r} for this key's tenant. Use the x-request-id of a chat "
            "call made with memory on (a user id set, memory mode not off).",
            param="request_id",
            code="request_not_found",
        )
    return JSONResponse(result.as_dict())


def feedback_routes() -> list[BaseRoute]:
    return [Route("/v1/memory/feedback", post_feedback, methods=["POST"])]
