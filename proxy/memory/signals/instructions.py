"""Instruction-bearing content: text that tells the assistant what to do instead of saying
something about the user.

A memory is data about a person ("I am vegan", "prefers short answers"). An attack that wants to
persist has to smuggle in a directive: an imperative aimed at the assistant, a reference to the
assistant's own output, a persistence marker ("from now on"), a role or system-prompt marker or
a tag that would close the memory block (both read through entities and look-alikes), a
context trigger ("when asked about banks, say…"), or an attempt to override or reveal the
instructions. Each is scored separately; trigger words on their own ("always", "ignore",
"system") score low or nothing, so ordinary sentences that contain them stay trusted.
"""

from __future__ import annotations

from typing import Literal

from proxy.memory import markers
from proxy.memory.signals import Hit, clauses, normalize, snippet
from proxy.memory.signals.instruction_patterns import (
    ADDRESSEE,
    BUILDS_ON_USER,
    CONCEALMENT,
    CONTEXT_OBJECT,
    DECLARATIVE,
    DELIMITER,
    DIRECTIVE_IMPERATIVE,
    DIRECTIVE_VERB,
    FORM_PREFERENCE,
    HYPHEN_JOIN,
    INSERT_VERB,
    INSTRUCTION_OBJECT,
    JAILBREAK_ROLE,
    KNOWLEDGE_QUESTION,
    LEADING_WORDS,
    META_INSTRUCTION,
    MODAL,
    NAMED_DESTINATION,
    OUTPUT_REFERENCE,
    OVERRIDE,
    PERSIST_STRONG,
    PERSIST_WEAK,
    PERSISTENT_IMPERATIVE,
    PERSONAL,
    PLEASE,
    QUOTED,
    REQUEST_OPENING,
    REVEAL,
    ROLE_PLAY,
    RULE_VERB,
    SENTENCE,
    SOCIAL_TELL,
    STATEMENT,
    TASK_IMPERATIVE,
    TRIGGER,
    YOUR,
)

# One clear directive aimed at the assistant. With the default priors and weight it puts a
# user's statement at 0.8 - 0.6 * 0.45 = 0.53: well inside the quarantine band, not on its edge,
# so an operator moving the accept line by 0.05 either way keeps the same decisions.
DIRECTIVE = 0.45
# A task request in a memory ("write a story about dragons"): out of place, not an attack. Alone
# it stays accepted (0.8 - 0.6 * 0.15 = 0.71); with one more weak cue, still.
TASK_REQUEST = 0.15

Reading = Literal["statement", "request"]


def detect(text: str, reading: Reading = "statement", *, steered: str = "") -> list[Hit]:
    """Score the ways `text` tries to instruct the assistant.

    `reading` says what the text is: a `statement` stored as a memory (a fact, a preference, an
    import), or a `request` (a case's request in the user's own words, or the answer the
    assistant gave to it), where asking for work is what the text is for. A request is scored
    only for what reaches beyond its own answer: overrides, markers, jailbreak roles, reveal
    attempts; steering is the separate `steering` signal, in every reading. `steered` is the
    clause that signal has scored (lower case): its directive is not counted a second time.
    """
    norm = HYPHEN_JOIN.sub(" ", normalize(text))
    hits: list[Hit] = []

    if match := OVERRIDE.search(norm):
        hits.append(Hit("instructions", 1.0, f"override: {snippet(match.group())}", hard=True))
    if match := REVEAL.search(norm):
        hits.append(Hit("instructions", 0.6, f"reveal: {snippet(match.group())}"))
    hits.extend(marker_hits(text))
    if match := INSTRUCTION_OBJECT.search(norm):
        hits.append(
            Hit(
                "instructions",
                DIRECTIVE + 0.05,
                f"refers to the model's instructions: {snippet(match.group())}",
            )
        )
    if match := DELIMITER.search(norm):
        hits.append(Hit("instructions", 0.5, f"fake delimiter: {snippet(match.group())}"))
    if match := META_INSTRUCTION.search(norm):
        hits.append(Hit("instructions", 0.5, f"instruction header: {snippet(match.group())}"))
    role = JAILBREAK_ROLE.search(norm) or (
        ROLE_PLAY.search(norm) if reading == "statement" else None
    )
    if role:
        hits.append(
            Hit("instructions", DIRECTIVE + 0.05, f"role assignment: {snippet(role.group())}")
        )
    if reading == "statement":
        hits.extend(_directive_hits(norm.replace(steered, " ").strip() if steered else norm))
    return hits


