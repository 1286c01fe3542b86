"""Where the tenants' current policies are looked up: the seam the memory and tracing read through.

`proxy.tenants.PolicyRegistry` is the one the app passes (hot-reloaded from the policy files);
tests and benchmarks pass any object with `get`.
"""

from __future__ import annotations

from typing import Protocol

from proxy.policy import Policy


class PolicySource(Protocol):
    def get(self, tenant: str) -> Policy | None:
        """The tenant's current policy, or None when there is no such tenant (any more)."""
        ...
