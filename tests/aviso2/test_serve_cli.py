"""The command line on an aviso-server: the same commands and exit codes, only the endpoint differs
(what ecFlow's WaitTask and the operators' templates run)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_process import Serve
from test_serve_core import WAIT_BOUND, mars, mars_key
from threads import joined, run_in_thread
from waiting import eventually

from aviso_workflows import Store, server
from aviso_workflows.cli import main
from aviso_workflows.listen import Cursor

COMMAND = Path(sys.executable).with_name("aviso-workflows")


def pairs(date: str, **fields: object) -> str:
    values: dict[str, object] = {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date,
                                 "time": 0, "stream": "oper", "step": 0}
    values.update(fields)
    return ",".join(f"{k}={v}" for k, v in values.items() if v is not None)


def open_streams(serve: Serve, event: str = "mars") -> float:
    """The SSE streams of ``event`` that ``serve`` has open now (its Prometheus gauge)."""
    text = httpx.get(f"http://127.0.0.1:{serve.port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("aviso_sse_connections_active{") and f'event_type="{event}"' in line)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_notify_then_wait_json(aviso: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "notify", pairs(unique_date, step="0/to/24/by/6"), "--location", "file:///x")
    assert code == 0 and "notified 5 key(s)" in out
    assert mars_key(unique_date, 24) in out
    code, out, _ = run(capsys, "wait", pairs(unique_date, step="0/to/24/by/6"), "--timeout", "5", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["request"]["step"] for line in lines] == ["0", "6", "12", "18", "24"]
    assert lines[0]["event"] == "mars" and lines[0]["location"] == "file:///x"
    assert lines[0]["request"]["expver"] == "0001" and lines[0]["request"]["time"] == "00"


def test_wait_released_by_a_later_notify(aviso: Store, serve: Serve, unique_date: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    thread, outcome = run_in_thread(lambda: main(["wait", pairs(unique_date, step="0/6"), "--timeout", "10"]))
    eventually(lambda: open_streams(serve) >= 1, what="the wait's stream open on serve")
    aviso.notify(mars(unique_date, step="0/6"), location="loc")
    assert joined(thread, outcome, WAIT_BOUND) == 0
    out = capsys.readouterr().out
    assert out.count(" loc") == 2 and "step=6" in out


def test_wait_any_and_timeout_exit_codes(aviso: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    aviso.notify(mars(unique_date, step=6))
    code, out, err = run(capsys, "wait", pairs(unique_date, step="0/6/12"), "--timeout", "0.5")
    assert code == 1
    assert "timed out" in err and "1/3" in err
    assert "step=6" in out
    code, out, _ = run(capsys, "wait", pairs(unique_date, step="0/6/12"), "--any", "--timeout", "5", "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["6"]
    code, _, err = run(capsys, "wait", pairs(unique_date, step=None, stream="enfo"), "--any", "--timeout", "0.3")
    assert code == 1


def test_listen_cursor_resumes_without_repeats(aviso: Store, unique_date: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    Cursor("cli-cursor").save(aviso.now())
    for step in range(3):
        aviso.notify(mars(unique_date, step=step))
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--cursor", "cli-cursor", "--count", "2",
                       "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["0", "1"]
    for step in range(3, 5):
        aviso.notify(mars(unique_date, step=step))
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--cursor", "cli-cursor", "--count", "3",
                       "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["2", "3", "4"]


def test_listen_replay_from_to_and_a_listener_file(aviso: Store, unique_date: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    aviso.notify(mars(unique_date, step="0/6"), location="here")
    now = dt.datetime.now(dt.UTC)
    earlier, later = now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1)
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--from", earlier.isoformat(), "--to",
                       later.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["0", "6"]
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--from", "2000-01-01", "--to", "2000-01-02")
    assert code == 0 and out == ""
    listeners = tmp_path / "listeners.yaml"
    listeners.write_text(f"listeners:\n  - event: mars\n    request: {{date: {unique_date}, step: [6]}}\n"
                         "    triggers:\n      - type: echo\n")
    code, out, _ = run(capsys, "listen", str(listeners), "--from", earlier.isoformat(), "--to", later.isoformat())
    assert code == 0
    (line,) = out.splitlines()
    assert json.loads(line)["request"]["step"] == "6" and json.loads(line)["location"] == "here"


def test_real_command_in_a_subprocess(serve: Serve, unique_date: str) -> None:
    """What a WaitTask's job runs: ``aviso-workflows wait --endpoint aviso+http://...``."""
    env = {k: v for k, v in os.environ.items() if k != "AVISO_WORKFLOWS_ENDPOINTS"}
    endpoint = ["--endpoint", serve.endpoint]
    waiter = subprocess.Popen([str(COMMAND), "wait", pairs(unique_date, step="0/6"), "--timeout", "20", "--json",
                               *endpoint], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: open_streams(serve) >= 1, what="the wait's stream (in its own process) open on serve")
        notified = subprocess.run([str(COMMAND), "notify", pairs(unique_date, step="0/6"), "--location", "sub",
                                   *endpoint], env=env, capture_output=True, text=True, timeout=30)
        assert notified.returncode == 0, notified.stderr
        out, err = waiter.communicate(timeout=20)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert [json.loads(line)["location"] for line in out.splitlines()] == ["sub", "sub"]
    dead = f"aviso+http://127.0.0.1:{server.free_port()}"
    failed = subprocess.run([str(COMMAND), "wait", pairs(unique_date), "--endpoint", dead, "--timeout", "2"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1  # timed out: a wait rides an outage out until its timeout, and says why
    last_line = failed.stderr.strip().splitlines()[-1]
    assert "timed out" in last_line and dead.split("//")[1] in last_line and "Traceback" not in failed.stderr
    mixed = subprocess.run([str(COMMAND), "wait", pairs(unique_date), "--endpoint", serve.endpoint, "--endpoint",
                            "http://127.0.0.1:2379"], env=env, capture_output=True, text=True, timeout=30)
    assert mixed.returncode == 2 and mixed.stderr.startswith("aviso-workflows: endpoints: ")
