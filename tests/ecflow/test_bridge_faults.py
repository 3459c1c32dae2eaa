"""The bridge through faults, on real processes: an ecflow_server stopped and started again while the bridge
runs (it waits, then catches up, without exiting), and a bridge killed with SIGKILL around a notification
whose trigger failed for good (one dead letter, replayed once the node exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.ecflow import server as ecflow_server_module
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]
COMMAND = Path(sys.executable).parent / "aviso-workflows"
DATA = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
BOUND = 40.0


def load_suite(server: EcflowServer, name: str, steps: list[int]) -> None:
    import ecflow

    defs = ecflow.Defs()
    suite = defs.add_suite(name)
    data = suite.add_task("data")
    data.add_defstatus(ecflow.DState.suspended)
    data.add_meter("step", -1, 100)
    for step in steps:
        task = suite.add_task(f"step_{step}")
        task.add_defstatus(ecflow.DState.suspended)
        task.add_event("ready")
    client = server.client()
    client.load(defs)
    client.begin_suite(name)


def listener_file(path: Path, date: str, suite: str) -> Path:
    path.write_text(yaml.safe_dump({"listeners": [{
        "event": "mars", "request": {**DATA, "date": date},
        "triggers": [{"type": "ecflow", "meter": "step", "node": f"/{suite}/data", "value": "${request.step}"},
                     {"type": "ecflow", "event": "ready", "node": f"/{suite}/step_${{request.step}}"}]}]}))
    return path


def until(condition: Callable[[], bool], what: str) -> None:
    eventually(condition, what=what, timeout=BOUND, every=0.1)


def meter(server: EcflowServer, path: str) -> int | None:
    try:
        client = server.client()
        client.sync_local()
        return int(client.get_defs().find_abs_node(path).find_meter("step").value())
    except RuntimeError:
        return None


def event(server: EcflowServer, path: str) -> bool:
    client = server.client()
    client.sync_local()
    return bool(client.get_defs().find_abs_node(path).find_event("ready").value())


class Bridge:
    def __init__(self, server: EcflowServer, config: Path, output: Path, *extra: str) -> None:
        self.args = [str(COMMAND), "ecflow-bridge", str(config), "--port", str(server.port), *extra]
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        starts = self.text().count("listening after revision")
        with open(self.output, "ab") as sink:
            self.process = subprocess.Popen(self.args, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
        until(lambda: self.text().count("listening after revision") > starts, "the bridge listening")

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[list[EcflowServer]]:
    """A server this test may stop and start again (the list holds the running one)."""
    servers = [ecflow_server_module.start(tmp_path / "ecflow")]
    yield servers
    if servers[-1].process.poll() is None:
        servers[-1].stop()


def test_the_bridge_waits_for_a_stopped_server_and_catches_up(store: Store, unique_date: str, tmp_path: Path,
                                                              own_server: list[EcflowServer]) -> None:
    server = own_server[0]
    load_suite(server, "outage", [0, 1, 2])
    bridge = Bridge(server, listener_file(tmp_path / "b.yaml", unique_date, "outage"), tmp_path / "out",
                    "--cursor", "outage")
    bridge.start()
    try:
        store.notify("mars", {**DATA, "date": unique_date, "step": 0})
        until(lambda: event(server, "/outage/step_0"), "step 0 applied")
        server.client().checkpt()  # the restarted server loads the suite from its checkpoint
        server.stop()
        store.notify("mars", {**DATA, "date": unique_date, "step": "1/2"})
        until(lambda: "does not answer" in bridge.text(), "the outage noticed")
        time.sleep(2)  # not a synchronisation: the outage lasts over several of the bridge's tries
        assert bridge.process is not None and bridge.process.poll() is None, bridge.text()
        own_server.append(ecflow_server_module.start(server.home, server.port))
        server = own_server[-1]
        until(lambda: meter(server, "/outage/data") == 2, "steps 1 and 2 applied after the restart")
        assert event(server, "/outage/step_1") and event(server, "/outage/step_2")
    finally:
        assert bridge.stop() == 0
    text = bridge.text()
    assert text.count("does not answer") == 1 and text.count("works again") == 1, text


def test_a_dead_letter_survives_a_kill_once_and_is_replayed(store: Store, unique_date: str, tmp_path: Path,
                                                            own_server: list[EcflowServer]) -> None:
    server = own_server[0]
    load_suite(server, "dead", [6])  # no step_3: its event cannot be set
    letters = tmp_path / "dead.jsonl"
    config = listener_file(tmp_path / "b.yaml", unique_date, "dead")
    bridge = Bridge(server, config, tmp_path / "out", "--cursor", "dead", "--dead-letter-file", str(letters))
    bridge.start()
    store.notify("mars", {**DATA, "date": unique_date, "step": 3})
    until(lambda: letters.exists() and letters.read_text().strip() != "", "the dead letter written")
    bridge.stop(signal.SIGKILL)  # perhaps before its position moved past step 3
    bridge.start()
    store.notify("mars", {**DATA, "date": unique_date, "step": 6})
    until(lambda: event(server, "/dead/step_6"), "step 6 applied after the restart")
    bridge.stop()
    entries: list[dict[str, Any]] = [json.loads(line) for line in letters.read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["notification"]["request"]["step"] == "3", entries
    assert "step_3" in entries[0]["error"] and entries[0]["type"] == "ecflow"
    listed = subprocess.run([*bridge.args, "--dead-letters", "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "step=3" in listed.stdout and len(listed.stdout.splitlines()) == 1
    import ecflow

    fixed = ecflow.Defs()  # the operator adds the missing task ...
    task = fixed.add_suite("dead").add_task("step_3")
    task.add_defstatus(ecflow.DState.suspended)
    task.add_event("ready")
    server.client().replace("/dead/step_3", fixed, True, False)
    replayed = subprocess.run([*bridge.args, "--dead-letters", "replay"], capture_output=True, text=True, timeout=60)
    assert replayed.returncode == 0 and "1 done, 0 still failing" in replayed.stdout, replayed.stdout + replayed.stderr
    assert event(server, "/dead/step_3") and letters.read_text() == ""
