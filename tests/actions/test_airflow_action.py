"""The airflow action: a DAG run per notification through Airflow 3's REST API.

Against a recording HTTP receiver (the request, token sign-in, retries, idempotent run ids) and, marked
``live``, against a real ``airflow api-server`` in a temp AIRFLOW_HOME.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from actions_helpers import Received, Receiver, listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, server
from aviso_workflows.actions import airflow_action
from aviso_workflows.listen import Position

AIRFLOW = Path(sys.executable).with_name("airflow")
DAG = '''
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("aviso_listener_target", schedule=None, catchup=False):
    EmptyOperator(task_id="nothing")
'''


def airflow_listener(url: str, date: str, **extra: Any) -> dict[str, Any]:
    spec = {"type": "airflow", "url": url, "dag_id": "process_${request.stream}", "username": "aviso",
            "password": "secret", "timeout": 5, "backoff": 0.01, **extra}
    return {"event": "mars", "request": mars(date, step=[0, 6]), "triggers": [spec]}


def answer(request: Received) -> tuple[int, Any]:
    if request.path == "/auth/token":
        good = request.json() == {"username": "aviso", "password": "secret"}
        return (201, {"access_token": "token-1"}) if good else (401, {"detail": "bad credentials"})
    if request.headers.get("authorization") != "Bearer token-1":
        return 401, {"detail": "not authenticated"}
    return 200, {"dag_run_id": request.json()["dag_run_id"], "state": "queued"}


def test_request_conf_and_sign_in(store: Store, unique_date: str, tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = answer
    path = write_listeners(tmp_path / "airflow.yaml", [airflow_listener(receiver.url, unique_date)])
    start_cursor(store, "airflow")
    store.notify("mars", mars(unique_date, step="0/6"), location="https://data.example/fc")
    assert listen_file(path, 2, "airflow") == 0
    assert len(receiver.received("/auth/token")) == 1  # the token is kept for later runs
    runs = receiver.received("/api/v2/dags/process_oper/dagRuns")
    assert [r.json()["conf"]["request"]["step"] for r in runs] == ["0", "6"]
    for run in runs:
        body = run.json()
        assert body["logical_date"] is None and body["conf"]["location"] == "https://data.example/fc"
        assert body["dag_run_id"].startswith(f"aviso__{body['conf']['revision']}__")
        assert run.headers["content-type"] == "application/json"
    assert len({r.json()["dag_run_id"] for r in runs}) == 2


def test_retried_after_outage_and_409_counts_as_done(store: Store, unique_date: str, tmp_path: Path,
                                                     receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    runs: set[str] = set()

    def flaky(request: Received) -> tuple[int, Any]:
        if request.path != "/auth/token" and len(receiver.received()) <= 3:
            return 503, {"detail": "starting"}
        if request.path != "/auth/token" and request.json()["dag_run_id"] in runs:
            return 409, {"detail": "exists"}
        if request.path != "/auth/token":
            runs.add(request.json()["dag_run_id"])
        return answer(request)

    receiver.answer = flaky
    path = write_listeners(tmp_path / "flaky.yaml", [airflow_listener(receiver.url, unique_date)])
    cursor = start_cursor(store, "flaky")
    store.notify("mars", mars(unique_date, step=0))
    with caplog.at_level(logging.ERROR):
        assert listen_file(path, 1, "flaky") == 0
    assert len(runs) == 1 and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # the same notification again (a replay): the run exists, nothing new is started, no error
    saved = cursor.load()
    assert saved is not None
    cursor.save(Position(saved.revision - 1))
    assert listen_file(path, 1, "flaky") == 0
    assert len(runs) == 1 and receiver.received()[-1].path.endswith("/dagRuns")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_wrong_password_is_given_up_and_reported(store: Store, unique_date: str, tmp_path: Path,
                                                 receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.answer = answer
    path = write_listeners(tmp_path / "denied.yaml", [airflow_listener(receiver.url, unique_date, password="wrong")])
    start_cursor(store, "denied")
    store.notify("mars", mars(unique_date, step=6))
    with caplog.at_level(logging.ERROR):
        assert listen_file(path, 1, "denied") == 0
    assert len(receiver.received()) == 1 and not receiver.received("/api/v2/dags/process_oper/dagRuns")
    assert any("HTTP 401" in r.getMessage() and "step=6" in r.getMessage() for r in caplog.records)


def test_runs_started_and_repeats_refused_are_logged_and_summarised(
        store: Store, unique_date: str, tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    runs: set[str] = set()

    def once(request: Received) -> tuple[int, Any]:
        if request.path != "/auth/token":
            if request.json()["dag_run_id"] in runs:
                return 409, {"detail": "exists"}
            runs.add(request.json()["dag_run_id"])
        return answer(request)

    receiver.answer = once
    path = write_listeners(tmp_path / "logged.yaml", [airflow_listener(receiver.url, unique_date)])
    cursor = start_cursor(store, "logged")
    keys = store.notify("mars", mars(unique_date, step="0/6")).keys
    with caplog.at_level(logging.INFO, logger="aviso_workflows"):
        assert listen_file(path, 2, "logged") == 0
        saved = cursor.load()
        assert saved is not None
        cursor.save(Position(saved.revision - 1))  # both again: a listener that died before saving its position
        assert listen_file(path, 2, "logged") == 0
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    started = [line for line in said if line.startswith("airflow: started DAG process_oper run aviso__")]
    refused = [line for line in said if line.startswith("airflow: DAG process_oper run aviso__") and "refused" in line]
    assert [line.rsplit(" ", 1)[-1] for line in started] == keys
    assert [line.split(" refused")[0].rsplit(" ", 1)[-1] for line in refused] == keys
    summaries = [line for line in said if line.startswith("listener stops after")]
    assert summaries == ["listener stops after 2 notification(s); airflow: 2 DAG run(s) started, 0 repeat(s) refused",
                         "listener stops after 2 notification(s); airflow: 0 DAG run(s) started, 2 repeat(s) refused"]


# -- a real api-server -------------------------------------------------------------------------
def airflow_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "aviso:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")})
    return env


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "airflow api-server exited"
        try:
            if requests.get(f"{url}/api/v2/monitor/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"airflow api-server did not answer within {seconds:g} s")


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``airflow api-server`` on a free loopback port, with one DAG and user aviso; stopped by its pid."""
    home = tmp_path_factory.mktemp("airflow-api")
    (home / "dags").mkdir()
    (home / "dags" / "aviso_listener_target.py").write_text(DAG)
    (home / "passwords.json").write_text(json.dumps({"aviso": "live-secret"}))
    env = airflow_environment(home)
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([str(AIRFLOW), *command], env=env, check=True, capture_output=True, timeout=300)
    port = server.free_port()
    with open(home / "api-server.out", "ab") as output:
        process = subprocess.Popen([str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port),
                                    "--workers", "1"], env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.live
