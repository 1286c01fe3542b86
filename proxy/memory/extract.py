"""Extract: candidate memories from one finished exchange, each with verified evidence.

The exchange is the caller's messages and the answer, with the injected memory block removed
first, so a recalled memory never comes back as a new one. Only the turns new in this exchange
(after the last assistant message) are read: earlier turns were learned from when they were new.

Two extractors propose candidates:
- `extract_with_rules` (no model configured): explicit first-person statements in user turns
  ("I am…", "I prefer…", "my X is…", "remember that…") become facts and preferences; the request
  and the answer become a case.
- `extract_with_model` (policy `memory.extraction.model`, in `extract_model.py`): an LLM answers
  with JSON matching `EXTRACTION_SCHEMA`: facts, preferences and a case, each citing its evidence.

Either way `verify_evidence` keeps only candidates whose evidence spans occur verbatim in the
turn and role they claim (facts and preferences only from user turns): a memory the conversation
does not support is dropped, which is what stops hallucinated memories.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from proxy.memory.asking import asks_for_something
from proxy.memory.candidates import Candidate, Evidence
from proxy.memory.inject import strip_block_text, strip_memory_blocks
from proxy.memory.query import CONTEXT_CHARS, head_and_tail, needs_context
from proxy.messages import answer_text, message_text
from proxy.policy import ExtractionSettings

ANSWER_TURN = -1  # `Evidence.turn` is None for the answer; this is its index in `Exchange.turns`
_MAX_CASE_TASK = 400
_MAX_CASE_APPROACH = 400
_MIN_CASE_WORDS = 3
_MIN_APPROACH_WORDS = 2  # "OK." is no approach
_QUOTE_PROBE_CHARS = 120  # this much of the request found in the answer: it is quoted back
# Of a longer turn or answer, its beginning and end are learned from, this much in all: the
# statements of a message that pastes a document are the user's words around it, and reading
# megabytes of it sentence by sentence would hold the event loop for seconds.
MAX_LEARNED_CHARS = 20_000


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    index: int | None  # position in the caller's messages; None for the answer
    speaker: str | None = None  # the message's `name`: who said it, when the caller tells

    @property
    def speaker_keywords(self) -> list[str]:
        """What a memory from this turn is also found by: its speaker's name ("What does Ana
        like?" finds "The user likes tea." said by Ana), indexed, never shown."""
        return [self.speaker] if self.speaker else []


@dataclass
class Exchange:
    """What is learned from: the new user turns, their context, and the answer, block-free."""

    turns: list[Turn]
    answer: str
    new_user_turns: list[Turn] = field(default_factory=list)

    def text_of(self, role: str, index: int | None) -> str | None:
        if index is None:
            return self.answer if role == "assistant" else None
        for turn in self.turns:
            if turn.index == index and turn.role == role:
                return turn.text
        return None


def build_exchange(
    messages: list[dict[str, Any]], response: dict[str, Any], injected_texts: list[str]
) -> Exchange:
    """The exchange to learn from: memory blocks stripped, recalled memory text cut from the
    answer (a model that repeats a memory must not teach it back as new), each text longer
    than `MAX_LEARNED_CHARS` cut to its beginning and end."""
    clean = strip_memory_blocks(messages)
    turns = []
    for index, message in enumerate(clean):
        role = message.get("role")
        if role in ("user", "assistant", "tool"):
            name = message.get("name")
            speaker = name.strip() if isinstance(name, str) and name.strip() else None
            # NUL is no text a memory keeps (and PostgreSQL's text columns refuse it).
            text = head_and_tail(message_text(message).replace("\x00", ""), MAX_LEARNED_CHARS)
            turns.append(Turn(str(role), text, index, speaker))
    last_assistant = max((t.index or 0 for t in turns if t.role == "assistant"), default=-1)
    new_user = [t for t in turns if t.role == "user" and (t.index or 0) > last_assistant]
    answer = strip_block_text(answer_text(response)).replace("\x00", "")
    for text in injected_texts:
        if text.strip():
            answer = answer.replace(text, "")
    return Exchange(turns, head_and_tail(answer.strip(), MAX_LEARNED_CHARS), new_user)


