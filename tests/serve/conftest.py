"""Fixtures of the serve tests: one server on the session's etcd for the tests that need no special options."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import Served, serving

from aviso_workflows import Store


@pytest.fixture(scope="module")
def served(etcd_url: str) -> Iterator[Served]:
    """A server on the session's etcd with short heartbeats."""
    with serving(Store([etcd_url]), heartbeat=0.5) as running:
        yield running
