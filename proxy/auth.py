"""Who is calling: the proxy key in the request names exactly one tenant."""

from __future__ import annotations

from starlette.requests import Request

from proxy.errors import unauthorized
from proxy.policy import Policy
from proxy.tenants import PolicyRegistry


def presented_key(request: Request) -> str | None:
    """The proxy key from `Authorization: Bearer <key>`, or Azure-style `api-key`, or
    Anthropic-style `x-api-key` (what the anthropic SDKs send). An Authorization header of
    another scheme (a gateway's Basic credentials, say) does not hide the other two."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return request.headers.get("api-key") or request.headers.get("x-api-key") or None


def authenticate(request: Request) -> Policy:
    """The calling tenant's current policy; 401 in OpenAI's shape when the key is missing or
    unknown. Other routes (admin, feedback, traces) use this too."""
    registry: PolicyRegistry = request.app.state.policies
    key = presented_key(request)
    if key is None:
        scheme = request.headers.get("authorization", "").strip().partition(" ")[0]
        sent = (
            f" (the Authorization header sent is not 'Bearer <key>': {scheme!r})" if scheme else ""
        )
        raise unauthorized(
            f"No proxy key provided{sent}. Send it as 'Authorization: Bearer <key>' or "
            "'x-api-key: <key>' (the openai and anthropic SDKs do this with api_key=...)."
        )
    policy = registry.policy_for_key(key)
    if policy is None:
        raise unauthorized(
            "Incorrect proxy key provided. Use a key listed (as its sha256 hash) in a tenant's "
            "policy file; `memento-proxy keys hash <key>` prints the hash to add."
        )
    return policy
