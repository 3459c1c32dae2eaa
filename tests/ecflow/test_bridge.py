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

from aviso_workflows import Store, ValidationError
from aviso_workflows.ecflow.actions import EcflowAction
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
    config = {"cursor": "bridge-test", "listeners": [{
        "request": {"event": "mars", **FORECAST, "date": date},
        "actions": [{"event": "ready", "node": "/bridged/step_{step}"},
                    {"meter": "step", "node": "/bridged/data", "value": "{step}"},
                    {"label": "latest", "node": "/bridged/data", "value": "step {step} at {location}"},
                    {"variable": "LAST_STEP", "node": "/bridged", "value": "{step}"},
                    {"complete": "/bridged/done_{step}"}]}]}
    path.write_text(yaml.safe_dump(config))
    return path


def start_bridge(server: EcflowServer, config: Path, output: Path) -> subprocess.Popen[bytes]:
    with open(output, "ab") as sink:
        return subprocess.Popen([str(COMMAND), "ecflow-bridge", "--host", "localhost", "--port", str(server.port),
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
    wait_for_line(output, "resuming after", 20)

    def produce() -> None:
        for step in range(STEPS):
            store.notify("mars", {**FORECAST, "date": unique_date, "step": step}, location=f"file:///d/{step}")
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for_line(output, "force complete /bridged/done_5", 30)
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=20) == 0
        time.sleep(0.5)  # notifications keep coming while the bridge is down
        bridge = start_bridge(ecflow_server, config, output)
        producer.join(timeout=30)
        watcher.until(lambda d: str(d.find_abs_node(f"/bridged/done_{STEPS - 1}").get_state()) == "complete", 30,
                      "the last notification reaching the server")
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=20)
        producer.join(timeout=30)

    text = output.read_text()
    assert text.count("resuming after") == 2 and "stopped after" in text
    applied = collections.Counter(re.findall(r",step=(\d+): force complete /bridged/done_", text))
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


def test_actions_are_checked_before_use() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        EcflowAction.from_config({"node": "/s/t"})
    with pytest.raises(ValidationError, match="needs a 'value'"):
        EcflowAction.from_config({"meter": "steps", "node": "/s/t"})
    with pytest.raises(ValidationError, match="'set' or 'clear'"):
        EcflowAction.from_config({"event": "ready", "node": "/s/t", "value": "maybe"})
    notification = Notification("mars", {"step": "6", "date": "20261122"}, None, "/ec/mars/x", 7)
    with pytest.raises(ValidationError, match="placeholder {colour}"):
        EcflowAction.from_config({"label": "l", "node": "/s/{colour}", "value": "x"}).render(notification)
    with pytest.raises(ValidationError, match="absolute ecFlow path"):
        EcflowAction.from_config({"complete": "/s/t {step}"}).render(notification)
    action = EcflowAction.from_config({"meter": "steps", "node": "/s/f_{date}", "value": "{step}"})
    rendered = action.render(notification)
    assert (rendered.node, rendered.value) == ("/s/f_20261122", "6")
