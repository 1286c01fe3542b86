"""Hidden or encoded text: what a human reviewer would not see but a model would read.

Zero-width and bidi control characters, Unicode tag characters (invisible ASCII), words that mix
scripts (Cyrillic "а" inside a Latin word), base64 or hex blobs, hidden HTML, and runs of
unpronounceable tokens (the optimised triggers of AgentPoison-style backdoors).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import unicodedata

from proxy.memory.signals import Hit, snippet

_ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b-\u200d\u2060-\u2064\ufeff]")
_EMOJI_JOINER = re.compile(
    "(?<=[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f])\u200d(?=[\U0001f000-\U0001faff\u2600-\u27bf])"
)
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TAGS = re.compile("[\U000e0000-\U000e007f]")
_BASE64 = re.compile(r"(?<![\w+/])[A-Za-z0-9+/]{24,}={0,2}(?![\w+/])")
_HEX = re.compile(r"(?<![\w])(?:0x)?[0-9a-fA-F]{32,}(?![\w])|(?:\\x[0-9a-fA-F]{2}){6,}")
_HIDDEN_HTML = re.compile(
    r"<!--.*?-->|display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0|"
    r"color\s*:\s*(?:white|#fff(?:fff)?)\b",
    re.IGNORECASE | re.DOTALL,
)
_WORD = re.compile(r"\w+", re.UNICODE)
_TOKEN = re.compile(r"\S+")
_VOWELS = set("aeiouy")
_URLISH = re.compile(r"https?://|www\.")


def detect(text: str) -> list[Hit]:
    """Score hidden and encoded content."""
    hits: list[Hit] = []
    if _TAGS.search(text):
        hits.append(Hit("obfuscation", 1.0, "unicode tag characters (invisible text)", hard=True))
    if found := _BIDI.findall(text):
        hits.append(Hit("obfuscation", 0.7, f"{len(found)} bidi control character(s)"))
    if found := _ZERO_WIDTH.findall(_EMOJI_JOINER.sub("", text)):
        hits.append(Hit("obfuscation", 0.5, f"{len(found)} zero-width character(s)"))
    if mixed := _mixed_script_word(text):
        hits.append(Hit("obfuscation", 0.5, f"mixed scripts in one word: {mixed}"))
    if blob := _decodable_base64(text):
        hits.append(Hit("obfuscation", 0.5, f"base64 blob of {len(blob)} chars"))
    if match := _HEX.search(text):
        hits.append(Hit("obfuscation", 0.35, f"hex blob of {len(match.group())} chars"))
    if match := _HIDDEN_HTML.search(text):
        hits.append(Hit("obfuscation", 0.6, f"hidden html: {snippet(match.group(), 24)}"))
    if run := gibberish_run(text):
        hits.append(Hit("obfuscation", 0.35, f"{run} unpronounceable tokens in a row"))
    if padding := _padding(text):
        hits.append(Hit("obfuscation", 0.35, padding))
    return hits


def _padding(text: str) -> str | None:
    """Filler that carries no meaning but pushes a model around: one token repeated dozens of
    times, or a single "word" longer than any real one (adversarial suffixes, context flooding)."""
    tokens = _TOKEN.findall(text)
    if len(tokens) >= 30 and len(set(tokens)) / len(tokens) < 0.2:
        return f"{len(tokens)} tokens, {len(set(tokens))} distinct"
    longest = max((len(t) for t in tokens), default=0)
    if longest > 60 and not _URLISH.search(text):
        return f"a {longest}-character token"
    return None


def _mixed_script_word(text: str) -> str | None:
    """The first word whose letters come from more than one script (homoglyph spoofing)."""
    for word in _WORD.findall(unicodedata.normalize("NFC", text)):
        scripts = {_script(ch) for ch in word if ch.isalpha()}
        scripts.discard("OTHER")
        if len(scripts) > 1:
            return "+".join(sorted(scripts))
    return None


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE"):
        if name.startswith(script):
            return script
    return "OTHER"


def _decodable_base64(text: str) -> str | None:
    for match in _BASE64.finditer(text):
        blob = match.group()
        letters = sum(ch.isalpha() for ch in blob)
        if not (any(ch.isdigit() for ch in blob) or "+" in blob or "/" in blob) or letters < 8:
            continue
        if not (any(ch.isupper() for ch in blob) and any(ch.islower() for ch in blob)):
            continue
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        printable = sum(32 <= byte < 127 for byte in decoded) / max(len(decoded), 1)
        if printable > 0.85 or len(blob) >= 40:
            return blob
    return None


def gibberish_run(text: str) -> int:
    """Length of the longest run (>= 3) of tokens no language would produce: long consonant
    clusters, letters and digits interleaved, case flipping inside a word."""
    longest = run = 0
    for token in _TOKEN.findall(text):
        if _unpronounceable(token.strip(".,;:!?\"'()[]{}")):
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return longest if longest >= 3 else 0


def _unpronounceable(token: str) -> bool:
    if len(token) < 4 or not token.isascii():
        return False
    letters = [ch for ch in token if ch.isalpha()]
    if len(letters) < 3:
        return False
    lower = token.lower()
    if not any(ch in _VOWELS for ch in lower):
        return True
    cluster = 0
    for ch in lower:
        cluster = cluster + 1 if ch.isalpha() and ch not in _VOWELS else 0
        if cluster >= 5:
            return True
    flips = sum(a.islower() and b.isupper() for a, b in itertools.pairwise(token))
    digits_inside = any(ch.isdigit() for ch in token[1:-1]) and len(letters) >= 3
    return flips >= 2 or (digits_inside and flips >= 1)
