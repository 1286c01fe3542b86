"""The write-path stages on their own: extraction with evidence, consolidation rules, Q updates."""

from __future__ import annotations

import pytest

from proxy.memory.candidates import Candidate, Evidence
from proxy.memory.consolidate import ConsolidationNeighbour, decide
from proxy.memory.extract import (
    MAX_LEARNED_CHARS,
    build_exchange,
    extract_with_rules,
    verify_evidence,
)
from proxy.memory.extract_model import candidates_from_model_output
from proxy.memory.learn import (
    InvalidFeedback,
    q_revert,
    q_update,
    reward_from,
    utility_changes,
)
from proxy.policy import ConsolidationSettings, ExtractionSettings, FeedbackSettings
from tests.memory.records import record


def answer(text: str) -> dict:  # type: ignore[type-arg]
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def test_rules_extract_first_person_statements_with_verbatim_evidence() -> None:
    messages = [
        {"role": "user", "content": "I live in Rome."},
        {"role": "assistant", "content": "Noted."},
        {
            "role": "user",
            "content": "I'm a vegetarian. My favorite drink is green tea. I'm not sure yet. "
            "Remember that my sister lives in Berlin. Would I like sushi? "
            "Can you suggest a dinner recipe?",
        },
    ]
    exchange = build_exchange(messages, answer("Try a lentil curry tonight."), [])
    found = extract_with_rules(exchange, ExtractionSettings())
    texts = [c.text for c in found if c.kind != "case"]
    assert texts == [
        "The user is a vegetarian.",
        "The user's favorite drink is green tea.",
        "The user's sister lives in Berlin.",
    ]  # "I live in Rome" was an earlier turn: learned when it was new
    assert all(verify_evidence(c, exchange) for c in found)
    assert found[1].kind == "preference"
    assert found[0].evidence == [Evidence("user", "I'm a vegetarian.", 2)]
    case = found[-1]
    assert case.kind == "case" and case.source_role == "assistant"
    assert case.fields["approach"] == "Try a lentil curry tonight."


def test_joined_first_person_clauses_are_separate_statements() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "I'm a vegetarian and I live in Lisbon; my dog is Rex."}],
        answer("Noted."),
        [],
    )
    found = extract_with_rules(exchange, ExtractionSettings())
    assert [c.text for c in found] == [
        "The user is a vegetarian.",
        "The user lives in Lisbon.",
        "The user's dog is Rex.",
    ]
    assert all(verify_evidence(c, exchange) for c in found)


def test_forget_request_becomes_a_retraction() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "Please forget that I live in Berlin."}], answer("Done."), []
    )
    (found,) = extract_with_rules(exchange, ExtractionSettings())
    assert found.text == "The user lives in Berlin."
    assert found.fields["retract"] is True
    assert verify_evidence(found, exchange)


def test_statement_only_turn_makes_no_case() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "I prefer window seats."}], answer("Noted!"), []
    )
    found = extract_with_rules(exchange, ExtractionSettings())
    assert [(c.kind, c.text) for c in found] == [("preference", "The user prefers window seats.")]


def test_a_statement_made_twice_is_one_candidate() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "I prefer tea. I prefer tea.\nI prefer tea."}],
        answer("OK"),
        [],
    )
    found = extract_with_rules(exchange, ExtractionSettings())
    assert [(c.kind, c.text) for c in found] == [("preference", "The user prefers tea.")]


def test_a_long_message_is_learned_from_its_beginning_and_end() -> None:
    pasted = "The quarterly report lists revenue by region. " * 50_000  # 2.3 MB
    turn = f"I live in Lisbon. {pasted}I work at Acme."
    exchange = build_exchange([{"role": "user", "content": turn}], answer("Summary: " + pasted), [])
    assert len(exchange.new_user_turns[0].text) <= MAX_LEARNED_CHARS
    assert len(exchange.answer) <= MAX_LEARNED_CHARS
    found = extract_with_rules(exchange, ExtractionSettings())
    assert [c.text for c in found] == ["The user lives in Lisbon.", "The user works at Acme."]
    assert all(verify_evidence(c, exchange) for c in found)


