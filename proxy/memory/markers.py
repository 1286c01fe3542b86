r"""Markers: text that reads as a boundary, either the memory block's fence or a chat turn.

A memory is shown to the model inside a fence, so its text must never read as the fence's end
or as the start of another turn. What counts is what a model reads, not the raw characters:
`＜/memory＞` (fullwidth), `</mem\u200bory>` (a zero-width space inside), `&lt;/memory&gt;`
(HTML entities) and `< /memory>` all read as a closing tag. `as_read` undoes those disguises
(entities unescaped, NFKC, format characters removed, repeated until nothing changes), and
`find` looks for three kinds of marker in the result:

- fence: a tag named `memory`, closing or opening, with any suffix (`</memory-123…>`);
- template: a chat-template token (`<|im_start|>`, `[INST]`, `<<SYS>>`, `<system>`,
  `### System`, `<start_of_turn>`);
- role: a role name and a colon where a turn would start (`SYSTEM:` at the start of a line or a
  sentence, or after a tag).

The block renderer defuses fence and template markers (`defuse`), and the sanitizer scores all
three (proxy/memory/signals/instructions.py).
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

MarkerKind = Literal["fence_close", "fence_open", "template", "role"]

_MAX_PASSES = 4  # `&amp;lt;` needs two; more layers than this are not worth undoing
_FENCE = re.compile(r"<(?P<close>[\s/\\]*/)?\s*memory\b(?:[^<>]{0,80}>)?", re.IGNORECASE)
_TEMPLATE = re.compile(
    r"<\s*\|[^<>|]{0,40}\|\s*>|\[\s*/?\s*inst\s*\]|<<\s*/?\s*sys\s*>>|"
    r"<\s*/?\s*(?:system|assistant|user|developer|tool|human|im_start|im_end|"
    r"start_of_turn|end_of_turn|endoftext)\s*>|"
    r"###\s*(?:instruction|system|response|assistant|human)|"
    r"\[system\]|\{system:",
    re.IGNORECASE,
)
_ROLE = re.compile(
    r"(?:^|\n|[>\[\]{}()|]|[.!?;]\s)\s*(?P<role>(?:system|assistant|developer)\s*:)",
    re.IGNORECASE,
)
# Stand-ins for the characters that make a marker: visibly the same to a reader, but no
# tokenizer or normalisation (NFKC included) turns them back into brackets.
_STAND_INS = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧", "#": "♯"})


@dataclass(frozen=True)
class Marker:
    """One marker found in the text as read: its kind and what matched."""

    kind: MarkerKind
    text: str


def as_read(text: str) -> str:
    """`text` as a model reads it: HTML entities unescaped, NFKC (fullwidth `＜` → `<`), format
    characters (Unicode category Cf: zero-width, bidi, tag characters) removed. Case and line
    breaks are kept."""
    for _ in range(_MAX_PASSES):
        read = html.unescape(text) if "&" in text else text
        if not read.isascii():  # plain ASCII is its own NFKC and has no format characters
            read = unicodedata.normalize("NFKC", read)
            read = "".join(ch for ch in read if ch.isascii() or unicodedata.category(ch) != "Cf")
        if read == text:
            break
        text = read
    return text


def find(text: str) -> list[Marker]:
    """The fence, template and role markers in `text` as read, in that order."""
    read = as_read(text)
    found = [
        Marker("fence_close" if m.group("close") else "fence_open", m.group())
        for m in _FENCE.finditer(read)
    ]
    found += [Marker("template", m.group()) for m in _TEMPLATE.finditer(read)]
    found += [Marker("role", m.group("role")) for m in _ROLE.finditer(read)]
    return found


def defuse(text: str) -> str:
    """`text` unchanged unless, as read, it holds a fence or template marker: then the text as
    read, with each such marker's brackets replaced by look-alikes that no model reads as one."""
    read = as_read(text)
    if not (_FENCE.search(read) or _TEMPLATE.search(read)):
        return text
    read = _FENCE.sub(_stand_in, read)
    return _TEMPLATE.sub(_stand_in, read)


def _stand_in(match: re.Match[str]) -> str:
    return match.group().translate(_STAND_INS)
