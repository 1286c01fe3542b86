"""Modules imported on first use leave the garbage collector's generations, as start-up's do.

LanceDB (imported on the index's first use) and litellm (on the first route that needs it) bring
about 90k and 370k objects that live as long as the process. Left in the collector's
generations, every full collection walks them: 90 and 240 ms a pass on the development machine,
holding the event loop each time. Each check runs in a fresh interpreter, where the module is
not imported yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a full collection may walk afterwards beyond what it walked before the import: the
# imports add tens or hundreds of thousands when left in the generations.
MOST_ADDED = 5_000

MEASURE = """
import asyncio, gc, sys
from pathlib import Path
{setup}
gc.collect()
before = len(gc.get_objects())
{load}
print(len(gc.get_objects()) - before, "lancedb" in sys.modules, "litellm" in sys.modules)
"""

LANCEDB = (
    "lancedb",
    "from storage.index_location import IndexLocation\n"
    "from storage.index_settings import MaintenanceSettings\n"
    "from storage.lance import connect",
    "asyncio.run(connect(IndexLocation.folder(Path(sys.argv[1])), MaintenanceSettings()))",
)
LITELLM = ("litellm", "from proxy.llm import import_litellm", "import_litellm()")


@pytest.mark.parametrize(
    ("module", "setup", "load"), [LANCEDB, LITELLM], ids=["lancedb", "litellm"]
)
def test_a_module_imported_on_first_use_is_not_walked_by_full_collections(
    module: str, setup: str, load: str, tmp_path: Path
) -> None:
    code = MEASURE.format(setup=setup, load=load)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert done.returncode == 0, done.stderr
    added, lancedb_loaded, litellm_loaded = done.stdout.split()
    assert {"lancedb": lancedb_loaded, "litellm": litellm_loaded}[module] == "True"
    assert int(added) < MOST_ADDED, f"{module} left {added} objects for the collector to walk"
