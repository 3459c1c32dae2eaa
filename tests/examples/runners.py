"""How each kind of example is run: a DAG file parsed and serialized as Airflow's dag processor does, a pyflow
suite deployed and loaded on an ecflow_server, a bash block in bash."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

ROOT = Path(__file__).resolve().parents[2]
BASH_SECONDS = 60


def parse_and_serialize_dags(dag_file: Path) -> list[str]:
    """Parse ``dag_file`` with a DagBag and round-trip each DAG through the serialized form the dag processor
    stores (``DagSerialization.to_dict``, JSON, ``from_dict``); the DAG ids. Fails on any import error."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, f"{dag_file.name} does not import: {bag.import_errors}"
    assert bag.dags, f"{dag_file.name} defines no DAG"
    for dag_id, dag in bag.dags.items():
        stored = json.loads(json.dumps(DagSerialization.to_dict(dag)))
        back = DagSerialization.from_dict(stored)
        assert back.dag_id == dag_id
        assert sorted(back.task_dict) == sorted(dag.task_dict), f"{dag_id}: tasks changed in serialization"
    return sorted(bag.dags)


def suites_in(namespace: dict[str, Any]) -> list[Any]:
    """The pyflow suites a block of Python left in its namespace."""
    import pyflow as pf

    return [value for value in namespace.values() if isinstance(value, pf.Suite)]


def deploy_and_load(suite: Any, server: EcflowServer) -> None:
    """Write the suite's scripts with pyflow's deploy and load it (not begun) on ``server``, as the project's
    ``play`` does; the suite must then be on the server."""
    play(suite, "localhost", server.port, begin=False)
    assert_loaded(server, suite.name)


def assert_loaded(server: EcflowServer, name: str) -> None:
    client = server.client()
    client.sync_local()
    defs = client.get_defs()
    assert defs is not None and defs.find_suite(name) is not None, f"suite {name} is not on the server"


def run_bash(text: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a bash block as a script that stops at the first failing command."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", text], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=BASH_SECONDS, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done