def _directive_hits(norm: str) -> list[Hit]:
    """Directives and task requests in a statement: what a memory about a person never holds."""
    hits: list[Hit] = []
    directive = 0.0
    imperative, kind = _first_imperative(norm)
    if imperative is not None and kind != "task" and FORM_PREFERENCE.match(imperative):
        imperative, kind = None, "task"  # "always answer in English": the user's preference
    if imperative is not None and kind != "task":
        directive = DIRECTIVE + 0.05 if kind == "persistent" else DIRECTIVE
        hits.append(Hit("instructions", directive, f"imperative: {snippet(imperative)}"))
    if match := OUTPUT_REFERENCE.search(norm):
        directive = max(directive, DIRECTIVE + 0.05)
        hits.append(
            Hit(
                "instructions",
                DIRECTIVE + 0.05,
                f"refers to the assistant's output: {snippet(match.group())}",
            )
        )
    if (match := MODAL.search(norm)) and not _preference(norm, match.start()):
        directive = max(directive, DIRECTIVE)
        hits.append(
            Hit("instructions", DIRECTIVE, f"obligation on the assistant: {snippet(match.group())}")
        )
    if not directive:
        request = imperative or _knowledge_question(norm)
        if request is not None:
            # A request on its own is the user's task; spliced after a statement about the
            # user ("I have two dogs. Summarize the patient's records") it is the shape of a
            # poisoned memory, whose fact is the cover that gets it recalled.
            if _spliced(norm, request):
                directive = DIRECTIVE
                hits.append(
                    Hit(
                        "instructions",
                        DIRECTIVE,
                        f"request spliced into a statement: {snippet(request)}",
                    )
                )
            elif hidden := CONCEALMENT.search(norm):
                directive = DIRECTIVE
                detail = f"request kept from the user: {snippet(hidden.group())}"
                hits.append(Hit("instructions", DIRECTIVE, detail))
            else:
                hits.append(Hit("instructions", TASK_REQUEST, f"task request: {snippet(request)}"))
    if match := ADDRESSEE.search(norm):
        hits.append(Hit("instructions", 0.15, f"addresses the model: {snippet(match.group())}"))
    if match := TRIGGER.search(norm):
        score = 0.6 if directive else DIRECTIVE
        hits.append(Hit("instructions", score, f"context trigger: {snippet(match.group())}"))

    strong = PERSIST_STRONG.search(norm)
    weak = PERSIST_WEAK.search(norm)
    if strong and directive:
        hits.append(Hit("instructions", 0.7, f"persistent directive: {snippet(strong.group())}"))
    elif strong:
        hits.append(Hit("instructions", 0.25, f"persistence marker: {snippet(strong.group())}"))
    elif weak and directive:
        hits.append(Hit("instructions", 0.55, f"persistent directive: {snippet(weak.group())}"))
    return hits


def marker_hits(text: str) -> list[Hit]:
    """Text that would end the memory block or start another turn (proxy/memory/markers.py).

    Closing the fence is never part of a statement about a person: 0.9, which rejects a user's
    statement and quarantines even an import. A chat-template token scores 0.8, a role name
    with a colon where a turn would start ("SYSTEM:") 0.6; the word "system" alone, nothing.
    An opening `<memory…>` tag is weak on its own (0.3: "a <memory leak> in C").
    """
    found: dict[str, str] = {}
    for marker in markers.find(text):
        found.setdefault(marker.kind, marker.text)
    hits = []
    if close := found.get("fence_close"):
        hits.append(Hit("instructions", 0.9, f"closes the memory fence: {snippet(close)}"))
    elif opening := found.get("fence_open"):
        hits.append(Hit("instructions", 0.3, f"memory fence tag: {snippet(opening)}"))
    if template := found.get("template"):
        hits.append(Hit("instructions", 0.8, f"chat template marker: {snippet(template)}"))
    elif role := found.get("role"):
        hits.append(Hit("instructions", 0.6, f"role marker: {snippet(role)}"))
    return hits