# --- Deterministic extractor ---------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Words that make a statement a change of what was known ("I like tea now").
CHANGE_WORDS = re.compile(
    r"\b(now|anymore|any more|no longer|these days|nowadays|instead|switched|lately)\b", re.I
)
_CHANGE_TAIL = re.compile(r"(?:,?\s+(?:now|these days|nowadays|instead|lately))+$", re.I)
_HYPOTHETICAL = re.compile(r"^\s*(if|suppose|imagine|what if|would|should|could|can)\b", re.I)
_REMEMBER = re.compile(
    r"^(?:please\s+)?(?:remember|note|keep in mind|don't forget)\s+(?:that\s+)?(?P<x>.+)$", re.I
)
_FORGET = re.compile(
    r"^(?:please\s+)?(?:forget|don't remember|stop remembering)\s+(?:that\s+|about\s+)?(?P<x>.+)$",
    re.I,
)
_MY_TOPIC = re.compile(r"^my\s+(?P<slot>(?:favou?rite\s+)?[a-z][a-z' -]{0,40}?)$", re.I)
_MY_SLOT = re.compile(
    r"^(?:also,?\s+|and\s+)?my\s+(?P<slot>(?:favou?rite\s+)?[a-z][a-z' -]{0,40}?)\s+"
    r"(?:is|are)\s+(?:now\s+)?(?P<val>.+)$",
    re.I,
)
_LIVE = re.compile(
    r"\bI\s+(?:now\s+)?(?:live|reside|am living|'m living)\s+in\s+(?P<x>.+)$|"
    r"\bI\s+(?:just\s+|recently\s+)?moved\s+to\s+(?P<y>.+)$",
    re.I,
)
_WORK = re.compile(r"\bI\s+(?:now\s+)?work\s+(?P<prep>at|for|as)\s+(?P<x>.+)$", re.I)
_LIKE = re.compile(
    r"\bI\s+(?:really\s+|also\s+|now\s+|still\s+|much\s+)*"
    r"(?P<verb>prefer|like|love|enjoy|adore|hate|dislike|can't stand|cannot stand|"
    r"don't like|do not like|no longer like|don't enjoy|would rather|'d rather)\s+(?P<x>.+)$",
    re.I,
)
_IDENTITY = re.compile(
    r"\bI(?:'m| am)\s+(?:now\s+|also\s+)?(?P<x>(?:an?\s+|from\s+|based in\s+|allergic to\s+|"
    r"\d+\s+years?\s+old|married|single|divorced|vegetarian|vegan|pescatarian|left-handed|"
    r"right-handed|lactose intolerant|gluten[- ]free|retired|pregnant)(?:.*))$",
    re.I,
)
_HAVE = re.compile(r"\bI\s+(?:have|own)\s+(?P<x>(?:an?|one|two|three|four|\d+)\s+.+)$", re.I)
_NOT_IDENTITY = re.compile(r"^an?\s+(question|quick|little|bit|few)\b", re.I)
_SINGLE_VALUED = {"lives_in", "works_at", "occupation", "age", "name"}
_NEGATIVE_VERBS = {
    "hate",
    "dislike",
    "can't stand",
    "cannot stand",
    "don't like",
    "do not like",
    "no longer like",
    "don't enjoy",
}
_VERB_TEXT = {
    "prefer": "prefers",
    "like": "likes",
    "love": "loves",
    "enjoy": "enjoys",
    "adore": "adores",
    "hate": "hates",
    "dislike": "dislikes",
    "can't stand": "cannot stand",
    "cannot stand": "cannot stand",
    "don't like": "does not like",
    "do not like": "does not like",
    "no longer like": "no longer likes",
    "don't enjoy": "does not enjoy",
    "would rather": "would rather",
    "'d rather": "would rather",
}
_PRONOUNS = [
    (re.compile(r"\bI'm\b|\bI am\b", re.I), "the user is"),
    (re.compile(r"\bI've\b|\bI have\b", re.I), "the user has"),
    (re.compile(r"\bI'd\b", re.I), "the user would"),
    (re.compile(r"\bI'll\b", re.I), "the user will"),
    (re.compile(r"\bmyself\b", re.I), "themselves"),
    (re.compile(r"\bmine\b", re.I), "the user's"),
    (re.compile(r"\bmy\b", re.I), "the user's"),
    (re.compile(r"\bme\b", re.I), "the user"),
    (re.compile(r"\bI\b"), "the user"),
]


def third_person(text: str) -> str:
    """First-person text about the user, rewritten to be about "the user"."""
    for pattern, replacement in _PRONOUNS:
        text = pattern.sub(replacement, text)
    return text


_CLAUSE = re.compile(r"(?:,|;)?\s+(?:and|but)\s+(?=(?:I|I'm|I've|my|My)\b)|;\s+")


