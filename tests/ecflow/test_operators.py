"""The hand-written suite in operators/ (a .def, .ecf templates, head.h/tail.h/aviso.h) on a real server."""

from __future__ import annotations

import sys
from pathlib import Path

import ecflow
import pytest
from ecflow_helpers import Watcher, node_state

from aviso_workflows import Store
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]
OPERATORS = Path(__file__).resolve().parents[2] / "operators"
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}


def load_example(home: Path, date: str, etcd_url: str) -> ecflow.Defs:
    defs = ecflow.Defs(str(OPERATORS / "aviso_example.def"))
    assert defs.check() == ""
    suite = defs.find_suite("aviso_example")
    for name, value in {"ECF_HOME": str(home), "ECF_FILES": str(OPERATORS / "tasks"),
                        "ECF_INCLUDE": str(OPERATORS / "include"), "YMD": date, "AVISO_TIMEOUT": "60",
                        "AVISO_BIN": str(Path(sys.executable).parent), "AVISO_WORKFLOWS_ENDPOINTS": etcd_url}.items():
        if suite.find_variable(name).name():
            suite.delete_variable(name)
        suite.add_variable(name, value)
    return defs


def test_the_hand_written_suite_loads_and_runs(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                               store: Store, etcd_url: str, unique_date: str) -> None:
    client = ecflow_server.client()
    client.load(load_example(home, unique_date, etcd_url))
    client.begin_suite("aviso_example")
    watcher.until(lambda d: node_state(d, "/aviso_example") == "complete", 60, "the example suite completing")
    assert watcher.meter("/aviso_example/consumer/wait", "steps") == 3
    assert watcher.label("/aviso_example/consumer/wait", "latest").startswith("3/3 latest step=")
    assert "processing the first steps of " + unique_date in (home / "aviso_example/consumer/process.1").read_text()
    values = store.value("mars", {**FORECAST, "date": unique_date, "step": "0/6/12"})
    assert sorted(values.values()) == [f"file:///data/{unique_date}/step_{s}.grib" for s in (0, 12, 6)]
    job = (home / "aviso_example" / "consumer" / "wait.job1").read_text()
    assert "export ECF_HOST=localhost" in job and f"\n{unique_date}\nAVISO_VALUE" in job
