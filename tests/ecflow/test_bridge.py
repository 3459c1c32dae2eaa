"""The ecFlow bridge on a real server: notifications set events, meters, labels, variables, complete tasks;
a restart in the middle of a stream of notifications misses none and applies none twice."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyflow as pf
import pytest
import yaml
from ecflow_helpers import Watcher
from waiting import eventually

from aviso_workflows import Store, ValidationError
from aviso_workflows.actions import ActionFailed
from aviso_workflows.ecflow.actions import EcflowChange
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer
from aviso_workflows.store import Notification

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
STEPS = 30
COMMAND = Path(sys.executable).parent / "aviso-workflows"


def bridged_suite(home: Path) -> pf.Suite:
    """Tasks that never run a job: the bridge alone changes them."""
    with pf.Suite("bridged", files=str(home / "files"), home=str(home / "out"), LAST_STEP="none") as suite:
        with pf.Task("data", defstatus=pf.state.suspended):
            pf.Meter("step", -1, STEPS)
            pf.Label("latest", "")
        for step in range(STEPS):
            with pf.Task(f"step_{step}", defstatus=pf.state.suspended):
                pf.Event("ready")
            pf.Task(f"done_{step}", defstatus=pf.state.suspended)
    return suite


def write_config(path: Path, date: str) -> Path:
    config = {"listeners": [{
        "event": "mars", "request": {**FORECAST, "date": date},
        "triggers": [{"type": "ecflow", "event": "ready", "node": "/bridged/step_${request.step}"},
                     {"type": "ecflow", "meter": "step", "node": "/bridged/data", "value": "${request.step}"},
                     {"type": "ecflow", "label": "latest", "node": "/bridged/data",
                      "value": "step ${request.step} at ${location}"},
                     {"type": "ecflow", "variable": "LAST_STEP", "node": "/bridged", "value": "${request.step}"},
                     {"type": "ecflow", "complete": "/bridged/done_${request.step}"}]}]}
    path.write_text(yaml.safe_dump(config))
    return path


def start_bridge(server: EcflowServer, config: Path, output: Path) -> subprocess.Popen[bytes]:
    with open(output, "ab") as sink:
        return subprocess.Popen([str(COMMAND), "ecflow-bridge", "--cursor", "bridge-test", "--host", "localhost",
                                 "--port", str(server.port),
                                 str(config)], stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_for_line(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in the bridge output within {timeout:g} s:\n{path.read_text()}")
        time.sleep(0.05)


def test_bridge_restarted_mid_stream_misses_nothing_and_applies_nothing_twice(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, unique_date: str,
        tmp_path: Path) -> None:
    play(bridged_suite(home), "localhost", ecflow_server.port, begin=True)
    config, output = write_config(tmp_path / "bridge.yaml", unique_date), tmp_path / "bridge.out"
    bridge = start_bridge(ecflow_server, config, output)
    wait_for_line(output, "listening after revision", 20)

    posted: list[int] = []

    def produce() -> None:
        for step in range(STEPS):
            store.notify("mars", {**FORECAST, "date": unique_date, "step": step}, location=f"file:///d/{step}")
            posted.append(step)
            time.sleep(0.1)  # a producer's pace, so that the bridge stops mid-stream; not a synchronisation

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for_line(output, "force complete /bridged/done_5", 30)
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=20) == 0
        down_at = len(posted)
        eventually(lambda: len(posted) >= min(down_at + 2, STEPS), what="two posts while the bridge is down")
        bridge = start_bridge(ecflow_server, config, output)
        producer.join(timeout=30)
        watcher.until(lambda d: str(d.find_abs_node(f"/bridged/done_{STEPS - 1}").get_state()) == "complete", 30,
                      "the last notification reaching the server")
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=20)
        producer.join(timeout=30)

    text = output.read_text()
    assert text.count("ecflow-bridge: stopped") == 2 and text.count("resuming after") == 1
    assert text.count("listening after revision") == 2
    applied = collections.Counter(re.findall(r",step=(\d+): ecflow: .*: force complete /bridged/done_", text))
    assert applied == {str(step): 1 for step in range(STEPS)}, f"each notification handled once: {applied}"
    server_log = _server_log(ecflow_server)
    for step in range(STEPS):
        assert server_log.count(f"--alter change event ready set /bridged/step_{step} :") == 1, \
            f"the server saw the event of step {step} set {server_log.count(f'step_{step} :')} times"
    defs = watcher.defs()
    assert all(defs.find_abs_node(f"/bridged/step_{s}").find_event("ready").value() for s in range(STEPS))
    assert watcher.meter("/bridged/data", "step") == STEPS - 1
    assert watcher.label("/bridged/data", "latest") == f"step {STEPS - 1} at file:///d/{STEPS - 1}"
    assert defs.find_abs_node("/bridged").find_variable("LAST_STEP").value() == str(STEPS - 1)


def _server_log(server: EcflowServer) -> str:
    logs = sorted(server.home.glob("*.ecf.log"))
    assert logs, f"no server log in {server.home}"
    return "".join(path.read_text() for path in logs)


def test_changes_are_checked_before_use() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        EcflowChange.from_spec({"node": "/s/t"})
    with pytest.raises(ValidationError, match="needs a 'value'"):
        EcflowChange.from_spec({"meter": "steps", "node": "/s/t"})
    with pytest.raises(ValidationError, match="'set' or 'clear'"):
        EcflowChange.from_spec({"event": "ready", "node": "/s/t", "value": "maybe"})
    with pytest.raises(ValidationError, match=re.escape("written ${request.step}, not {step:d}")):
        EcflowChange.from_spec({"meter": "steps", "node": "/s/t", "value": "{step:d}"})
    with pytest.raises(ValidationError, match="did you mean"):
        EcflowChange.from_spec({"label": "l", "node": "/s/t", "value": "${locaton}"})
    notification = Notification("mars", {"step": "6", "date": "20261122"}, None, "/ec/mars/x", 7)
    with pytest.raises(ActionFailed, match="absolute ecFlow path"):
        EcflowChange.from_spec({"complete": "/s/t ${request.step}"}).render(notification)
    change = EcflowChange.from_spec({"meter": "steps", "node": "/s/f_${request.date}", "value": "${request.step}"})
    rendered = change.render(notification)
    assert (rendered.node, rendered.value) == ("/s/f_20261122", "6")


def test_a_bridge_file_of_the_old_format_is_refused_naming_the_replacement(store: Store, tmp_path: Path) -> None:
    from aviso_workflows.listeners import load_listener_file

    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"cursor": "c", "listeners": [{
        "request": {"event": "mars", **FORECAST, "date": 20261122},
        "actions": [{"meter": "step", "node": "/s/data", "value": "{step}"}]}]}))
    with pytest.raises(ValidationError, match="type: ecflow") as refused:
        load_listener_file(store, old)
    assert str(old) in str(refused.value) and "\n" not in str(refused.value)
