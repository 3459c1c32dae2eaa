"""The ecFlow bridge stopped again and again in the middle of a stream, with SIGTERM or SIGKILL.

Every notification sets an event on its own node, and a meter and a label on one node. The server's
log lists every change in the order it was made, so it shows which notifications were applied, in
which order and how often. (``test_bridge.py`` covers the other actions and one SIGTERM restart.)

What the bridge guarantees: after SIGTERM every notification is applied once, in order; after
SIGKILL every notification is applied, in order, and the one in hand when the bridge died (its
actions applied, its position not yet saved) may be applied again, once, by the restarted bridge.
"""

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

from aviso_workflows import Store
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = [pytest.mark.ecflow, pytest.mark.slow]
DATA = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
NOTIFICATIONS = 40
#: The bridge is stopped once it set the event of these steps (the stream keeps coming meanwhile).
STOP_AFTER = (8, 20, 31)
POST_PAUSE = 0.1
COMMAND = Path(sys.executable).parent / "aviso-workflows"
LINE_SECONDS = 60
METER = re.compile(r"--alter change meter applied (\d+) /restarted/data\b")
EVENT = re.compile(r"--alter change event ready set /restarted/step_(\d+)\b")


def restarted_suite(home: Path) -> pf.Suite:
    """Nodes that never run a job: only the bridge changes them."""
    with pf.Suite("restarted", files=str(home / "files"), home=str(home / "out")) as suite:
        with pf.Task("data", defstatus=pf.state.suspended):
            pf.Meter("applied", -1, NOTIFICATIONS)
            pf.Label("latest", "")
        for step in range(NOTIFICATIONS):
            with pf.Task(f"step_{step}", defstatus=pf.state.suspended):
                pf.Event("ready")
    return suite


def write_config(path: Path, date: str) -> Path:
    config = {"listeners": [{
        "event": "mars", "request": {**DATA, "date": date},
        "triggers": [{"type": "ecflow", "event": "ready", "node": "/restarted/step_${request.step}"},
                     {"type": "ecflow", "meter": "applied", "node": "/restarted/data", "value": "${request.step}"},
                     {"type": "ecflow", "label": "latest", "node": "/restarted/data", "value": "${key}"}]}]}
    path.write_text(yaml.safe_dump(config))
    return path


class BridgeProcess:
    """``aviso-workflows ecflow-bridge`` as a subprocess, its output appended to one file across restarts."""

    def __init__(self, server: EcflowServer, config: Path, output: Path) -> None:
        self.server = server
        self.config = config
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.output, "ab") as sink:
            self.process = subprocess.Popen(
                [str(COMMAND), "ecflow-bridge", "--host", "localhost", "--port", str(self.server.port),
                 "--cursor", "bridge-restart",
                 str(self.config)], stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
        self.starts += 1
        self.wait_for("listening after revision", count=self.starts)

    def stop(self, signum: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    def wait_for(self, text: str, count: int = 1) -> None:
        deadline = time.monotonic() + LINE_SECONDS
        for _ in range(int(LINE_SECONDS / 0.02) + 1):
            if self.text().count(text) >= count:
                return
            assert self.process is None or self.process.poll() is None, f"the bridge ended:\n{self.text()}"
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        pytest.fail(f"{text!r} not {count} time(s) in the bridge output within {LINE_SECONDS} s:\n{self.text()}")

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def server_log(server: EcflowServer) -> str:
    logs = sorted(server.home.glob("*.ecf.log"))
    assert logs, f"no server log in {server.home}"
    return "".join(path.read_text() for path in logs)


def replays(sequence: list[int]) -> int:
    """How many times ``sequence`` (in posted order) goes back to a notification it had already reached."""
    return sum(1 for before, after in zip(sequence, sequence[1:]) if after <= before)


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGTERM, id="sigterm"),
                                    pytest.param(signal.SIGKILL, id="sigkill")])
def test_bridge_stopped_three_times_mid_stream(ecflow_server: EcflowServer, watcher: Watcher, home: Path,
                                               store: Store, unique_date: str, tmp_path: Path,
                                               signum: signal.Signals) -> None:
    log_before = len(server_log(ecflow_server))
    play(restarted_suite(home), "localhost", ecflow_server.port, begin=True)
    bridge = BridgeProcess(ecflow_server, write_config(tmp_path / "bridge.yaml", unique_date),
                           tmp_path / "bridge.out")
    bridge.start()
    keys: list[str] = []

    def produce() -> None:
        for step in range(NOTIFICATIONS):
            keys.extend(store.notify("mars", {**DATA, "date": unique_date, "step": step}).keys)
            time.sleep(POST_PAUSE)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    statuses = []
    try:
        for step in STOP_AFTER:
            bridge.wait_for(f",step={step}: ecflow: ecFlow localhost:{ecflow_server.port}: event ready=set on "
                            f"/restarted/step_{step}")  # the rest is in hand
            statuses.append(bridge.stop(signum))
            bridge.start()
        producer.join(timeout=60)
        assert not producer.is_alive()
        watcher.until(lambda d: d.find_abs_node("/restarted/data").find_label("latest").new_value() == keys[-1], 60,
                      "the last notification reaching the server")
    finally:
        bridge.close()
        producer.join(timeout=60)
    assert statuses == [0 if signum == signal.SIGTERM else -signal.SIGKILL] * len(STOP_AFTER)

    log = server_log(ecflow_server)[log_before:]
    meters = [int(value) for value in METER.findall(log)]
    events = collections.Counter(int(step) for step in EVENT.findall(log))
    steps = list(range(NOTIFICATIONS))
    assert sorted(set(meters)) == steps, "every notification applied"
    assert meters == sorted(meters), f"applied in the order posted: {meters}"
    if signum == signal.SIGTERM:
        assert meters == steps, "each notification applied once"
        assert events == {step: 1 for step in steps}
    else:
        assert replays(meters) <= len(STOP_AFTER), f"at most the notification in hand again per kill: {meters}"
        assert all(events[step] in (1, 2) for step in steps) and sum(events.values()) - len(steps) <= len(STOP_AFTER)
    print(f"{signum.name}: {len(meters)} meter changes for {len(steps)} notifications, {replays(meters)} repeated")
    defs = watcher.defs()
    assert all(defs.find_abs_node(f"/restarted/step_{step}").find_event("ready").value() for step in steps)
    assert watcher.meter("/restarted/data", "applied") == NOTIFICATIONS - 1
