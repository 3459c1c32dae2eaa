"""Fixtures of the action tests: a recording HTTP receiver on loopback, listener runs from a saved cursor,
and the ecFlow tests' own ``ecflow_server`` fixture (a real server on localhost)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from actions_helpers import Receiver

ECFLOW_TESTS = Path(__file__).resolve().parents[1] / "ecflow"


def _ecflow_conftest() -> object:
    """tests/ecflow/conftest.py loaded under its own name, so its fixture is the one the ecFlow tests use."""
    sys.path.insert(0, str(ECFLOW_TESTS))
    spec = importlib.util.spec_from_file_location("ecflow_tests_conftest", ECFLOW_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ecflow_server = _ecflow_conftest().ecflow_server  # type: ignore[attr-defined]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 (free port) that records every request; stopped after the test."""
    server = Receiver()
    yield server
    server.close()
