"""Partial release: at the deadline a wait with ``min_found=K`` is released if at least K of its keys exist,
naming the missing ones (core, CLI, sensor, trigger, ecFlow task); below K it times out as before."""

from __future__ import annotations

import asyncio
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import COMMAND, FORECAST, TTL, listed, mars, pairs, until
from test_waiters import airflow_context

from aviso_workflows import Store, ValidationError, WaitTimeout
from aviso_workflows.wait import wait


def key(date: str, step: int) -> str:
    return f"/ec/mars/date={date},class=od,expver=0001,domain=g,time=00,stream=oper,step={step}"


def test_core_wait_releases_with_k_of_n_and_names_the_missing(store: Store, unique_date: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    store.notify("mars", mars(unique_date, "0/6"))
    request = store.request(mars(unique_date, "0/6/12"))
    with caplog.at_level(logging.WARNING, logger="aviso_workflows"):
        found = wait(store, request, timeout=1, min_found=2)
    assert found.partial and found.missing == [key(unique_date, 12)]
    assert [n.request["step"] for n in found] == ["0", "6"]
    assert any("min_found=2" in r.getMessage() and "step=12" in r.getMessage() for r in caplog.records)
    with pytest.raises(WaitTimeout, match="at least 3 are needed") as below:
        wait(store, request, timeout=0.5, min_found=3)
    assert len(below.value.found) == 2
    complete = wait(store, store.request(mars(unique_date, "0/6")), timeout=5, min_found=1)
    assert not complete.partial and len(complete) == 2
    for bad in (0, 4, True, "2"):
        with pytest.raises(ValidationError, match="min_found"):
            wait(store, request, timeout=0.1, min_found=bad)  # type: ignore[arg-type]


def test_cli_wait_min_found_exits_0_and_runs_the_partial_command(store: Store, unique_date: str, etcd_url: str,
                                                                 tmp_path: Path) -> None:
    store.notify("mars", mars(unique_date, "0/6"))
    out = tmp_path / "missing.txt"
    argv = [COMMAND, "wait", pairs(mars(unique_date, "0/6/12/18")), "--endpoint", etcd_url, "--timeout", "1"]
    hook = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'w').write(' '.join(sys.argv[1:]))"]
    done = subprocess.run([*argv, "--min-found", "2", "--partial-command",
                           shlex.join([*hook, "{found}/{total}", "{missing}"])], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "step=12 step=18" in done.stderr and "min_found=2" in done.stderr
    assert out.read_text() == "2/4 step=12 step=18"
    assert len(done.stdout.splitlines()) == 2
    below = subprocess.run([*argv, "--min-found", "3"], capture_output=True, text=True, timeout=30)
    assert below.returncode == 1 and "at least 3 are needed" in below.stderr


@pytest.fixture
def aviso_conn(etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from airflow_helpers import connection_json

    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", connection_json(etcd_url))
    return "aviso_default"


def sensor(request: dict[str, Any], **options: Any) -> Any:
    from airflow.sdk import DAG

    from aviso_workflows.airflow import AvisoSensor

    with DAG("min_found_unit", schedule=None):
        return AvisoSensor(task_id="wait_fc", event="mars", request=request, **options)


def test_sensor_poke_mode_pushes_the_missing_keys_to_xcom(store: Store, unique_date: str, aviso_conn: str) -> None:
    from airflow.sdk.exceptions import AirflowSensorTimeout

    store.notify("mars", mars(unique_date, "0/6"))
    request = {**FORECAST, "date": unique_date, "step": "0/6/12"}
    context = airflow_context("partial")
    result = sensor(request, mode="poke", timeout=1, min_found=2).execute(context)
    assert [n["request"]["step"] for n in result] == ["0", "6"]
    assert context["ti"].pushed["missing"] == [key(unique_date, 12)]
    with pytest.raises(AirflowSensorTimeout, match="1 of 3 key"):
        sensor(request, mode="poke", timeout=1, min_found=3).execute(airflow_context("below"))
    with pytest.raises(ValidationError, match="min_found"):
        sensor(request, wait_for="any", min_found=1)


def test_trigger_payload_names_the_missing_keys_and_execute_complete_pushes_them(
        store: Store, unique_date: str, aviso_conn: str) -> None:
    from aviso_workflows.airflow import AvisoTrigger

    store.notify("mars", mars(unique_date, "0/6"))
    trigger = AvisoTrigger(event="mars", request=store.request(mars(unique_date, "0/6/12")).as_dict(),
                           deadline=time.time() + 1, min_found=2)
    assert trigger.serialize()[1]["min_found"] == 2

    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    payload = asyncio.run(asyncio.wait_for(first_event(), 30))
    assert payload["status"] == "success" and payload["missing"] == [key(unique_date, 12)]
    context = airflow_context("deferred")
    task = sensor({**FORECAST, "date": unique_date, "step": "0/6/12"}, deferrable=True, min_found=2)
    assert len(task.execute_complete(context, payload)) == 2
    assert context["ti"].pushed["missing"] == [key(unique_date, 12)]


# -- ecFlow --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ecflow(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from aviso_workflows.ecflow import server as ecflow_server

    if not ecflow_server.ecflow_available():
        pytest.fail("ecFlow is missing: run scripts/setup.sh")
    with pytest.MonkeyPatch.context() as patch:  # its jobs inherit this; set before the per-test fixture runs
        patch.setenv("AVISO_WORKFLOWS_WAITER_TTL", str(TTL))
        server = ecflow_server.start(tmp_path_factory.mktemp("ecflow") / "server")
    yield server
    server.stop()


def test_wait_task_is_listed_by_its_path_and_released_with_a_missing_label(
        ecflow: Any, store: Store, unique_date: str, etcd_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pyflow as pf
    from ecflow_helpers import Watcher, node_state

    from aviso_workflows.ecflow import LoopbackHost, WaitTask
    from aviso_workflows.ecflow.deploy import play

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    store.notify("mars", mars(unique_date, "0/6"))
    home = tmp_path / "suite"
    with pf.Suite("partial", host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"),
                  YMD=unique_date) as suite:
        WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/6/12"}, timeout=6, min_found=2,
                 endpoints=[etcd_url])
    play(suite, "localhost", ecflow.port)
    entry = until(lambda: [w for w in listed(store, ecflow_path="/partial/wait") if w.found == 2], 30,
                  "the task being listed with 2 keys found")[0]
    assert entry.who["kind"] == "ecflow-task" and entry.total == 3
    watcher = Watcher(ecflow)
    watcher.until(lambda d: node_state(d, "/partial/wait") == "complete", 30, "the task completing with 2 of 3")
    assert watcher.label("/partial/wait", "missing") == "missing step=12"
    assert listed(store, ecflow_path="/partial/wait") == []