def sentences(text: str) -> list[str]:
    """Sentences, and first-person clauses joined by "and" / "but" / ";" ("I'm vegan and I live
    in Oslo" is two statements). Each piece is verbatim text of the turn."""
    pieces = []
    for sentence in _SENTENCE_END.split(text):
        for clause in _CLAUSE.split(sentence or ""):
            if clause and clause.strip():
                pieces.append(clause.strip())
    return pieces


def statement_candidate(sentence: str, turn: Turn) -> Candidate | None:
    """A fact or preference from one explicit first-person sentence, or None."""
    if sentence.endswith("?") or _HYPOTHETICAL.match(sentence):
        return None
    body = sentence.rstrip(".!; ").strip()
    evidence = [Evidence("user", sentence, turn.index)]
    change = bool(CHANGE_WORDS.search(body))

    def make(kind: str, text: str, **fields: Any) -> Candidate:
        text = clean_statement(text)
        fields = {"change": change, "polarity": 1, **fields}
        return Candidate(
            kind="preference" if kind == "preference" else "fact",
            text=text[0].upper() + text[1:],
            source_role="user",
            key_text=text,
            fields=fields,
            keywords=turn.speaker_keywords,
            evidence=evidence,
        )

    if match := _FORGET.match(body):
        inner = match.group("x")
        topic = _MY_TOPIC.match(inner.strip())
        slot = _slot_key(" ".join(topic.group("slot").lower().split())) if topic else None
        forgotten = statement_candidate(inner, turn) or make("fact", third_person(inner), slot=slot)
        forgotten.evidence = evidence
        forgotten.fields["retract"] = True
        return forgotten
    if match := _REMEMBER.match(body):
        inner = match.group("x")
        nested = statement_candidate(inner, turn)
        if nested is not None:
            nested.evidence = evidence
            return nested
        return make("fact", third_person(inner), slot=None)
    if match := _MY_SLOT.match(body):
        slot = " ".join(match.group("slot").lower().split())
        kind = "preference" if slot.startswith(("favorite", "favourite")) else "fact"
        value = third_person(match.group("val"))
        # "green now" announces a change to green: the value compared is green.
        key = _CHANGE_TAIL.sub("", value) or value
        return make(kind, f"the user's {slot} is {value}", slot=_slot_key(slot), value=key)
    if match := _LIVE.search(body):
        place = match.group("x") or match.group("y")
        return make("fact", f"the user lives in {third_person(place)}", slot="lives_in")
    if match := _WORK.search(body):
        prep = match.group("prep").lower()
        slot = "occupation" if prep == "as" else "works_at"
        return make("fact", f"the user works {prep} {third_person(match.group('x'))}", slot=slot)
    if match := _LIKE.search(body):
        verb = " ".join(match.group("verb").lower().split())
        obj = third_person(match.group("x"))
        polarity = -1 if verb in _NEGATIVE_VERBS else 1
        text = f"the user {_VERB_TEXT.get(verb, verb)} {obj}"
        return make("preference", text, slot="likes", value=_object_key(obj), polarity=polarity)
    if (match := _IDENTITY.search(body)) and not _NOT_IDENTITY.match(match.group("x")):
        value = third_person(match.group("x"))
        age = re.match(r"\d+\s+years?\s+old", value) is not None
        return make("fact", f"the user is {value}", slot="age" if age else None)
    if match := _HAVE.search(body):
        return make("fact", f"the user has {third_person(match.group('x'))}", slot=None)
    return None


def extract_with_rules(exchange: Exchange, settings: ExtractionSettings) -> list[Candidate]:
    """Facts and preferences from explicit first-person statements, plus the exchange's case;
    a statement made twice is one candidate. Reading stops at `max_candidates` statements
    (the case, which comes last, would not be kept)."""
    candidates: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    statement_only = True
    for turn in exchange.new_user_turns:
        for sentence in sentences(turn.text):
            if len(candidates) >= settings.max_candidates:
                return candidates
            candidate = statement_candidate(sentence, turn)
            if candidate is None:
                statement_only = statement_only and not asks_for_something(sentence)
                continue
            if (candidate.kind, candidate.text) not in seen:
                seen.add((candidate.kind, candidate.text))
                candidates.append(candidate)
    if settings.cases and not (candidates and statement_only):
        case = case_candidate(exchange)
        if case is not None:
            candidates.append(case)
    return candidates[: settings.max_candidates]


