"""The ecflow action (the ecFlow bridge's actions) on a real ecflow_server, from a listener file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from actions_helpers import listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, ValidationError
from aviso_workflows.ecflow.actions import ecflow_action
from aviso_workflows.ecflow.server import EcflowServer

pytestmark = pytest.mark.ecflow


def load_suite(server: EcflowServer, name: str) -> None:
    """A suite whose tasks never run a job (suspended): only the listener changes them."""
    import ecflow

    defs = ecflow.Defs()
    suite = defs.add_suite(name)
    suite.add_variable("LAST_STEP", "none")
    data = suite.add_task("data")
    data.add_defstatus(ecflow.DState.suspended)
    data.add_meter("step", -1, 100)
    for step in (0, 6):
        task = suite.add_task(f"step_{step}")
        task.add_defstatus(ecflow.DState.suspended)
        task.add_event("ready")
    client = server.client()
    client.load(defs)
    client.begin_suite(name)


def node(server: EcflowServer, path: str) -> Any:
    client = server.client()
    client.sync_local()
    return client.get_defs().find_abs_node(path)


def test_events_meters_variables_and_complete(store: Store, unique_date: str, tmp_path: Path,
                                              ecflow_server: EcflowServer) -> None:
    suite = f"listened_{unique_date}"
    load_suite(ecflow_server, suite)
    common = {"type": "ecflow", "host": "localhost", "port": ecflow_server.port}
    path = write_listeners(tmp_path / "ecflow.yaml", [{
        "event": "mars", "request": mars(unique_date, step=[0, 6]),
        "triggers": [{**common, "event": "ready", "node": f"/{suite}/step_${{request.step}}"},
                     {**common, "meter": "step", "node": f"/{suite}/data", "value": "${request.step}"},
                     {**common, "variable": "LAST_STEP", "node": f"/{suite}", "value": "${request.step}"},
                     {**common, "complete": f"/{suite}/step_${{request.step}}"}]}])
    start_cursor(store, "ecflow")
    store.notify("mars", mars(unique_date, step=0))
    assert listen_file(path, 1, "ecflow") == 0
    assert node(ecflow_server, f"/{suite}/step_0").find_event("ready").value()
    assert not node(ecflow_server, f"/{suite}/step_6").find_event("ready").value()
    assert node(ecflow_server, f"/{suite}/data").find_meter("step").value() == 0
    assert str(node(ecflow_server, f"/{suite}/step_0").get_state()) == "complete"
    store.notify("mars", mars(unique_date, step=6))
    assert listen_file(path, 1, "ecflow") == 0
    assert node(ecflow_server, f"/{suite}/step_6").find_event("ready").value()
    assert node(ecflow_server, f"/{suite}/data").find_meter("step").value() == 6
    assert node(ecflow_server, f"/{suite}").find_variable("LAST_STEP").value() == "6"


def test_a_missing_node_is_reported_and_the_next_notification_handled(
        store: Store, unique_date: str, tmp_path: Path, ecflow_server: EcflowServer,
        caplog: pytest.LogCaptureFixture) -> None:
    suite = f"partial_{unique_date}"
    load_suite(ecflow_server, suite)
    path = write_listeners(tmp_path / "partial.yaml", [{
        "event": "mars", "request": mars(unique_date, step=[3, 6]),
        "triggers": [{"type": "ecflow", "port": ecflow_server.port, "event": "ready",
                      "node": f"/{suite}/step_${{request.step}}"}]}])
    start_cursor(store, "partial")
    store.notify("mars", mars(unique_date, step="3/6"))
    assert listen_file(path, 2, "partial") == 0
    assert node(ecflow_server, f"/{suite}/step_6").find_event("ready").value()
    failures = [r.getMessage() for r in caplog.records if "failed for notification" in r.getMessage()]
    assert len(failures) == 1 and "step_3" in failures[0] and '"step": "3"' in failures[0]


def test_ecflow_specs_are_checked_when_loaded() -> None:
    with pytest.raises(ValidationError, match="port"):
        ecflow_action({"type": "ecflow", "event": "ready", "node": "/s/t"})
    with pytest.raises(ValidationError, match="exactly one of"):
        ecflow_action({"type": "ecflow", "port": 3141, "node": "/s/t"})