@pytest.mark.slow
def test_dag_runs_on_a_real_api_server(store: Store, unique_date: str, tmp_path: Path, api_server: str) -> None:
    spec = {"type": "airflow", "url": api_server, "dag_id": "aviso_listener_target", "username": "aviso",
            "password_env": "AVISO_TEST_AIRFLOW_PASSWORD", "backoff": 0.2}
    os.environ["AVISO_TEST_AIRFLOW_PASSWORD"] = "live-secret"
    try:
        action = airflow_action(spec)
    finally:
        del os.environ["AVISO_TEST_AIRFLOW_PASSWORD"]
    store.notify("mars", mars(unique_date, step="0/6"), location="https://data.example/live")
    notifications = store.read(store.request("mars", mars(unique_date, step=[0, 6])))[1]
    for notification in notifications:
        action(notification)
    action(notifications[0])  # a repeat: the run exists already, nothing new
    token = requests.post(f"{api_server}/auth/token", json={"username": "aviso", "password": "live-secret"},
                          timeout=10).json()["access_token"]
    listed = requests.get(f"{api_server}/api/v2/dags/aviso_listener_target/dagRuns",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    listed.raise_for_status()
    runs = {run["dag_run_id"]: run for run in listed.json()["dag_runs"]}
    for notification in notifications:
        run = runs[action.run_id(notification)]
        assert run["conf"] == notification.to_dict() and run["run_type"] == "manual"
    assert len([r for r in runs if r.startswith("aviso__")]) == len(notifications) == 2


def api_runs(url: str) -> dict[str, dict[str, Any]]:
    token = requests.post(f"{url}/auth/token", json={"username": "aviso", "password": "live-secret"},
                          timeout=10).json()["access_token"]
    listed = requests.get(f"{url}/api/v2/dags/aviso_listener_target/dagRuns", params={"limit": 1000},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    listed.raise_for_status()
    return {run["dag_run_id"]: run for run in listed.json()["dag_runs"]}


def wait_for(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


@pytest.mark.live
@pytest.mark.slow
def test_listener_killed_and_restarted_mid_stream_starts_each_run_once(
        store: Store, unique_date: str, tmp_path: Path, api_server: str) -> None:
    """``aviso-workflows listen`` with the airflow action, killed with SIGKILL (by pid) while notifications
    come, then started again: every notification has exactly one DAG run; a repeat is refused by Airflow."""
    spec = {"type": "airflow", "url": api_server, "dag_id": "aviso_listener_target", "username": "aviso",
            "password": "live-secret", "backoff": 0.2}
    request = {k: v for k, v in mars(unique_date).items() if k != "step"}
    path = write_listeners(tmp_path / "kill.yaml", [{"event": "mars", "request": request, "triggers": [spec]}])
    start_cursor(store, "kill9")
    before = set(api_runs(api_server))
    command = [str(Path(sys.executable).with_name("aviso-workflows")), "listen", str(path), "--cursor", "kill9", "-v"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as output:
            return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    posted: list[str] = []
    first = start(logs[0])
    try:
        for step in range(4):
            posted += store.notify("mars", mars(unique_date, step=step)).keys
        wait_for("runs of the first notifications", lambda: len(set(api_runs(api_server)) - before) >= 2, 60)
        os.kill(first.pid, signal.SIGKILL)  # mid-stream: runs of the others may be on their way
        first.wait(timeout=10)
        for step in range(4, 8):  # posted while no listener runs
            posted += store.notify("mars", mars(unique_date, step=step)).keys
        second = start(logs[1])
        try:
            new = wait_for("one run per notification", lambda: (runs := {
                r: v for r, v in api_runs(api_server).items() if r not in before}) and len(runs) >= len(posted)
                and runs, 90)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
    assert sorted(run["conf"]["key"] for run in new.values()) == sorted(posted), "not one run per notification"
    said = logs[1].read_text()
    started = said.count("airflow: started DAG aviso_listener_target run aviso__")
    refused = said.count("exists already: repeat of")
    summary = [line for line in said.splitlines() if "listener stops after" in line]
    assert summary and f"airflow: {started} DAG run(s) started, {refused} repeat(s) refused" in summary[-1], said
    print(f"listener killed after {len(set(api_runs(api_server)) - before) - started} run(s) were started; "
          f"the restarted one started {started} and refused {refused} repeat(s)")
