"""The ecFlow WaitTask over both backends: its job runs ``aviso-workflows wait --endpoint URL`` as a subprocess,
against the session's etcd and against the aviso-server 0.7.1 double (tests/conformance/aviso_server_double.py,
written from ecmwf/aviso-server 0.7.1, commit 8b99d73), which serves on a loopback port the job reaches by its
``aviso+http://`` URL. The fixture is tests/backend_stores.py's, shared with the core and Airflow suites."""

from __future__ import annotations

from pathlib import Path

import pyflow as pf
import pytest
from backend_stores import OnBackend, aviso_double_fixture, on_backend_fixture  # noqa: F401
from ecflow_helpers import Watcher, job_output, job_processes, node_state, until

from aviso_workflows.ecflow import LoopbackHost, WaitTask
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = pytest.mark.ecflow
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}


def suite(name: str, home: Path, date: str) -> pf.Suite:
    return pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), YMD=date,
                    ECF_TRIES="1")


def post(on_backend: OnBackend, date: str, step: str | int) -> None:
    on_backend.store.notify("mars", {**FORECAST, "date": date, "step": step})


def test_a_wait_task_catches_up_at_once(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                        on_backend: OnBackend, unique_date: str) -> None:
    """Everything posted before the job starts: it completes with the meter full."""
    post(on_backend, unique_date, "0/to/12/by/6")
    name = f"caught_up_{on_backend.name.replace('-', '_')}"
    with suite(name, home, unique_date) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/12/by/6"}, timeout=30,
                 endpoints=[on_backend.endpoint])
    play(s, "localhost", ecflow_server.port)
    watcher.until(lambda d: node_state(d, f"/{name}") == "complete", 30, "the wait completing")
    assert watcher.meter(f"/{name}/wait", "steps") == 3
    assert f"--endpoint {on_backend.endpoint}" in job_output(home, f"/{name}/wait")


def test_a_wait_task_completes_on_the_last_step_and_shows_progress(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, on_backend: OnBackend, unique_date: str) -> None:
    """Step 0 posted before, 6 and 12 while the job waits: the meter counts 1, then 3, and the task completes
    only after the last post."""
    name = f"progress_{on_backend.name.replace('-', '_')}"
    path = f"/{name}/wait"
    post(on_backend, unique_date, 0)
    with suite(name, home, unique_date) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/6/12"}, timeout=60,
                 endpoints=[on_backend.endpoint])
    play(s, "localhost", ecflow_server.port)
    until(lambda: any("aviso-workflows wait" in p for p in job_processes(ecflow_server, path)), 30,
          "the wait starting")
    watcher.until(lambda d: d.find_abs_node(path).find_meter("steps").value() == 1, 30, "meter 1")
    post(on_backend, unique_date, 6)
    watcher.until(lambda d: d.find_abs_node(path).find_meter("steps").value() == 2, 30, "meter 2")
    assert node_state(watcher.defs(), path) == "active"
    post(on_backend, unique_date, 12)
    watcher.until(lambda d: node_state(d, f"/{name}") == "complete", 30, "the wait completing")
    assert watcher.meter(path, "steps") == 3
    assert watcher.label(path, "latest").startswith("3/3 latest step=")
