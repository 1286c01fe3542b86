"""The tenant-shared scope reaches every user of a tenant, so writing to it takes more trust."""

from __future__ import annotations

from proxy.memory.candidates import Candidate, Evidence
from proxy.memory.sanitize import Sanitizer
from proxy.policy import SanitizerPolicy
from storage.records import Scope

POLICY = SanitizerPolicy()
USER = Scope("acme", "alice")
SHARED = Scope("acme", None)


def fact(text: str) -> Candidate:
    return Candidate("fact", text, "user", evidence=[Evidence("user", text, 0)])


def case(text: str) -> Candidate:
    return Candidate("case", text, "assistant", evidence=[Evidence("assistant", text, None)])


async def test_a_plain_user_fact_is_shared() -> None:
    [verdict] = await Sanitizer().assess(SHARED, [fact("The office closes at six.")], POLICY)
    assert verdict.verdict == "accept"
    assert all(r.signal != "shared_scope" for r in verdict.reasons)


async def test_assistant_output_is_accepted_for_a_user_but_not_shared() -> None:
    candidate = case("Booked the table by calling the restaurant directly.")
    [for_user] = await Sanitizer().assess(USER, [candidate], POLICY)
    [for_tenant] = await Sanitizer().assess(SHARED, [candidate], POLICY)

    assert for_user.verdict == "accept"
    assert for_tenant.verdict == "quarantine"
    assert [r.signal for r in for_tenant.reasons][-1] == "shared_scope"


async def test_trust_below_the_shared_bar_quarantines_only_in_the_shared_scope() -> None:
    policy = SanitizerPolicy(shared_min_trust=0.85)  # above a user statement's prior of 0.8
    candidate = fact("The office closes at six.")
    [for_user] = await Sanitizer().assess(USER, [candidate], policy)
    [for_tenant] = await Sanitizer().assess(SHARED, [candidate], policy)

    assert for_user.verdict == "accept"
    assert for_tenant.verdict == "quarantine"
    assert "below shared_min_trust" in for_tenant.reasons[-1].detail


async def test_a_users_own_request_is_theirs_not_the_tenants() -> None:
    # An action or a task asked by the user is accepted in their own scope; any cue at all keeps
    # it out of the tenant-shared scope, as strict as before actions were read as tasks.
    for text in (
        "Please delete the faulty line from the program.",
        "Add a pinch of salt to the soup.",
        "Ignore the noise and focus on your breathing.",
    ):
        [for_user] = await Sanitizer().assess(USER, [fact(text)], POLICY)
        [for_tenant] = await Sanitizer().assess(SHARED, [fact(text)], POLICY)
        assert for_user.verdict == "accept", for_user.reasons
        assert for_tenant.verdict == "quarantine", for_tenant.reasons
