"""The public evaluation data the benchmarks read (MEMENTO_SHARED_DATA, else /work/shared/data).

Kept free of the product's imports, so a load generator can read it without loading the proxy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(os.environ.get("MEMENTO_SHARED_DATA", "/work/shared/data"))


def persona_facts() -> list[str]:
    """The MSC persona facts of the dev split, one short first-person statement each."""
    path = DATA / "msc_personas" / "msc_persona_facts_dev.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]
