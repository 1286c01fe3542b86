"""The UI's session cookie on its own: signed, ending, and holding the key's hash only."""

from __future__ import annotations

import time

from proxy.tenants import hash_key
from proxy.ui.session import issue, key_hash

SECRET = b"s" * 32


def test_a_session_names_its_keys_hash_until_it_ends() -> None:
    now = time.time()
    cookie = issue(SECRET, "mp-key", now + 60)
    assert "mp-key" not in cookie
    assert key_hash(SECRET, cookie, now) == hash_key("mp-key")
    assert key_hash(SECRET, cookie, now + 61) is None  # ended


def test_a_session_signed_with_another_secret_or_altered_is_no_session() -> None:
    now = time.time()
    cookie = issue(SECRET, "mp-key", now + 60)
    assert key_hash(b"t" * 32, cookie, now) is None
    payload, _, signature = cookie.partition(".")
    longer = issue(SECRET, "mp-key", now + 10**9).partition(".")[0]
    assert key_hash(SECRET, f"{longer}.{signature}", now) is None  # its end pushed back
    for broken in ("", ".", payload, f"{payload}.", "a.b.c", "!!!.???"):
        assert key_hash(SECRET, broken, now) is None
