"""A secret said in a chat, through the write path's own stages: extraction, the sanitizer and
the memory built from its verdict (`new_memory.py`), as the background writer runs them."""

from __future__ import annotations

import pytest

from proxy.memory.extract import build_exchange, extract_with_rules
from proxy.memory.new_memory import memory_from_verdict, without_secrets
from proxy.memory.sanitize import Sanitizer
from proxy.policy import ExtractionSettings, Policy
from storage.records import NewMemory, Scope

POLICY = Policy(tenant="acme")


async def learned(said: str) -> NewMemory:
    exchange = build_exchange(
        [{"role": "user", "content": said}],
        {"choices": [{"message": {"role": "assistant", "content": "Noted."}}]},
        [],
    )
    (candidate,) = extract_with_rules(exchange, ExtractionSettings())
    (verdict,) = await Sanitizer().assess(Scope("acme", "ivy"), [candidate], POLICY.sanitizer)
    evidence = [{"role": e.role, "span": e.span, "turn": e.turn} for e in candidate.evidence]
    return memory_from_verdict(candidate, verdict, POLICY, evidence=evidence)


@pytest.mark.parametrize(
    ("said", "stored", "value"),
    [
        ("My password is hunter2.", "The user's password is [redacted password]", "hunter2"),
        (
            "My API key is sk-abcdefghijklmnopqrstuvwxyz123456.",
            "The user's api key is [redacted api key].",
            "sk-abcdefghijklmnopqrstuvwxyz123456",
        ),
    ],
)
async def test_a_secret_is_redacted_once_with_its_kind(said: str, stored: str, value: str) -> None:
    """Was "…is [redacted password] password]" and "…is [redacted password] api key]": the
    already redacted text was scanned again and its placeholder read as a password."""
    memory = await learned(said)
    assert memory.status == "active"
    assert memory.text == stored
    assert memory.key_text == stored[0].lower() + stored[1:]
    # The slot's value stood alone without its full stop, and was kept in the clear.
    assert memory.fields["value"] == stored.rsplit(" is ", 1)[1].rstrip(".")
    assert value not in repr(memory)
    assert without_secrets(memory) == memory
