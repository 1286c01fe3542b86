"""litellm, imported once and configured to run offline and quietly.

Both the upstreams (translated provider calls) and the memory stages (model info for token budgets,
model calls of extraction and the judge) use litellm; they reach it through here, so memory never
imports the upstream module. The import is slow (about a second), so it happens on first use or at
start-up, never at module import.

The input window of one of OpenAI's models is read from litellm's bundled model map without
importing litellm (`openai_window`): a proxy whose routes all relay to OpenAI-compatible upstreams
then never loads it (about 4 s of start-up and 150 MB here). For a model the map lists under the
provider `openai`, named bare or with `openai/`, the map's entry is what `get_model_info` answers
(tested over every such entry); any other model is asked of litellm.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from proxy.tokens import use_bundled_tiktoken

_litellm: Any = None


class ReportedElsewhere(Exception):
    """An exception the proxy raises inside a litellm call and reports itself (a broken stream
    becomes the client's error event and the request line's `error=`): litellm's own log of it,
    an ERROR with a traceback, would report an expected condition as a crash."""


def _not_reported_elsewhere(record: logging.LogRecord) -> bool:
    """Whether a litellm log record is worth keeping: not one about a `ReportedElsewhere`,
    attached as the exception or formatted into the message."""
    if record.exc_info and isinstance(record.exc_info[1], ReportedElsewhere):
        return False
    args = record.args if isinstance(record.args, tuple) else ()
    return not any(isinstance(arg, ReportedElsewhere) for arg in args)


def import_litellm() -> Any:
    """litellm, configured to work offline (bundled cost map and tokenizers) and quietly."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        use_bundled_tiktoken()
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.turn_off_message_logging = True
        logging.getLogger("LiteLLM").setLevel(logging.WARNING)
        logging.getLogger("LiteLLM").addFilter(_not_reported_elsewhere)
        _litellm = litellm
        # Its ~370k objects live as long as the process: out of the collector's generations,
        # as start-up does with what it loaded, or every full collection walks them (240 ms).
        gc.freeze()
    return _litellm


# The model map litellm reads when LITELLM_LOCAL_MODEL_COST_MAP is set, as `import_litellm` sets it.
MODEL_MAP = "model_prices_and_context_window_backup.json"


def window_of(info: Mapping[str, Any]) -> int | None:
    """A model's input window in litellm's model info: its max input tokens, else its max
    tokens; None when it names neither."""
    window = info.get("max_input_tokens") or info.get("max_tokens")
    return int(window) if window else None


@lru_cache(maxsize=1)
def _openai_windows() -> dict[str, int | None]:
    """The input windows of the models litellm's bundled map lists under `openai`, read from
    the map without importing litellm; empty when the map cannot be read."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    try:
        table = json.loads((Path(spec.origin).parent / MODEL_MAP).read_bytes())
    except (OSError, ValueError):
        return {}
    windows: dict[str, int | None] = {}
    for name, entry in table.items():
        if isinstance(entry, dict) and "alias_of" in entry:  # the aliased model's entry, as
            entry = table.get(entry["alias_of"])  # litellm resolves it when it loads the map
        if isinstance(entry, dict) and entry.get("litellm_provider") == "openai":
            sizes = [entry.get("max_input_tokens"), entry.get("max_tokens")]
            if all(size is None or type(size) in (int, float) for size in sizes):
                windows[name] = window_of(entry)
    return windows


def openai_window(model: str) -> tuple[bool, int | None]:
    """(True, its window) for a model of OpenAI's that litellm's bundled map lists, named bare
    (`gpt-4o-mini`) or with its provider (`openai/gpt-4o-mini`); (False, None) for any other
    model, whose window only litellm can tell."""
    windows = _openai_windows()
    for name in (model, model.removeprefix("openai/")):
        if name in windows:
            return True, windows[name]
    return False, None
