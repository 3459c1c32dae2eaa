"""A test's own state and no settings from the machine: the environment every aviso-workflows call reads.

A folder's conftest.py makes it automatic for its tests with
``from isolation import isolated  # noqa: F401 - autouse fixture``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Settings a test must not inherit from the machine or from another test (AVISO_WORKFLOWS_<name>).
INHERITED = ("ENDPOINTS", "USERNAME", "PASSWORD", "TOKEN", "EMAIL", "KEY")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cursors and state in the test's temp dir, no configuration file, no endpoint or credentials set."""
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    for name in INHERITED:
        monkeypatch.delenv(f"AVISO_WORKFLOWS_{name}", raising=False)
