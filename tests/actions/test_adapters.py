"""Adapters plug in: the core imports no scheduler; action types and subcommands come from entry points;
``listen --from REVISION`` places a first start in the past."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from actions_helpers import listen_file, mars, write_listeners

from aviso_workflows import Store
from aviso_workflows.actions import ACTION_TYPES, ENTRY_POINT_GROUP
from aviso_workflows.cli import COMMANDS_GROUP, build_parser


def test_the_core_imports_neither_ecflow_nor_airflow() -> None:
    code = ("import sys, aviso_workflows, aviso_workflows.store, aviso_workflows.listeners, aviso_workflows.cli\n"
            "aviso_workflows.cli.build_parser()\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('ecflow', 'airflow', 'pyflow')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_ecflow_comes_through_the_entry_points() -> None:
    from importlib.metadata import entry_points

    assert "ecflow" in {point.name for point in entry_points(group=ENTRY_POINT_GROUP)}
    assert "ecflow" in {point.name for point in entry_points(group=COMMANDS_GROUP)}
    assert "ecflow" in ACTION_TYPES
    assert "ecflow-bridge" in build_parser().format_help()


def test_a_registered_action_type_runs_from_a_listener_file(store: Store, unique_date: str, tmp_path: Path) -> None:
    seen: list[str] = []

    class Collect:
        placeholders = frozenset({"request.step"})

        def __call__(self, notification: object) -> None:
            seen.append(notification.request["step"])  # type: ignore[attr-defined]

    ACTION_TYPES.register("collect", lambda spec: Collect())
    try:
        path = write_listeners(tmp_path / "collect.yaml", [{
            "event": "mars", "request": mars(unique_date, step=[1, 2]), "triggers": [{"type": "collect"}]}])
        first = store.notify("mars", mars(unique_date, step=1)).revisions[0]
        store.notify("mars", mars(unique_date, step=2))
        assert listen_file(path, 2, "collect-from", "--from", str(first)) == 0  # a first start in the past
    finally:
        ACTION_TYPES.unregister("collect")
    assert seen == ["1", "2"]


def test_from_is_ignored_once_the_cursor_was_saved(store: Store, unique_date: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write_listeners(tmp_path / "echo.yaml", [{"event": "mars", "request": mars(unique_date, step=[1, 2, 3]),
                                                     "triggers": [{"type": "echo"}]}])
    first = store.notify("mars", mars(unique_date, step=1)).revisions[0]
    store.notify("mars", mars(unique_date, step=2))
    assert listen_file(path, 1, "from-once", "--from", str(first)) == 0
    store.notify("mars", mars(unique_date, step=3))
    assert listen_file(path, 2, "from-once", "--from", str(first)) == 0
    steps = [json.loads(line)["request"]["step"] for line in capsys.readouterr().out.splitlines()]
    assert steps == ["1", "2", "3"]


def test_from_a_time_starts_at_the_first_post_after_it(store: Store, unique_date: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt
    import time

    path = write_listeners(tmp_path / "echo.yaml", [{"event": "mars", "request": mars(unique_date, step=[1, 2]),
                                                     "triggers": [{"type": "echo"}]}])
    store.notify("mars", mars(unique_date, step=1))
    time.sleep(1.1)  # not a synchronisation: ``since`` falls clearly between the two posts' times
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    store.notify("mars", mars(unique_date, step=2))
    assert listen_file(path, 1, "from-time", "--from", since) == 0
    assert [json.loads(line)["request"]["step"] for line in capsys.readouterr().out.splitlines()] == ["2"]


def test_dispatch_tries_a_transient_failure_once(store: Store, unique_date: str) -> None:
    from aviso_workflows.actions import TransientFailure
    from aviso_workflows.listeners import Listener, dispatch

    def down(notification: object) -> None:
        raise TransientFailure("receiver down")

    listener = Listener(store.request("mars", mars(unique_date)), [("function", down)])
    posted = store.notify("mars", mars(unique_date))
    (found,) = store.read(listener.request)[1]
    assert posted.keys == [found.key] and dispatch([listener], found) == 1


@pytest.mark.parametrize("name", ["listeners.yaml", "bridge.yaml"])
def test_the_example_listener_files_load(store: Store, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from aviso_workflows.listeners import load_listener_file

    monkeypatch.setenv("ECF_PORT", "3141")
    listeners = load_listener_file(store, Path(__file__).resolve().parents[2] / "examples" / name)
    assert listeners and all(listener.actions for listener in listeners)
