"""Fixtures for the Airflow tests: an isolated AIRFLOW_HOME, a migrated metadata DB, an ``aviso`` connection.

Airflow reads its home when first imported, so it is set here, before any test imports it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from airflow_helpers import AIRFLOW, DAGS, MIGRATE_SECONDS, connection_json

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-unit-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture
def aviso_conn(etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aviso_default`` pointing at the session's etcd (for tests that run Airflow code in-process)."""
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", connection_json(etcd_url))
    return "aviso_default"


@pytest.fixture(scope="session")
def airflow_env(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of an Airflow home in a temp dir (SQLite, migrated) with the example DAGs."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AVISO_WORKFLOWS"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_AVISO_DEFAULT": connection_json(etcd_url),
        "AVISO_DEMO_OUTPUT": str(home / "output"),
        "AVISO_WORKFLOWS_STATE_DIR": str(home / "aviso-state"),
    })
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=MIGRATE_SECONDS)
    return env


@pytest.fixture
def stop_watches() -> Iterator[None]:
    """Check that a test leaves no shared watch behind."""
    from aviso_workflows.listen import HUB

    before = len(HUB.watches())
    yield
    assert len(HUB.watches()) <= before
