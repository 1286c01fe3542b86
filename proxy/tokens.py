"""Tokenizers without network access: tiktoken reads the encodings bundled inside litellm.

tiktoken downloads encodings on first use unless TIKTOKEN_CACHE_DIR points at files it already
has; litellm ships them, so the cache dir is set to litellm's folder before tiktoken loads. Found
through the import system so that litellm itself (slow to import) is not loaded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any


def bundled_tiktoken_dir() -> Path | None:
    """litellm's folder of tiktoken encodings, or None when litellm is not installed."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def use_bundled_tiktoken() -> None:
    """Point tiktoken at the bundled encodings (unless the operator chose a cache dir)."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        folder = bundled_tiktoken_dir()
        if folder is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


_LOADED: set[str] = set()


@lru_cache(maxsize=8)
def encoding(name: str = "cl100k_base") -> Any:
    """A tiktoken encoding, loaded once, offline."""
    use_bundled_tiktoken()
    import tiktoken

    loaded = tiktoken.get_encoding(name)
    _LOADED.add(name)
    return loaded


def loaded_encodings() -> frozenset[str]:
    """The encodings this process has loaded so far."""
    return frozenset(_LOADED)


async def load_encoding(name: str) -> None:
    """Load an encoding off the event loop unless it is loaded already: loading o200k takes
    about a second and 70 MB, so only the encodings some route uses are ever loaded."""
    if name not in _LOADED:
        await asyncio.to_thread(encoding, name)


def count_tokens(text: str, encoding_name: str = "cl100k_base") -> int:
    return len(encoding(encoding_name).encode(text, disallowed_special=()))
