"""Particulars: what tells one statement from a look-alike that says something else.

Sentence embeddings put "Dana practises kayaking on day 0." and "… on day 10." above 0.95: the
wording is the same, the fact is not. A statement's particulars are its numbers and its names
(capitalized words that do not start a sentence, the pronoun "I" aside), case aside. Two texts
close in cosine are the same thing said twice only when their particulars agree; used by the
read path's near-duplicate collapse and by consolidation of near-identical cases.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?]\s+|\n")
_WORD = re.compile(r"\w+")


def particulars_of(text: str) -> frozenset[str]:
    """The numbers and names in `text`, lower-cased."""
    found = set()
    for sentence in _SENTENCE_END.split(text):
        for position, word in enumerate(_WORD.findall(sentence)):
            name = position > 0 and word[0].isupper() and word != "I"
            if name or any(c.isdigit() for c in word):
                found.add(word.lower())
    return frozenset(found)
