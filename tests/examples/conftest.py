"""The README's blocks and the files of examples/, dags/ and suites/ run against real parts, shared by all of them:
the session's etcd, one ecflow_server, Airflow's own DAG parser and serializer, Cylc from .venv-cylc.

Airflow reads its home when first imported, so it is set here, before any test imports it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aviso_workflows.ecflow import server as ecflow_server_module
from aviso_workflows.ecflow.server import EcflowServer

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-examples-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: What a Cylc job has in its environment (the README's producer line reads it).
CYCLE_POINT = "20261201T0000Z"


@pytest.fixture(scope="session")
def examples_ecflow() -> Iterator[EcflowServer]:
    """One ecflow_server for every suite the examples build; terminated and waited for at the end."""
    if not ecflow_server_module.ecflow_available():
        pytest.fail("ecFlow is missing: run scripts/setup.sh (installs ecflow-server ecflow-client python3-ecflow)")
    home = Path(tempfile.mkdtemp(prefix="aviso-examples-ecflow-"))
    server = ecflow_server_module.start(home / "server")
    yield server
    server.stop()
    assert server.process.poll() is not None


@pytest.fixture
def example_env(etcd_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a reader has after ``make setup``: the venv's bin first on PATH, the store in
    ``AVISO_WORKFLOWS_ENDPOINTS`` (the session's etcd), config and state of their own; also set in this process
    for the Python blocks, run from a temporary working directory."""
    values = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AVISO_WORKFLOWS_ENDPOINTS": etcd_url,
        "AVISO_WORKFLOWS_CONFIG": str(tmp_path / "no-config.yaml"),
        "AVISO_WORKFLOWS_STATE_DIR": str(tmp_path / "state"),
        "CYLC_TASK_CYCLE_POINT": CYCLE_POINT,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return {**os.environ, **values, "HOME": str(tmp_path / "home")}
