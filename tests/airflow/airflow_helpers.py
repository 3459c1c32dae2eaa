"""Helpers of the Airflow tests: connections as Airflow reads them, dag.test() in a bounded subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


class MemoryStateStore:
    """The triggerer's asset state store (aget/aset of JSON values), in memory, for triggers run in-process."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value
