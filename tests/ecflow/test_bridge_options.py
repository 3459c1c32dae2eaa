"""The bridge is the listener runtime called with typed options: no argument namespace, no environment.

Its ecFlow server reaches the triggers that name none through their specs, so a bridge leaves
``os.environ`` as it found it (a command trigger beside it, a second bridge in the same process, see
their own environment)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.ecflow.bridge import BridgeOptions, listen_options, run_bridge
from aviso_workflows.ecflow.server import EcflowServer
from aviso_workflows.listening import ListenOptions

pytestmark = pytest.mark.ecflow
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
BOUND = 40.0


def load_suite(server: EcflowServer, name: str) -> None:
    import ecflow

    defs = ecflow.Defs()
    task = defs.add_suite(name).add_task("step_1")
    task.add_defstatus(ecflow.DState.suspended)
    task.add_event("ready")
    client = server.client()
    client.load(defs)
    client.begin_suite(name)


def ready(server: EcflowServer, path: str) -> bool:
    client = server.client()
    client.sync_local()
    return bool(client.get_defs().find_abs_node(path).find_event("ready").value())


def test_the_bridge_runs_the_listener_runtime_with_typed_options_and_leaves_the_environment(
        ecflow_server: EcflowServer, store: Store, unique_date: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("ECF_HOST", "ECF_PORT"):
        monkeypatch.delenv(name, raising=False)
    suite = f"typed_{unique_date}"
    load_suite(ecflow_server, suite)
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump({"listeners": [{
        "event": "mars", "request": {**FORECAST, "date": unique_date},
        "triggers": [{"type": "ecflow", "event": "ready", "node": f"/{suite}/step_${{request.step}}"}]}]}))
    bridge = BridgeOptions(str(config), ecflow_server.port, "localhost", cursor=f"typed-{unique_date}")

    options = listen_options(store, bridge)
    assert isinstance(options, ListenOptions) and options.cursor == f"typed-{unique_date}"
    assert options.who == {"kind": "ecflow-bridge", "ecflow_server": f"localhost:{ecflow_server.port}"}
    (kind, action), = options.listeners[0].actions
    assert (kind, action.host, action.port) == ("ecflow", "localhost", ecflow_server.port)  # type: ignore[attr-defined]

    before, stop, status = dict(os.environ), threading.Event(), []
    thread = threading.Thread(target=lambda: status.append(run_bridge(store, bridge, stop=stop)), daemon=True)
    thread.start()
    printed: list[str] = []

    def said(text: str) -> bool:
        printed.append(capsys.readouterr().out)
        return text in "".join(printed)

    try:
        # A first start listens after the store's revision when it starts: post only once it has read it.
        eventually(lambda: said("listening after revision"), what="the bridge listening", timeout=BOUND)
        store.notify("mars", {**FORECAST, "date": unique_date, "step": 1})
        eventually(lambda: ready(ecflow_server, f"/{suite}/step_1"), what="the bridge set the event", timeout=BOUND)
        assert dict(os.environ) == before
    finally:
        stop.set()
        thread.join(BOUND)
    assert status == [0] and dict(os.environ) == before
    said("")
    out = "".join(printed)
    assert f"ecflow-bridge: {config}, ecFlow at localhost:{ecflow_server.port}" in out
    assert "ecflow-bridge: stopped" in out
