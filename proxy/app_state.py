"""What a request finds on its app: the parts `build_app` (proxy/app.py) puts on `app.state`.

Routes and pages reach the memory pipeline, its store and the span store only through these
helpers, so each says once what it means when the part is missing: memory disabled, not started
yet, or tracing not running in this process.
"""

from __future__ import annotations

from starlette.requests import Request

from proxy.errors import unavailable
from proxy.memory.model_call import TenantModels
from proxy.memory.pipeline import MemoryPipeline
from proxy.policy import Policy
from storage.api import MemoryStore, SpanStore, Store


def pipeline_of(request: Request) -> MemoryPipeline:
    """The memory pipeline, or a 503 saying memory is not enabled on this proxy."""
    memory = request.app.state.memory
    if not isinstance(memory, MemoryPipeline):
        raise unavailable(
            "Memory is not enabled on this proxy; start it with a data directory.",
            code="memory_disabled",
        )
    return memory


def store_of(request: Request) -> Store | None:
    """The store the write path uses, when memory is running in this process."""
    memory = getattr(request.app.state, "memory", None)
    if not isinstance(memory, MemoryPipeline):
        return None
    try:
        return memory.store
    except RuntimeError:  # the pipeline exists but has not opened its store yet
        return None


def memory_store_of(request: Request) -> MemoryStore | None:
    """The memories of `store_of(request)`, if memory is running in this process."""
    store = store_of(request)
    return store.memories if store is not None else None


def span_store_of(request: Request) -> SpanStore:
    """The span store, or a 503 saying tracing has not started in this process yet."""
    store: SpanStore | None = getattr(request.app.state, "span_store", None)
    if store is None:
        raise unavailable(
            "Tracing is not running in this proxy process yet; retry once /readyz says ready.",
            code="tracing_unavailable",
        )
    return store


def tenant_models(request: Request, policy: Policy) -> TenantModels:
    """The tenant's models (the sanitizer's judge) through this proxy's upstreams, with the
    tenant's routes, keys and timeouts: the same way the write path reaches them."""
    return TenantModels(request.app.state.upstreams, policy)
