"""Fixtures of the waiter and expectation tests: a short waiter TTL, and helpers of the other suites."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import TTL

TESTS = Path(__file__).resolve().parent.parent
for folder in ("security", "ecflow", "airflow"):
    if str(TESTS / folder) not in sys.path:
        sys.path.append(str(TESTS / folder))

# Airflow reads its home when first imported: a temp one, as the Airflow tests do.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-waiters-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture(autouse=True)
def short_waiter_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters started by a test (in-process or as commands) register with a 2 s lease."""
    monkeypatch.setenv("AVISO_WORKFLOWS_WAITER_TTL", str(TTL))
