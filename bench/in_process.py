"""For benchmarks that run the proxy's parts in their own process: what the proxy does to its
process once it has started."""

from __future__ import annotations

import gc


def as_after_start_up() -> None:
    """What is loaded by now (here also the benchmark's own corpus and setup) leaves the garbage
    collector's generations, as the proxy's start-up does with what it loaded. Without this, a
    full collection walking the benchmark's heap (half a million objects after loading a
    scope, 150-350 ms a pass) held the event loop in the middle of timed calls, where the
    proxy's would walk only what it made since it started."""
    gc.collect()
    gc.freeze()
