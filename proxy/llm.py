"""litellm, imported once and configured to run offline and quietly.

Both the upstreams (translated provider calls) and the memory stages (model info for token budgets,
model calls of extraction and the judge) use litellm; they reach it through here, so memory never
imports the upstream module. The import is slow (about a second), so it happens on first use or at
start-up, never at module import.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from proxy.tokens import use_bundled_tiktoken

_litellm: Any = None


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
        _litellm = litellm
        # Its ~370k objects live as long as the process: out of the collector's generations,
        # as start-up does with what it loaded, or every full collection walks them (240 ms).
        gc.freeze()
    return _litellm