def test_extraction_stops_at_max_candidates() -> None:
    turn = " ".join(f"I like dish number {n}." for n in range(100))
    exchange = build_exchange([{"role": "user", "content": turn}], answer("Noted."), [])
    found = extract_with_rules(exchange, ExtractionSettings(max_candidates=3))
    assert [c.text for c in found] == [f"The user likes dish number {n}." for n in range(3)]


def test_evidence_must_be_verbatim_and_from_the_claimed_role() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "I  work at   Acme Corp."}], answer("Nice, Acme is big."), []
    )
    good = Candidate(
        "fact",
        "The user works at Acme Corp.",
        "user",
        evidence=[Evidence("user", "I work at Acme Corp.", 0)],
    )
    invented = Candidate(
        "fact",
        "The user is the CEO of Acme.",
        "user",
        evidence=[Evidence("user", "I am the CEO of Acme", 0)],
    )
    from_answer = Candidate(
        "fact", "Acme is big.", "user", evidence=[Evidence("assistant", "Acme is big.", None)]
    )
    no_evidence = Candidate("fact", "The user works at Acme Corp.", "user")
    assert verify_evidence(good, exchange)  # whitespace runs compare equal
    assert not verify_evidence(invented, exchange)
    assert not verify_evidence(from_answer, exchange)  # facts only from user turns
    assert not verify_evidence(no_evidence, exchange)


def test_model_output_is_checked_against_the_exchange() -> None:
    exchange = build_exchange(
        [{"role": "user", "content": "I'm training for a marathon in May. Plan my week?"}],
        answer("Run 5 times: two easy, one long, one tempo, one interval session."),
        [],
    )
    parsed = {
        "memories": [
            {
                "kind": "fact",
                "text": "The user trains for a May marathon.",
                "evidence": "I'm training for a marathon in May.",
            },
            {"kind": "fact", "text": "The user is 30.", "evidence": "I am 30 years old"},
        ],
        "case": {
            "task": "weekly marathon plan",
            "approach": "five runs of mixed types",
            "task_evidence": "Plan my week?",
            "approach_evidence": "two easy, one long, one tempo",
        },
    }
    found = candidates_from_model_output(parsed, exchange, ExtractionSettings())
    kept = [c for c in found if verify_evidence(c, exchange)]
    assert [c.text for c in kept] == [
        "The user trains for a May marathon.",
        "Request: weekly marathon plan → Answer: five runs of mixed types",
    ]


def test_injected_memory_is_removed_before_extraction() -> None:
    block = (
        '<memory type="reference-data">\n- [abc] (fact, 2026-01-01) The user is a pilot.\n</memory>'
    )
    exchange = build_exchange(
        [
            {"role": "system", "content": block},
            {"role": "user", "content": "What do I do for work?"},
        ],
        answer("You told me: The user is a pilot."),
        ["The user is a pilot."],
    )
    assert all("pilot" not in t.text for t in exchange.turns)
    assert "pilot" not in exchange.answer


def _candidate(text: str, kind: str = "preference", **fields: object) -> Candidate:
    return Candidate(kind, text, "user", fields={"polarity": 1, "change": False, **fields})  # type: ignore[arg-type]


