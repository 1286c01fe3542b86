"""Fixtures of the tracing tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tracing.collector import Collector, run_collector


@pytest.fixture
def otlp_collector() -> Iterator[Collector]:
    """A collector stand-in on loopback that keeps every span POSTed to it over OTLP/HTTP."""
    with run_collector() as collector:
        yield collector
