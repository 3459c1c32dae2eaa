"""The hand-written suite in operators/ (a .def, .ecf templates, head.h/tail.h/aviso.h) on a real server."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import ecflow
import pytest
from ecflow_helpers import Watcher, job_processes, log_lines, no_job_processes_within, node_state, server_log, until

from aviso_workflows import Store
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
OPERATORS = ROOT / "operators"
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
WAIT = "/aviso_example/consumer/wait"


def readme_variables() -> set[str]:
    """The variables the README's table for hand-written suites names (first column)."""
    section = ROOT.joinpath("README.md").read_text().split("## ecFlow / pyflow", 1)[1].split("\n## ", 1)[0]
    return {match.group(1) for match in re.finditer(r"^\| `([A-Z_]+)`", section, re.MULTILINE)}


def load_example(home: Path, date: str, etcd_url: str, *, producer: bool = True, **extra: str) -> ecflow.Defs:
    """The example .def with only the variables the README names set (plus the test's own ``extra``)."""
    defs = ecflow.Defs(str(OPERATORS / "aviso_example.def"))
    assert defs.check() == ""
    settings = {"ECF_HOME": str(home), "ECF_FILES": str(OPERATORS / "tasks"),
                "ECF_INCLUDE": str(OPERATORS / "include"), "AVISO_BIN": str(Path(sys.executable).parent),
                "AVISO_WORKFLOWS_ENDPOINTS": etcd_url, "YMD": date, "AVISO_TIMEOUT": "60", **extra}
    assert set(settings) <= readme_variables(), "the README must name every variable a job needs"
    suite = defs.find_suite("aviso_example")
    for name, value in settings.items():
        if suite.find_variable(name).name():
            suite.delete_variable(name)
        suite.add_variable(name, value)
    if not producer:
        defs.find_abs_node("/aviso_example/producer").add_defstatus(ecflow.DState.suspended)
    return defs


def begin(server: EcflowServer, defs: ecflow.Defs) -> int:
    """Load (replacing an earlier test's) and begin the example; the server log's length before it."""
    client = server.client()
    client.sync_local()
    if client.get_defs() is not None and client.get_defs().find_suite("aviso_example") is not None:
        client.delete("/aviso_example", True)
    mark = len(server_log(server))
    client.load(defs)
    client.begin_suite("aviso_example")
    return mark


def test_the_hand_written_suite_loads_and_runs(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                               store: Store, etcd_url: str, unique_date: str) -> None:
    begin(ecflow_server, load_example(home, unique_date, etcd_url))
    watcher.until(lambda d: node_state(d, "/aviso_example") == "complete", 60, "the example suite completing")
    assert watcher.meter(WAIT, "steps") == 3
    assert watcher.label(WAIT, "latest").startswith("3/3 latest step=")
    assert "processing the first steps of " + unique_date in (home / "aviso_example/consumer/process.1").read_text()
    values = store.value("mars", {**FORECAST, "date": unique_date, "step": "0/6/12"})
    assert sorted(str(v) for v in values.values()) == [f"file:///data/{unique_date}/step_{s}.grib" for s in (0, 12, 6)]
    job = (home / "aviso_example" / "consumer" / "wait.job1").read_text()
    assert "ECF_HOST=$(cat <<'AVISO_VALUE'\nlocalhost\nAVISO_VALUE" in job and f"\n{unique_date}\nAVISO_VALUE" in job


def test_a_killed_wait_aborts_at_once_with_the_reason(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                      etcd_url: str, unique_date: str) -> None:
    mark = begin(ecflow_server, load_example(home, unique_date, etcd_url, producer=False, ECF_TRIES="1"))
    until(lambda: any("aviso-workflows wait" in p for p in job_processes(ecflow_server, WAIT)), 30,
          "the wait starting")

    start = time.monotonic()
    ecflow_server.client().kill(WAIT)  # the server's default ECF_KILL_CMD: kill -15 of the job shell
    watcher.until(lambda d: node_state(d, WAIT) == "aborted", 2, "the killed task aborting")
    print(f"operators kill to aborted: {time.monotonic() - start:.2f} s")
    no_job_processes_within(ecflow_server, WAIT, 2, "every process of the job ending")
    assert str(watcher.defs().find_abs_node(WAIT).get_aborted_reason()) == "killed by SIGTERM"
    assert len(log_lines(ecflow_server, "chd:abort", WAIT, mark)) == 1
    assert not log_lines(ecflow_server, "zombie", WAIT, mark)


def test_a_deadline_aborts_once_and_the_retry_completes(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                        store: Store, etcd_url: str, unique_date: str) -> None:
    example = load_example(home, unique_date, etcd_url, producer=False, AVISO_TIMEOUT="3", ECF_TRIES="2")
    mark = begin(ecflow_server, example)
    until(lambda: bool(log_lines(ecflow_server, f" aborted: {WAIT} try-no: 1", WAIT, mark)), 30,
          "the first deadline")
    store.notify("mars", {**FORECAST, "date": unique_date, "step": "0/6/12"})
    watcher.until(lambda d: node_state(d, "/aviso_example/consumer") == "complete", 30, "the retry completing")

    aborts = log_lines(ecflow_server, "chd:abort", WAIT, mark)
    assert len(aborts) == 1 and aborts[0].endswith("the deadline (3 s) passed before the data was available")
    assert not [line for line in log_lines(ecflow_server, "", WAIT, mark) if "ECF_JOB_CMD" in line or "zombie" in line]
    assert watcher.meter(WAIT, "steps") == 3


def test_the_templates_take_variables_as_text(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                              etcd_url: str, unique_date: str, tmp_path: Path) -> None:
    marker = tmp_path / "FILE"
    hostile = f"x[$(touch {marker})]`touch {marker}`"
    example = load_example(home, unique_date, etcd_url, producer=False, ECF_TRIES="1")
    example.find_suite("aviso_example").delete_variable("AVISO_TIMEOUT")
    example.find_suite("aviso_example").add_variable("AVISO_TIMEOUT", hostile)
    example.find_abs_node("/aviso_example/consumer/process").add_variable("YMD", hostile)
    begin(ecflow_server, example)
    watcher.until(lambda d: node_state(d, WAIT) == "aborted", 30, "the wait refusing its timeout")
    ecflow_server.client().run("/aviso_example/consumer/process", True)
    watcher.until(lambda d: node_state(d, "/aviso_example/consumer/process") == "complete", 30, "process running")

    assert not marker.exists()
    assert str(watcher.defs().find_abs_node(WAIT).get_aborted_reason()).startswith("the wait failed (exit 2)")
    assert f"processing the first steps of {hostile}\n" in (home / "aviso_example/consumer/process.1").read_text()
