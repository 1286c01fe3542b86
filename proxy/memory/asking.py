"""Asking: whether a sentence asks for something, read from its shape rather than a word list.

An exchange is worth a case only when the user asked for something (`extract.case_candidate`).
A list of the words requests open with misses every task verb nobody thought of ("Act as…",
"Develop…"), so the sentence's shape decides instead:

- a question: it ends with a question mark (of any script), or opens with an auxiliary before
  its subject ("Could you…", "Is there…") or a question word not followed by a subject ("How
  do…", "What's…", but not "When I was young…");
- a wish addressed to the listener: "I need…", "I want you to…", "I'd like…", "Let's…" (but
  not "Let me know if you need anything", an offer);
- an imperative: it opens with a verb's base form and no subject before it. Either the verb is
  one that tasks open with ("summarise", "act", "develop"), or the opening word has a base
  form's shape (no -s, -ed, -ing or -ly, not a pronoun, article, preposition, conjunction or
  feeling word like "love" or "hope") and an object follows it ("Draft a…", "Walk me through…",
  "Tabulate the…"), and the sentence is no exclamation ("Keep it up!" cheers, it sets no task).

A sentence that does not look English (another script, or more of another language's function
words than English ones) cannot be read this way; it asks for something only when it ends with
a question mark or says "please" in its language, so a greeting in another language is no
request and no English rule misreads it ("Die Katze schläft." is no order to die).
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words a request may open with before its verb: "Please write…", "OK, now list…", and the
# name of the one it is said to ("Hey Nate, …").
_LEAD = re.compile(
    r"^(?:(?:(?i:hey|hi|hello)(?:\s+[A-Z][a-z'’-]+)?|"
    r"(?i:please|kindly|ok|okay|so|now|also|and|then|just|quick question))\b[,:!]?\s+)+",
)
_QUESTION_MARKS = ("?", "？", "؟")
_SUBJECT = (
    r"(?:you|i|we|it|there|this|that|these|those|they|he|she|someone|anyone|somebody|anybody)"
)
# An auxiliary before its subject: "Could you…", "Is the…", "Have you…" ("Have a nice day" is
# no question: "have" asks only before a pronoun).
_INVERTED = re.compile(
    r"^(?:(?:can|could|would|will|shall|should|may|might|must|do|does|did|is|are|was|were|am|"
    r"won't|can't|wouldn't|couldn't|shouldn't|isn't|aren't|don't|doesn't|didn't)"
    rf"\s+(?:{_SUBJECT}|the|a|an|my|your|our|any|one)|(?:have|has|had)\s+{_SUBJECT})\b",
    re.I,
)
_WH = re.compile(r"^(?:what|how|why|when|where|which|who|whose|whom)(?:'s|’s)?\b\s*(\S*)", re.I)
# After a question word these open a clause, not a question: "When I was…", "What a day".
_CLAUSE_SUBJECT = re.compile(
    r"^(?:i|we|you|he|she|they|it|my|our|his|her|their|its|a|an|i'm|we're|you're)$", re.I
)
_WISH = re.compile(
    r"^(?:(?:i|we)\s+(?:really\s+)?(?:need|want|require|would like)\b|"
    r"(?:i'd|we'd|i’d|we’d)\s+like\b|(?:i|we)\s*(?:'m|’m|am|are|'re)\s+looking for\b|"
    r"i was wondering\b|i wonder\b|let's\b|let’s\b|let us\b)",
    re.I,
)
# Verbs tasks open with; any other opening word needs a base form's shape and an object.
_TASK_VERBS = _words(
    "act add advise analyse analyze answer argue arrange assess assist book brainstorm break "
    "build calculate check choose classify code compare compose conduct configure convert "
    "coordinate correct create critique debug decide define deploy describe design detail "
    "develop devise discuss draft draw edit elaborate ensure estimate evaluate expand explain "
    "extract find fix format generate give help identify imagine implement improve install "
    "investigate list make manage map migrate monitor name optimise optimize order organise "
    "organize outline paint paraphrase perform pick plan play predict prepare pretend "
    "proofread propose provide rank recap recommend refactor remind remove rephrase reply "
    "research respond review rewrite roleplay role-play run schedule send set show simulate "
    "sketch solve sort suggest summarise summarize support teach tell test track translate "
    "try update use validate verify walk write"
)
# Words that open a sentence without being an order: subjects, articles, linkers, feelings.
_NOT_VERBS = _words(
    "i you he she it we they me him her us them my your his its our their this that these "
    "those there here the a an some any all each every no not and or but so if then than "
    "because as at by for from in into of on to with about after before during since until "
    "over under yes yeah yep no nope ok okay oh wow hey hi hello thanks thank sorry well "
    "maybe perhaps also just really actually honestly anyway still even only very too "
    "yesterday today tonight tomorrow now again always never often sometimes usually "
    "love like hope miss wish bet guess think mean feel agree glad sure great good nice cool "
    "appreciate way such want need keep let talk together "
    "awesome amazing lovely wonderful what how why when where which who "
    # a verb's past or participle without -ed opens a statement whose subject is left out
    "am is are was were be been being have has had do does did done got gotten went gone "
    "made took taken saw seen came ate found felt said told gave bought brought thought left "
    "ran won lost met kept built began sent spent paid heard wrote"
)
_OBJECT = re.compile(
    r"^(?:me|us|him|her|them|it|a|an|the|my|our|your|his|their|this|that|these|those|some|"
    r"any|all|each|every|as|up|out|down|over|through|about|how|what|why|whether|if|to|one|"
    r"two|three|several|few|more|\d+)(?![\w'’])|^[\"'“‘]",
    re.I,
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_ENGLISH = _words(
    "the a an to of and is are you me my i for in on with it this that what how please can "
    "could would should do does your we our be"
)
_FOREIGN = _words(
    "der die das und ist nicht ein eine mir mich ich du sie le la les un une des et est pour "
    "avec je tu vous moi el los las y es por para con una yo il lo gli di che per non het een "
    "en van ik niet wat hoe o os um uma não com"
)
_PLEASE = re.compile(
    r"\b(?:bitte|por favor|s'il (?:te|vous) pla[iî]t|per favore|alsjeblieft|por favor)\b|"
    r"пожалуйста|請|请|お願い|ください|부탁|제발",
    re.I,
)


def asks_for_something(sentence: str) -> bool:
    """Whether a sentence asks for something: a question, a wish put to the listener, or an
    order (an imperative)."""
    text = sentence.strip()
    if not text:
        return False
    if text.endswith(_QUESTION_MARKS) or text.startswith("¿"):
        return True
    if not looks_english(text):
        return bool(_PLEASE.search(text))
    text = _LEAD.sub("", text)
    if _INVERTED.match(text) or _WISH.match(text):
        return True
    if wh := _WH.match(text):
        return not _CLAUSE_SUBJECT.match(wh.group(1))
    return _is_imperative(text)


def looks_english(text: str) -> bool:
    """Whether a text is written in English as far as its script and function words tell: any
    letters beyond Latin, or more of another language's function words, say no."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(ord(c) > 0x24F for c in letters) * 2 > len(letters):
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    english = sum(w in _ENGLISH for w in words)
    foreign = sum(w in _FOREIGN and w not in _ENGLISH for w in words)
    return foreign <= english


def _is_imperative(text: str) -> bool:
    words = text.split(maxsplit=2)
    first = words[0].strip(",.:;!").lower()
    if not first.isalpha() and "-" not in first:
        return False
    if first in _TASK_VERBS:
        return True
    if first in _NOT_VERBS or len(words) < 2:
        return False
    if text.endswith("!"):
        return False  # "Keep it up!", "Way to go!": cheers have an order's shape, tasks seldom "!"
    base_shaped = not first.endswith(("ed", "ing", "ly")) and (
        not first.endswith("s") or first.endswith("ss")
    )
    return base_shaped and bool(_OBJECT.match(words[1]))
