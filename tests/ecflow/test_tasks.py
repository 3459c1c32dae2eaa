"""Wait and notify tasks: deadlines, build-time validation and values that must not reach the shell."""

from __future__ import annotations

from pathlib import Path

import pyflow as pf
import pytest
from ecflow_helpers import Watcher, job_output, node_state

from aviso_workflows import Store, ValidationError
from aviso_workflows.ecflow import LoopbackHost, NotifyTask, WaitTask, notify_command
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = pytest.mark.ecflow
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}


def suite(name: str, home: Path, **variables: str) -> pf.Suite:
    return pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), **variables)


def test_a_wait_past_its_deadline_aborts_with_the_reason_in_the_job_output(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, etcd_url: str, unique_date: str) -> None:
    with suite("deadline", home, YMD=unique_date) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/6"}, timeout=2, endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/deadline/wait") == "aborted", 30, "the wait task aborting")
    output = job_output(home, "/deadline/wait")
    assert "the deadline (2 s) passed before the data was available: event=mars,class=od,expver=1,domain=g," \
           f"time=0,stream=oper,date={unique_date},step=0/6" in output
    assert "timed out after 2 s with 0/2 available" in output
    assert watcher.label("/deadline/wait", "latest") == "timed out"


def test_a_wait_for_posted_data_completes_at_once(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                                  store: Store, etcd_url: str, unique_date: str) -> None:
    store.notify("mars", {**FORECAST, "date": unique_date, "step": "0/to/12/by/6"})
    with suite("posted", home, YMD=unique_date) as s:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/12/by/6"}, timeout=20,
                 endpoints=[etcd_url])
    play(s, "localhost", ecflow_server.port)
    watcher.until(lambda d: node_state(d, "/posted") == "complete", 20, "the wait completing")
    assert watcher.meter("/posted/wait", "steps") == 3
    assert watcher.label("/posted/wait", "latest").startswith("3/3 latest step=")


def test_variables_altered_on_the_server_cannot_run_commands_or_add_fields(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str,
        unique_date: str, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    with suite("inject", home, YMD=unique_date, STEP="0", defstatus=pf.state.suspended) as s:
        NotifyTask("command", "mars", {**FORECAST, "date": "%YMD%", "step": "%STEP%"}, endpoints=[etcd_url])
        with pf.Family("field", STEP="0"):
            NotifyTask("notify", "mars", {**FORECAST, "date": "%YMD%", "step": "%STEP%"}, endpoints=[etcd_url])
        with pf.Family("helper", STEP="0"):
            work = pf.Task("work")
            work.script = ["echo working", notify_command(work, "mars", {**FORECAST, "date": "%YMD%",
                                                                         "step": "${STEP}"}, endpoints=[etcd_url])]
    play(s, "localhost", ecflow_server.port)
    client = ecflow_server.client()
    client.alter("/inject", "change", "variable", "STEP", f'0$(touch {marker})"`touch {marker}`')
    client.alter("/inject/field", "change", "variable", "STEP", "0,class=rd")
    client.alter("/inject/helper", "change", "variable", "STEP", f"0$(touch {marker})`touch {marker}`")
    client.resume("/inject")
    watcher.until(lambda d: node_state(d, "/inject/command") == "aborted"
                  and node_state(d, "/inject/field/notify") == "aborted"
                  and node_state(d, "/inject/helper/work") == "aborted", 30, "the three notifying tasks refusing")
    assert not marker.exists()
    assert "may hold only letters, digits" in job_output(home, "/inject/command")
    assert "ecFlow variable STEP='0,class=rd'" in job_output(home, "/inject/field/notify")
    assert "may hold only letters, digits" in job_output(home, "/inject/helper/work")
    assert store.get("mars", {**FORECAST, "date": unique_date}) == []


def test_requests_are_checked_when_the_suite_is_built(tmp_path: Path) -> None:
    with suite("checks", tmp_path, YMD="20261122"):
        with pytest.raises(ValidationError, match="unknown field"):
            WaitTask("a", "mars", {**FORECAST, "colour": "red", "date": "%YMD%", "step": 0})
        with pytest.raises(ValidationError, match="stream"):
            WaitTask("b", "mars", {**FORECAST, "stream": "nonsense", "date": "%YMD%", "step": 0})
        with pytest.raises(ValidationError, match="define it on the task or a parent"):
            NotifyTask("c", "mars", {**FORECAST, "date": "%YMD%", "step": "%UNDEFINED%"})
        with pytest.raises(ValidationError, match="date"):
            NotifyTask("d", "mars", {**FORECAST, "date": "%YMD%", "step": 0}, YMD="yesterday")
        with pytest.raises(ValidationError, match="may hold only"):
            NotifyTask("e", "mars", {**FORECAST, "date": "%YMD%", "step": "%S%"}, S="1;reboot")
        task = pf.Task("f")
        line = notify_command(task, "mars", {**FORECAST, "date": "%YMD%", "step": 6}, location="file:///a b/%YMD%")
    assert "date=\"${AVISO_VAR_YMD}\"" in line and "--location 'file:///a b/'\"${AVISO_VAR_YMD}\"" in line
    assert "AVISO_VAR_YMD=$(cat <<'AVISO_VALUE'\n%YMD%\nAVISO_VALUE\n)" in line and "${YMD" not in line