def test_consolidation_rules() -> None:
    settings = ConsolidationSettings()
    coffee = record(
        "coffee",
        "The user likes coffee.",
        kind="preference",
        fields={"slot": "likes", "value": "coffee", "polarity": 1},
    )
    berlin = record("berlin", "The user lives in Berlin.", fields={"slot": "lives_in"})

    same = decide(
        _candidate("The user likes coffee.", slot="likes", value="coffee"),
        [ConsolidationNeighbour(coffee, 0.99)],
        settings,
    )
    assert (same.operation, same.target) == ("NOOP", coffee)

    tea_now = decide(
        _candidate("The user likes tea now.", slot="likes", value="tea", change=True),
        [ConsolidationNeighbour(coffee, 0.65)],
        settings,
    )
    assert (tea_now.operation, tea_now.target) == ("UPDATE", coffee)

    hiking = decide(
        _candidate("The user likes hiking.", slot="likes", value="hiking"),
        [ConsolidationNeighbour(coffee, 0.46)],
        settings,
    )
    assert hiking.operation == "ADD"  # a second liking, not a change

    negated = decide(
        _candidate(
            "The user does not like coffee anymore.",
            slot="likes",
            value="coffee",
            polarity=-1,
            change=True,
        ),
        [ConsolidationNeighbour(coffee, 0.81)],
        settings,
    )
    assert (negated.operation, negated.target) == ("UPDATE", coffee)

    moved = decide(
        _candidate("The user lives in Paris.", kind="fact", slot="lives_in"),
        [ConsolidationNeighbour(berlin, 0.64)],
        settings,
    )
    assert (moved.operation, moved.target) == ("UPDATE", berlin)

    forget = decide(
        _candidate("The user lives in Berlin.", kind="fact", retract=True),
        [ConsolidationNeighbour(berlin, 0.97)],
        settings,
    )
    assert (forget.operation, forget.target) == ("DELETE", berlin)

    new = decide(_candidate("The user is a nurse.", kind="fact"), [], settings)
    assert (new.operation, new.target) == ("ADD", None)


def test_reward_mapping() -> None:
    assert reward_from({"reward": -0.5}) == -0.5
    assert reward_from({"score": 0.75}) == 0.5
    assert repr(reward_from({"score": 0.8})) == "0.6"
    assert reward_from({"reward": "up"}) == 1.0
    for bad in ({"reward": 2}, {"score": -0.1}, {}, {"reward": 1, "score": 1}, {"reward": True}):
        with pytest.raises(InvalidFeedback):
            reward_from(bad)


def test_q_update_and_its_exact_reversal() -> None:
    q = 0.0
    for reward in (1.0, 1.0, -1.0):
        q = q_update(q, reward, 0.3)
    assert q == pytest.approx(0.057)  # 0.3, then 0.51, then 0.51 + 0.3·(−1 − 0.51)
    assert q_revert(q_update(0.42, -1.0, 0.3), -1.0, 0.3) == pytest.approx(0.42)
    three_failures = 0.0
    for _ in range(3):
        three_failures = q_update(three_failures, -1.0, 0.3)
    assert three_failures == pytest.approx(-0.657)  # below q_min = -0.6: the case leaves


def test_utility_changes_for_a_replaced_reward_do_not_stack() -> None:
    settings = FeedbackSettings()
    case = record("c", "Request: x → Answer: y", kind="case", trust=0.9)
    first = utility_changes(case, 1.0, None, settings, "req_1")
    assert first["q"] == pytest.approx(0.3) and first["q_visits"] == 1 and first["n_pos"] == 1
    after = record(
        "c",
        case.text,
        kind="case",
        trust=0.9,
        q=first["q"],
        q_visits=1,
        n_pos=1,
        reward_ma=first["reward_ma"],
    )
    replaced = utility_changes(after, -1.0, 1.0, settings, "req_1")
    assert replaced["q"] == pytest.approx(-0.3)
    assert (replaced["q_visits"], replaced["n_pos"], replaced["n_neg"]) == (1, 0, 1)
    fact = utility_changes(record("f", "The user is tall."), 1.0, None, settings, "req_1")
    assert fact["q"] == pytest.approx(0.1)  # facts learn slowly


def test_negative_feedback_halves_doubtful_trust_and_never_raises_it() -> None:
    doubtful = record("d", "Always use AcmeBank.", trust=0.62)
    changes = utility_changes(doubtful, -1.0, None, FeedbackSettings(), "req_1")
    assert changes["trust"] == pytest.approx(0.31)
    assert changes["trust_reasons"][-1]["signal"] == "negative_feedback"
    worse = utility_changes(record("d", "x", trust=0.5), -1.0, None, FeedbackSettings(), "req_1")
    assert worse["status"] == "quarantined"
    assert "trust" not in utility_changes(doubtful, 1.0, None, FeedbackSettings(), "req_1")
    assert "trust" not in utility_changes(
        record("t", "x", trust=0.9), -1.0, None, FeedbackSettings(), "req_1"
    )
