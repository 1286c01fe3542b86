"""BM25 over one scope's index texts, in memory: the full-text half of a hot scope's search.

A scope the vector cache holds (`storage.vector_cache`) is searched without LanceDB: its vectors
by a numpy scan, its texts here, from posting lists kept by the same outbox batches. The texts
are the index texts LanceDB gets (`storage.sqlite.outbox.search_text_of`: key text, keywords,
tags, dates), analysed as LanceDB's default full-text index analyses them: split on anything
not a letter or digit, lower-cased, accents folded, tokens over 40 characters dropped, English
suffixes stemmed, English stop words removed. The stemmer is the first step of Porter2 (plurals,
-ed, -ing, -ly and a final y), not the whole of it: both sides of a match go through the same
function, so what matters is that inflections of a word meet, which that step does.

Scores are Okapi BM25 (k1 = 1.2, b = 0.75, as LanceDB's), with document frequencies and the
mean length taken over the scope, not the tenant: a scope's ranking depends on its own records
only, and another tenant's or user's words never weigh in it.

Rows are addressed by their position in the scope's arrays; when the scope moves its last row
into a removed row's place, `move` follows it here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

K1 = 1.2
B = 0.75
MAX_TOKEN_CHARS = 40

# The English stop words LanceDB's index drops, as it drops them: from the stemmed tokens (read
# off its index: each word alone, then whether a search for it finds anything).
_STOP_WORDS_TEXT = (
    "a about after again against all am an and are as at be been being below between both but "
    "by can did do doing don down each few for from further had has have having he her here hers "
    "herself him himself his how i if in into is it its itself just me more most my myself no "
    "nor not now of off on or other our ours out over own s same she should so some such t than "
    "that the their theirs them then there these they this those through to too under until up "
    "was we were what when where which while who whom will with you your yours yourself"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"[^\W_]+")
_VOWELS = frozenset("aeiouy")
_DOUBLES = ("bb", "dd", "ff", "gg", "mm", "nn", "pp", "rr", "tt")


def analyze(text: str) -> list[str]:
    """The terms of `text`, in order, repeated as often as they occur."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(char for char in text if not unicodedata.combining(char))
    return [term for word in _WORD.findall(text.lower()) if (term := _term(word))]


@lru_cache(maxsize=65_536)
def _term(word: str) -> str:
    """The term `word` is indexed as, or "" when the index drops it (too long, a stop word)."""
    if len(word) > MAX_TOKEN_CHARS:
        return ""
    term = stem(word)
    return "" if term in STOP_WORDS else term


def stem(word: str) -> str:
    """Porter2's step 1 (1a plurals, 1b -ed/-ing and -ly forms, 1c a final y after a
    consonant), without its exceptional forms."""
    if len(word) <= 2 or word.isdigit():
        return word
    word = _step_1a(word)
    word = _step_1b(word)
    if len(word) > 2 and word[-1] in "yY" and word[-2] not in _VOWELS:
        word = word[:-1] + "i"
    return word


def _step_1a(word: str) -> str:
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith(("ied", "ies")):
        return word[:-2] if len(word) > 4 else word[:-1]
    if word.endswith(("us", "ss")):
        return word
    if word.endswith("s") and not _VOWELS.isdisjoint(word[:-2]):
        return word[:-1]
    return word


def _step_1b(word: str) -> str:
    for suffix in ("eedly", "eed"):
        if word.endswith(suffix):
            return word[: -len(suffix)] + "ee" if len(word) - len(suffix) >= 3 else word
    for suffix in ("ingly", "edly", "ing", "ed"):
        if word.endswith(suffix):
            base = word[: -len(suffix)]
            if _VOWELS.isdisjoint(base):
                return word
            if base.endswith(("at", "bl", "iz")):
                return base + "e"
            if base.endswith(_DOUBLES):
                return base[:-1]
            if _is_short(base):
                return base + "e"
            return base
    return word


def _is_short(base: str) -> bool:
    """A short syllable ending a stem of three letters or fewer: hop(e), not hopp."""
    return (
        len(base) == 3
        and base[0] not in _VOWELS
        and base[1] in _VOWELS
        and base[2] not in _VOWELS
        and base[2] not in "wxy"
    ) or (len(base) == 2 and base[0] in _VOWELS and base[1] not in _VOWELS)


