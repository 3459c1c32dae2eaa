"""Fixtures for the Airflow tests: an isolated AIRFLOW_HOME, a migrated metadata DB, an ``aviso`` connection.

Airflow reads its home when first imported, so it is set here, before any test imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aviso-airflow-unit-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
RUN_DAG = Path(__file__).with_name("run_dag.py")
AIRFLOW = Path(sys.executable).with_name("airflow")
MIGRATE_SECONDS = 300
DAG_TEST_SECONDS = 120


def connection_json(etcd_url: str, **extra: Any) -> str:
    """An ``aviso`` connection as Airflow reads it from ``AIRFLOW_CONN_*``."""
    parts = urlsplit(etcd_url)
    conn: dict[str, Any] = {"conn_type": "aviso", "host": parts.hostname, "port": parts.port}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


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


def run_dag(env: dict[str, str], dag_id: str, logical_date: str = "none",
            timeout: float = DAG_TEST_SECONDS) -> dict[str, Any]:
    """``dag.test()`` of an example DAG in a subprocess bounded by ``timeout`` (dag.test ignores defer timeouts)."""
    dag_file = DAGS / f"{dag_id}.py"
    done = subprocess.run([sys.executable, str(RUN_DAG), str(dag_file), dag_id, logical_date], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"dag.test of {dag_id} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def stop_watches() -> Iterator[None]:
    """Check that a test leaves no shared watch behind."""
    from aviso_workflows.listen import HUB

    before = len(HUB.watches())
    yield
    assert len(HUB.watches()) <= before
