"""Who a memory's BM25 document is about: its speaker, not the person it is said to.

An imported conversation turn reads "Caroline: Thanks, Melanie! This necklace is from my grandma
in Sweden." It is Caroline's memory; Melanie is only addressed. Indexed as written, a question
about Melanie ("What do Melanie's kids like?") matches every turn that thanks her as well as
hers, and the other speaker's turns crowd out the ones that answer it. So the index text drops
names used to address the listener (a capitalised word standing alone between a clause
boundary, or a greeting, and a comma, "!" or "?": "Thanks, Melanie!", "Wow, Caroline, …",
"Hey Mel!") and says the speaker's name (a leading "Name: ") once more, so that a turn by the
person asked about outranks a turn that only speaks to them. Only the index text changes: what
the memory shows is its own text, as written. Measured on the LoCoMo dev conversations
(`python -m bench memory`, docs/memory.md).
"""

from __future__ import annotations

import re

# A leading "Name: " or "First Last: ", as imported conversation turns are written.
_SPEAKER = re.compile(r"^\s*([A-Z][\w'’-]{1,30}(?: [A-Z][\w'’-]{1,30})?):\s")
# Words that open a sentence before a comma without being anyone's name.
_NOT_NAMES = (
    r"hey|hi|hello|thanks|thank you|thx|wow|whoa|yeah|yep|yes|oh|aw+|congrats|"
    r"congratulations|dear|sorry|bye|ok|okay|so|no|nope|haha|hah|great|awesome|cool|nice|sure|"
    r"right|well|honestly|actually|anyway|also|besides|sometimes|yesterday|today|tonight|now|"
    r"then|plus|still|sadly|luckily|hopefully|seriously|basically|ah|um|lol|omg|man|dude|"
    r"buddy|friend|guys|everyone|babe|honey|please|wait|look|listen|okay"
)
_GREETING = r"hey|hi|hello|thanks|thank you|thx|wow|whoa|yeah|yep|yes|oh|aw+|congrats|dear|bye"
_ADDRESSED = re.compile(
    rf"(^|[.!?,]\s+|\b(?i:{_GREETING}),?\s+)"  # a clause boundary, or a greeting
    rf"(?!(?i:{_NOT_NAMES})\b)[A-Z][a-z'’-]+"  # one capitalised word that is no such word
    r"(?=\s*[,!?])"  # followed by a comma, "!" or "?"
)


# Labels that open a text like a speaker's name and are none.
_LABEL = re.compile(
    r"(?:note|notes|request|answer|question|update|reminder|warning|tip|todo|fyi|ps|re|summary|"
    r"context|task|result|source|date|time|subject)",
    re.I,
)


def speaker_of(text: str) -> str | None:
    """The name a turn opens with ("Caroline: …"), or None ("Note: …" is a label)."""
    match = _SPEAKER.match(text)
    if match is None or _LABEL.fullmatch(match.group(1)):
        return None
    return match.group(1)


def without_addressees(text: str) -> str:
    """The text without the names it only addresses ("Thanks, Melanie!" → "Thanks, !"); a
    leading speaker's name stays."""
    speaker = _SPEAKER.match(text)
    head = speaker.group(0) if speaker else ""
    return head + _ADDRESSED.sub(lambda match: match.group(1), text[len(head) :])


def speaker_terms(text: str) -> list[str]:
    """The speaker's name once more, so the turns of the person a question names rank first."""
    speaker = speaker_of(text)
    return [speaker] if speaker else []