class ScopeText:
    """Posting lists of one scope's texts, by row position, and the rows' lengths."""

    def __init__(self, capacity: int = 64) -> None:
        self._positions: dict[str, array[int]] = {}  # term -> rows holding it
        self._counts: dict[str, array[float]] = {}  # term -> its count in each of those rows
        self._row_terms: list[tuple[str, ...]] = []  # by row: its distinct terms
        self._row_counts: list[tuple[int, ...]] = []
        self._lengths = np.zeros(capacity, dtype=np.float32)
        self._total_length = 0.0
        self._postings = 0

    @classmethod
    def of_texts(cls, texts: Iterable[str], capacity: int = 64) -> ScopeText:
        """The posting lists of `texts`, row i for the i-th: what `set` for each would make,
        with each term's lists made once instead of grown a posting at a time (a scope's
        copy is loaded this way)."""
        made = cls(capacity)
        positions: dict[str, list[int]] = {}
        counts: dict[str, list[int]] = {}
        lengths: list[int] = []
        for row, text in enumerate(texts):
            row_terms, row_counts = _counted_terms(text)
            made._row_terms.append(row_terms)
            made._row_counts.append(row_counts)
            for term, count in zip(row_terms, row_counts, strict=True):
                if term in positions:
                    positions[term].append(row)
                    counts[term].append(count)
                else:
                    positions[term] = [row]
                    counts[term] = [count]
            lengths.append(sum(row_counts))
        made._positions = {term: array("i", rows) for term, rows in positions.items()}
        made._counts = {term: array("f", counts[term]) for term in positions}
        if len(lengths) > len(made._lengths):
            made._lengths = np.zeros(len(lengths), dtype=np.float32)
        made._lengths[: len(lengths)] = lengths
        made._total_length = float(sum(lengths))
        made._postings = sum(len(terms) for terms in made._row_terms)
        return made

    @property
    def nbytes(self) -> int:
        """An estimate, on the safe side (10k persona facts: 3.4 MB, 2.7 by tracemalloc): 24 bytes a
        posting (the lists' entries and the rows' own terms), ~300 a distinct term (its lists,
        their dict entries), ~130 a row (its two tuples)."""
        rows = len(self._row_terms)
        return 24 * self._postings + 300 * len(self._positions) + 130 * rows + self._lengths.nbytes

    def set(self, row: int, text: str) -> None:
        """Index `text` as row `row` (a new row at the end, or a changed one)."""
        terms, counts = _counted_terms(text)
        if row < len(self._row_terms):
            if self._row_terms[row] == terms and self._row_counts[row] == counts:
                return
            self._unpost(row)
            self._row_terms[row], self._row_counts[row] = terms, counts
        else:
            assert row == len(self._row_terms), "rows are added at the end"
            self._row_terms.append(terms)
            self._row_counts.append(counts)
            if row == len(self._lengths):
                grown = np.zeros(len(self._lengths) + max(64, len(self._lengths) // 4), np.float32)
                grown[:row] = self._lengths
                self._lengths = grown
        for term, count in zip(terms, counts, strict=True):
            self._positions.setdefault(term, array("i")).append(row)
            self._counts.setdefault(term, array("f")).append(count)
        length = float(sum(counts))
        self._lengths[row] = length
        self._total_length += length
        self._postings += len(terms)

    def remove_last(self, row: int) -> None:
        """Forget row `row` and move the last row into its place (as the scope's arrays do)."""
        last = len(self._row_terms) - 1
        self._unpost(row)
        if row != last:
            for term in self._row_terms[last]:
                positions = self._positions[term]
                positions[_find(positions, last)] = row
            self._row_terms[row] = self._row_terms[last]
            self._row_counts[row] = self._row_counts[last]
            self._lengths[row] = self._lengths[last]
        self._row_terms.pop()
        self._row_counts.pop()
        self._lengths[last] = 0.0

    def _unpost(self, row: int) -> None:
        """Take row `row` out of its terms' posting lists (swapping each list's last entry into
        its place: a list's order does not matter)."""
        for term in self._row_terms[row]:
            positions, counts = self._positions[term], self._counts[term]
            at = _find(positions, row)
            positions[at], counts[at] = positions[-1], counts[-1]
            positions.pop()
            counts.pop()
            if not positions:
                del self._positions[term], self._counts[term]
        self._total_length -= float(self._lengths[row])
        self._postings -= len(self._row_terms[row])
        self._lengths[row] = 0.0

    def scores(self, query: str) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        """Every row's BM25 score for `query` (0 where no term matches), or None when no term of
        the query occurs in the scope."""
        rows = len(self._row_terms)
        terms = [term for term in dict.fromkeys(analyze(query)) if term in self._positions]
        if not rows or not terms:
            return None
        scores = np.zeros(rows, dtype=np.float32)
        mean_length = max(self._total_length / rows, 1e-6)
        norms = np.float32(K1) * (
            np.float32(1 - B) + np.float32(B / mean_length) * self._lengths[:rows]
        )
        for term in terms:
            # Views of the posting lists: no await runs while they live, so nothing resizes them.
            positions = np.frombuffer(self._positions[term], dtype=np.int32)
            counts = np.frombuffer(self._counts[term], dtype=np.float32)
            found = len(positions)
            idf = math.log(1 + (rows - found + 0.5) / (found + 0.5))
            scores[positions] += np.float32(idf * (K1 + 1)) * counts / (counts + norms[positions])
        return scores


def _counted_terms(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A text's distinct terms and how often each occurs, in order of first occurrence."""
    counted = Counter(analyze(text))
    return tuple(counted), tuple(counted.values())


def _find(values: array[int], value: int) -> int:
    """Where `value` is in `values` (it is there exactly once)."""
    return int(np.flatnonzero(np.frombuffer(values, dtype=np.int32) == value)[0])