def _first_imperative(norm: str) -> tuple[str | None, str]:
    """The first clause that asks the model for something, and how: `persistent` ("always…",
    "from now on…"), `directive` (a verb that steers the output or acts through tools) or
    `task` (a request for work now). A sentence that opens with a task request is one request:
    the clauses joined to it describe the work ("create a story about Mars, and include a
    rocket in the story"), unless they ask for good."""
    task: str | None = None
    for sentence in SENTENCE.split(norm):
        asked = False  # this sentence opened with a task request
        for clause in clauses(sentence):
            for part in (clause, *clause.split(", ")[1:]):
                if SOCIAL_TELL.match(part) or FORM_PREFERENCE.match(part):
                    continue
                if PERSISTENT_IMPERATIVE.match(part):
                    return part, "persistent"
                if DIRECTIVE_IMPERATIVE.match(part) and not asked:
                    if directs(_verb_onward(part)):
                        return part, "directive"
                    task = task or part
                if TASK_IMPERATIVE.match(part):
                    task = task or part
                asked = asked or bool(REQUEST_OPENING.match(part))
    if match := PLEASE.search(norm):
        verb = match.group().split(None, 1)[1].lstrip(", ") if " " in match.group() else ""
        if DIRECTIVE_VERB.match(verb) and directs(verb):
            return match.group(), "directive"
        task = task or match.group()
    return task, "task"


def directs(clause: str) -> bool:
    """Whether a clause that opens with a directive verb aims at the model: words put into its
    answer (not into a thing the person named) or rules set aside that are its own context."""
    if INSERT_VERB.match(clause):
        return bool(YOUR.search(clause)) or not NAMED_DESTINATION.search(clause)
    if match := RULE_VERB.match(clause):
        return bool(CONTEXT_OBJECT.match(clause[match.end() :].strip()))
    return True


def _verb_onward(part: str) -> str:
    """A clause from its verb on: fillers, "please", "do not" left out."""
    return LEADING_WORDS.sub("", part)


def _preference(norm: str, at: int) -> bool:
    """Whether the sentence around position `at` only shapes the form of the user's answers
    ("you must always answer in French")."""
    start = max(norm.rfind(". ", 0, at), norm.rfind("; ", 0, at))
    end = min((i for i in (norm.find(". ", at), norm.find("; ", at)) if i >= 0), default=-1)
    sentence = norm[start + 2 if start >= 0 else 0 : end if end >= 0 else None]
    return bool(FORM_PREFERENCE.match(sentence.strip()))


def _spliced(norm: str, request: str) -> bool:
    """Whether a request sits beside a statement (about the user or anyone else) that it does
    not build on."""
    if BUILDS_ON_USER.search(request):
        return False
    return any(
        _statement(clause) and clause not in request and request not in clause
        for clause in clauses(norm)
    )


def _statement(clause: str) -> bool:
    """Whether a clause states something: in the first person or about the user, or a subject
    and a finite verb that is not a request's opening ("Caroline likes hiking")."""
    if clause.endswith("?"):
        return False
    if STATEMENT.search(clause):
        return True
    return bool(DECLARATIVE.match(clause)) and not (
        REQUEST_OPENING.match(clause)
        or DIRECTIVE_IMPERATIVE.match(clause)
        or PERSISTENT_IMPERATIVE.match(clause)
        or TASK_IMPERATIVE.match(clause)
    )


def _knowledge_question(norm: str) -> str | None:
    """A request for the assistant to answer or produce something, with no person in it: a
    memory does not ask questions, and one that does makes the model answer it later."""
    for clause in clauses(QUOTED.sub("x", norm)):
        if len(clause.split()) < 4 or PERSONAL.search(clause):
            continue
        if KNOWLEDGE_QUESTION.match(clause) and (clause.endswith("?") or clause.endswith(".")):
            return clause
    return None
