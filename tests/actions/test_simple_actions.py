"""echo, log and function actions, listener files in Python, and load-time checks of the specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from actions_helpers import listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, ValidationError
from aviso_workflows.actions import ACTION_TYPES, build_action
from aviso_workflows.listeners import ACTION_TYPES as LISTENER_ACTION_TYPES
from aviso_workflows.listeners import dispatch, parse_listeners

RECEIVED: list[dict[str, Any]] = []


def record(notification: dict[str, Any]) -> None:
    """Named in listener files as ``test_simple_actions:record``."""
    RECEIVED.append(notification)


def test_one_registry_with_every_action_type() -> None:
    assert LISTENER_ACTION_TYPES is ACTION_TYPES
    assert set(ACTION_TYPES) == {"echo", "log", "command", "post", "function", "ecflow", "airflow", "cylc"}


def test_echo_and_log(store: Store, unique_date: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_TEST_LOGS", str(tmp_path / "logs"))
    path = write_listeners(tmp_path / "log.yaml", [{
        "event": "mars", "request": mars(unique_date, step=[0, 6, 12]),
        "triggers": [{"type": "echo"}, {"type": "log", "path": "$AVISO_TEST_LOGS/deep/mars.log"}]}])
    start_cursor(store, "log")
    for step in (12, 0, 6):  # written in this order, delivered in this order
        store.notify("mars", mars(unique_date, step=step), location="https://data.example/1")
    assert listen_file(path, 3, "log") == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lines = (tmp_path / "logs" / "deep" / "mars.log").read_text().splitlines()
    logged = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert printed == logged and [n["request"]["step"] for n in logged] == ["12", "0", "6"]
    assert all(line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z") for line in lines)


def test_function_from_a_file_and_from_python(store: Store, unique_date: str, tmp_path: Path) -> None:
    RECEIVED.clear()
    path = write_listeners(tmp_path / "function.yaml", [{
        "event": "mars", "request": mars(unique_date, step=[0, 6]),
        "triggers": [{"type": "function", "function": "test_simple_actions:record"}]}])
    start_cursor(store, "function")
    store.notify("mars", mars(unique_date, step="0/6"), location="x")
    assert listen_file(path, 2, "function") == 0
    assert [(n["request"]["step"], n["location"]) for n in RECEIVED] == [("0", "x"), ("6", "x")]

    called: list[dict[str, Any]] = []
    listeners = parse_listeners(store, {"listeners": [{
        "event": "mars", "request": mars(unique_date, step=6),
        "triggers": [{"type": "function", "function": called.append}]}]})
    (notification,) = store.read(listeners[0].request)[1]
    assert dispatch(listeners, notification) == 0
    assert called == [notification.to_dict()]


def test_a_raising_function_is_counted_and_reported(store: Store, unique_date: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(notification: dict[str, Any]) -> None:
        raise RuntimeError("no space left")

    listeners = parse_listeners(store, {"listeners": [{
        "event": "mars", "request": mars(unique_date),
        "triggers": [{"type": "function", "function": broken}, {"type": "function", "function": record}]}]})
    store.notify("mars", mars(unique_date), location="y")
    (notification,) = store.read(listeners[0].request)[1]
    RECEIVED.clear()
    assert dispatch(listeners, notification) == 1
    assert RECEIVED == [notification.to_dict()]  # the next action still ran
    assert any("no space left" in r.getMessage() and notification.key in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("spec", "complaint"), [
    ({"type": "telegram"}, "supported actions"),
    ({"type": "echo", "colour": "red"}, "takes"),
    ({"type": "log"}, "needs 'path'"),
    ({"type": "function", "function": "no_colon"}, "package.module:function"),
    ({"type": "function", "function": "json:no_such_function"}, "cannot be imported"),
    ({"type": "airflow", "url": "http://127.0.0.1:9"}, "needs 'dag_id'"),
    ({"type": "airflow", "url": "http://127.0.0.1:9", "dag_id": "d", "password_env": "AVISO_UNSET_VARIABLE"},
     "not set"),
])
def test_bad_specs_are_refused_when_loaded(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        build_action(spec)
