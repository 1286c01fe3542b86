"""Reading chat messages and chat.completion answers: the one place their shapes are unpacked.

A message's `content` is a string or a list of content parts, of which only the `text` parts
carry text; an answer is a chat.completion dict whose first choice holds the assistant's message.
The memory stages (query, budget, extraction, consolidation, the judge) and the upstreams read
messages through these functions, so an odd shape (no choices, a null content, image parts) is
handled the same way everywhere.
"""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """The text of a message's `content`: the string itself, or its text parts joined by lines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message: a string, or the text parts of a content list."""
    return content_text(message.get("content"))


def answer_message(response: dict[str, Any]) -> dict[str, Any]:
    """The assistant's message of a chat.completion dict (first choice), as role and content;
    content None when the answer has none."""
    choices = response.get("choices") or []
    if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
        return {"role": "assistant", "content": choices[0]["message"].get("content")}
    return {"role": "assistant", "content": None}


def answer_text(response: dict[str, Any]) -> str:
    """The assistant's text in a chat.completion dict (first choice)."""
    return message_text(answer_message(response))