def case_candidate(exchange: Exchange) -> Candidate | None:
    """The exchange as a case: the request (key), the approach the answer took.

    Only an exchange that carries a task (a sentence that asks for something) and a substantive
    answer is a case: small talk is no request, and an answer that only quotes the request back
    (the `echo` model, a responder that describes what it received) took no approach.
    """
    if not exchange.new_user_turns or not exchange.answer:
        return None
    request = exchange.new_user_turns[-1].text.strip()
    if len(request.split()) < _MIN_CASE_WORDS:
        return None
    if not any(asks_for_something(sentence) for sentence in sentences(request)):
        return None
    task = request[:_MAX_CASE_TASK]
    approach = _summary(exchange.answer)
    if not _answers(approach, request):
        return None
    # A request that cannot stand alone is indexed with the turn it answers, as the read path
    # searches with that turn when a request like it comes again.
    answered = [t.text for t in exchange.turns if t.role == "assistant" and t.text.strip()]
    context = [answered[-1][-CONTEXT_CHARS:]] if answered and needs_context(request) else []
    text = f"Request: {one_line(task)} → Answer: {one_line(approach)}"
    return Candidate(
        kind="case",
        text=text,
        source_role="assistant",
        key_text=task,
        fields={"task": task, "approach": approach, "outcome": None, "reward": None},
        keywords=context,
        evidence=[
            Evidence("user", task, exchange.new_user_turns[-1].index),
            Evidence("assistant", approach, None),
        ],
    )


# --- Evidence -------------------------------------------------------------------------------


def verify_evidence(candidate: Candidate, exchange: Exchange) -> bool:
    """Every evidence span occurs verbatim in the turn and role it names; facts and preferences
    need user evidence. Whitespace runs compare equal; nothing else is forgiven."""
    if not candidate.evidence:
        return False
    for evidence in candidate.evidence:
        if candidate.kind in ("fact", "preference") and evidence.role != "user":
            return False
        source = exchange.text_of(evidence.role, evidence.turn)
        span = _squash(evidence.span)
        if source is None or not span or span not in _squash(source):
            return False
    return True


# --- helpers ---------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return " ".join(text.split())


def clean_statement(text: str) -> str:
    """One line, ending with a full stop unless it ends with other punctuation."""
    text = " ".join(text.split()).strip().rstrip(",;:")
    return text if text.endswith((".", "!", "?")) else text + "."


def one_line(text: str) -> str:
    """The text with every run of whitespace (newlines too) as one space."""
    return " ".join(text.split())


def _summary(answer: str) -> str:
    """The answer's opening, cut at a sentence end when one comes early enough: verbatim."""
    if len(answer) <= _MAX_CASE_APPROACH:
        return answer
    head = answer[:_MAX_CASE_APPROACH]
    cut = max(head.rfind(". "), head.rfind("\n"))
    return head[: cut + 1] if cut > _MAX_CASE_APPROACH // 3 else head


def _answers(approach: str, request: str) -> bool:
    """Whether the answer's opening is an approach of its own: a few words at least, and not
    the request quoted back (its first line, as far as a responder would quote it)."""
    if len(approach.split()) < _MIN_APPROACH_WORDS:
        return False
    first_line = next((line for line in request.splitlines() if line.strip()), request)
    quoted = _squash(first_line)[:_QUOTE_PROBE_CHARS].lower()
    return quoted not in _squash(approach).lower()


def _slot_key(slot: str) -> str:
    slot = re.sub(r"^favou?rite\s+", "favorite ", slot)
    return {"name": "name", "age": "age", "job": "occupation", "occupation": "occupation"}.get(
        slot, slot
    )


def _object_key(obj: str) -> str:
    words = re.sub(r"[^a-z0-9 ]", " ", obj.lower()).split()
    stop = {"the", "a", "an", "now", "anymore", "more", "really", "very", "much", "instead"}
    return " ".join(word for word in words if word not in stop)


def turn_containing(turns: list[Turn], span: str) -> Turn | None:
    """The first turn the span occurs in (whitespace runs compare equal)."""
    needle = _squash(span)
    if not needle:
        return None
    return next((turn for turn in turns if needle in _squash(turn.text)), None)


def is_single_valued(slot: str | None) -> bool:
    """Slots a person has one value of at a time (where they live, their age…)."""
    return slot is not None and (slot in _SINGLE_VALUED or not slot.startswith("likes"))
