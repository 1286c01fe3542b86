"""The UI's login cookie: a signed session that expires, never the proxy key itself.

The cookie holds the key's hash (as the policy files hold it) and when the session ends, signed
with HMAC-SHA256 under a secret kept in the store (`Store.secret`: the same for every process
and replica sharing it). Every page checks the signature, the end, and that the hash still
names a tenant's key, so removing a key from a policy ends its sessions. A cookie taken from a
browser opens these pages until it ends, and never the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from starlette.requests import Request

from proxy.app_state import store_of
from proxy.tenants import hash_key

SIGNER = "ui-session"  # the name of the store secret sessions are signed with


async def session_secret(request: Request) -> bytes:
    """The signing secret, read from the store once per process. Without a store (memory not
    running here) a secret of this process alone: its sessions end with it."""
    state = request.app.state
    secret: bytes | None = getattr(state, "ui_session_secret", None)
    if secret is None:
        store = store_of(request)
        secret = await store.secret(SIGNER) if store is not None else secrets.token_bytes(32)
        state.ui_session_secret = secret
    return secret


def issue(secret: bytes, key: str, ends_at: float) -> str:
    """The cookie value of a session of `key` that ends at `ends_at` (epoch seconds)."""
    payload = f"{hash_key(key)}|{int(ends_at)}".encode()
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def key_hash(secret: bytes, cookie: str, now: float) -> str | None:
    """The key hash of a session cookie that is genuine and has not ended, else None."""
    encoded, _, signature = cookie.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        signed = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(signed, _sign(secret, payload)):
        return None
    hashed, _, ends_at = payload.decode("utf-8", "replace").rpartition("|")
    if not ends_at.isascii() or not ends_at.isdigit() or int(ends_at) <= now:
        return None
    return hashed


def _sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
