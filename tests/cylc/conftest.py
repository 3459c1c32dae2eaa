"""Cylc 8 runs from its own venv (.venv-cylc, made by scripts/setup.sh); its run directories live in a temp HOME."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cylc_helpers import CYLC_BIN, cylc_missing


@pytest.fixture
def cylc_env(tmp_path: Path, etcd_url: str) -> Iterator[dict[str, str]]:
    """The environment of cylc commands: a temp HOME (so ~/cylc-run is temporary), jobs finding this cylc,
    the session's etcd."""
    reason = cylc_missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path / "home"
    config = home / ".cylc" / "flow"
    config.mkdir(parents=True)
    # Jobs run in a login shell whose PATH does not hold the venv: tell Cylc where its command is.
    (config / "global.cylc").write_text(f"[platforms]\n    [[localhost]]\n        cylc path = {CYLC_BIN}\n")
    yield {**os.environ, "HOME": str(home), "PATH": f"{CYLC_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "AVISO_WORKFLOWS_ENDPOINTS": etcd_url, "AVISO_WORKFLOWS_CONFIG": str(tmp_path / "no-config.yaml"),
           "AVISO_WORKFLOWS_STATE_DIR": str(tmp_path / "state")}
