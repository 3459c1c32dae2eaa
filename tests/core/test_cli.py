"""The aviso-workflows command: exit codes 0 released, 1 timed out, 2 bad input; endpoints; the server."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from core_helpers import joined, mars_key
from threads import run_in_thread
from waiting import eventually, until_following

from aviso_workflows import Store, server
from aviso_workflows.cli import main
from aviso_workflows.listen import Cursor, Position
from aviso_workflows.waiters import list_waiters

ROOT = Path(__file__).resolve().parents[2]
COMMAND = ROOT / ".venv" / "bin" / "aviso-workflows"


def pairs(date: str, **fields: object) -> str:
    values: dict[str, object] = {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date,
                                 "time": 0, "stream": "oper", "step": 0}
    values.update(fields)
    return ",".join(f"{k}={v}" for k, v in values.items() if v is not None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{server.free_port()}"


def test_notify_then_wait_json(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "notify", pairs(unique_date, step="0/to/24/by/6"), "--location", "file:///x")
    assert code == 0 and "notified 5 key(s) in 1 transaction(s)" in out
    assert mars_key(unique_date, 24) in out
    code, out, _ = run(capsys, "wait", pairs(unique_date, step="0/to/24/by/6"), "--timeout", "5", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["request"]["step"] for line in lines] == ["0", "6", "12", "18", "24"]
    assert lines[0]["event"] == "mars" and lines[0]["location"] == "file:///x"
    assert lines[0]["request"]["expver"] == "0001" and lines[0]["request"]["time"] == "00"


def test_wait_released_by_a_later_notify(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    thread, outcome = run_in_thread(lambda: main(["wait", pairs(unique_date, step="0/6"), "--timeout", "10"]))
    until_following(store, {"event": "mars", **_fields(unique_date), "step": "0/6"})
    store.notify({"event": "mars", **_fields(unique_date), "step": "0/6"}, location="loc")
    assert joined(thread, outcome) == 0
    out = capsys.readouterr().out
    assert out.count(" loc") == 2 and "step=6" in out


def test_wait_any_and_timeout_exit_codes(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    store.notify({"event": "mars", **_fields(unique_date), "step": 6})
    code, out, err = run(capsys, "wait", pairs(unique_date, step="0/6/12"), "--timeout", "0.3")
    assert code == 1
    assert "timed out" in err and "1/3" in err
    assert "step=6" in out  # what was found is still printed
    code, out, _ = run(capsys, "wait", pairs(unique_date, step="0/6/12"), "--any", "--timeout", "5", "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["6"]
    code, _, err = run(capsys, "wait", pairs(unique_date, step=None, stream="enfo"), "--any", "--timeout", "0.2")
    assert code == 1


@pytest.mark.parametrize(("command", "request_text", "named"), [
    ("notify", "event=marz,class=od", "event: 'marz'"),
    ("notify", "{date_pairs},clas=od", "clas: 'clas'"),
    ("notify", "{date_pairs},time=1", "time: '1'"),
    ("notify", "{date_pairs},step=0/to/24/by/0", "step: '0/to/24/by/0'"),
    ("notify", "{date_pairs},step=24/to/0", "step: '24/to/0'"),
    ("notify", "{date_pairs},step=-1", "step: '-1'"),
    ("notify", "{date_pairs},expver=abcde", "expver: 'abcde'"),
    ("notify", "{date_pairs},date=yesterday", "date: 'yesterday'"),
    ("notify", "{date_pairs},date=20261340", "date: '20261340'"),
    ("notify", "{diss_pairs},destination=COM,target=E*", "target: 'E*'"),
    ("notify", "{diss_pairs},destination=COM,target=a=b", "target: 'a=b'"),
    ("notify", "{diss_pairs},destination=COM,target=E\x01", "target: 'E\\x01'"),
    ("notify", "{diss_pairs},destination=C*M,target=E1", "destination: 'C*M'"),
    ("notify", "{diss_pairs},target=E1", "destination: None"),
    ("notify", "{date_pairs},step", "request: 'step'"),
    ("notify", "{date_pairs},step=0,step=6", "step: '6'"),
    ("notify", "class=od", "event: None"),
    ("wait", "{date_pairs},step=", "step: ''"),
    ("wait", "{date_pairs},time=7", "time: '7'"),
    ("key", "{date_pairs},stream=nope", "stream: 'nope'"),
    ("value", "{date_pairs},domain=gg", "domain: 'gg'"),
    ("listen", "{date_pairs},class=zz", "class: 'zz'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(store: Store, unique_date: str, command: str,
                                                            request_text: str, named: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    date_pairs = f"event=mars,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper"
    diss_pairs = f"event=dissemination,class=od,expver=1,domain=g,date={unique_date},time=0,stream=oper,step=0"
    text = request_text.format(date_pairs=date_pairs, diss_pairs=diss_pairs)
    before = store.current_revision()
    code, out, err = run(capsys, command, text, "--timeout", "1") if command == "wait" else run(capsys, command, text)
    assert code == 2
    assert err.startswith("aviso-workflows: ") and named in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert store.current_revision() == before


def test_argument_errors_exit_2(store: Store, unique_date: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["notify", pairs(unique_date), "--ttl", "soon"])
    assert caught.value.code == 2


@pytest.mark.parametrize("command", ["notify", "wait", "listen", "value", "key"])
def test_unreachable_etcd_is_one_line_naming_the_endpoint(store: Store, unique_date: str, command: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = dead_endpoint()
    extra = ["--timeout", "2"] if command == "wait" else []
    code, _, err = run(capsys, command, pairs(unique_date), "--endpoint", endpoint, *extra)
    if command == "key":  # key needs no store
        assert code == 0
        return
    assert code == (1 if command == "wait" else 2)  # a wait rides an outage out until its timeout
    assert len(err.strip().splitlines()) == 1 or command == "wait", err  # a wait logs the outage, then ends
    assert endpoint in err and "Traceback" not in err


def test_key_and_value(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "key", pairs(unique_date, step="0/6"))
    assert code == 0 and out.splitlines() == [mars_key(unique_date, 0), mars_key(unique_date, 6)]
    assert run(capsys, "key", pairs(unique_date, step=None))[0] == 2
    store.notify({"event": "mars", **_fields(unique_date), "step": 0}, location="https://x")
    code, out, _ = run(capsys, "value", pairs(unique_date, step="0/6"))
    assert code == 1
    assert out.splitlines() == [f"{mars_key(unique_date, 0)} https://x", f"{mars_key(unique_date, 6)} (not posted)"]
    assert run(capsys, "value", pairs(unique_date, step=0))[0] == 0


def test_request_file(store: Store, unique_date: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text(f"event: mars\nclass: OD\nexpver: 1\ndomain: g\ndate: {unique_date}\ntime: 0\nstream: oper\n"
                    "step: [0, 6]\nlocation: file:///from-file\n")
    assert run(capsys, "notify", "--request-file", str(flat))[0] == 0
    nested = tmp_path / "nested.yaml"
    nested.write_text(f"event: mars\nrequest:\n  class: od\n  expver: '0001'\n  domain: g\n  date: {unique_date}\n"
                      "  time: '00'\n  stream: oper\n  step: 0/to/6/by/6\n")
    code, out, _ = run(capsys, "wait", "--request-file", str(nested), "--timeout", "5", "--json")
    assert code == 0
    assert [json.loads(line)["location"] for line in out.splitlines()] == ["file:///from-file"] * 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("event: mars\nclass: [od\n")
    code, _, err = run(capsys, "notify", "--request-file", str(broken))
    assert code == 2 and str(broken) in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "notify", "--request-file", str(flat), pairs(unique_date))
    assert code == 2


def test_listen_count_json(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    thread, outcome = run_in_thread(lambda: main(["listen", pairs(unique_date, step=None), "--count", "2", "--json"]))
    step = 0
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        store.notify({"event": "mars", **_fields(unique_date), "step": step})
        step += 1
        time.sleep(0.05)
    assert joined(thread, outcome) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert int(lines[1]["request"]["step"]) == int(lines[0]["request"]["step"]) + 1
    assert lines[0]["revision"] < lines[1]["revision"]


def test_listen_cursor_resumes_without_repeats(store: Store, unique_date: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    Cursor("cli-cursor").save(Position(store.current_revision()))
    for step in range(3):
        store.notify({"event": "mars", **_fields(unique_date), "step": step})
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--cursor", "cli-cursor", "--count", "2",
                       "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["0", "1"]
    for step in range(3, 5):
        store.notify({"event": "mars", **_fields(unique_date), "step": step})
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--cursor", "cli-cursor", "--count", "3",
                       "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["2", "3", "4"]


def test_listen_replay_from_to(store: Store, unique_date: str, capsys: pytest.CaptureFixture[str]) -> None:
    store.notify({"event": "mars", **_fields(unique_date), "step": "0/6"})
    now = dt.datetime.now(dt.UTC)
    earlier, later = now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1)
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--from", earlier.isoformat(), "--to",
                       later.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "--json")
    assert code == 0 and [json.loads(line)["request"]["step"] for line in out.splitlines()] == ["0", "6"]
    code, out, _ = run(capsys, "listen", pairs(unique_date, step=None), "--from", "2000-01-01", "--to", "2000-01-02")
    assert code == 0 and out == ""
    assert run(capsys, "listen", pairs(unique_date), "--from", "2026-11-22", "--to", "2026-11-21")[0] == 2
    assert run(capsys, "listen", pairs(unique_date), "--from", "last week")[0] == 2


def test_listen_with_a_listener_file(store: Store, unique_date: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    store.notify({"event": "mars", **_fields(unique_date), "step": "0/6"}, location="here")
    listeners = tmp_path / "listeners.yaml"
    listeners.write_text(f"listeners:\n  - event: mars\n    request: {{date: {unique_date}, step: [6]}}\n"
                         "    triggers:\n      - type: echo\n")
    now = dt.datetime.now(dt.UTC)
    code, out, _ = run(capsys, "listen", str(listeners), "--from", (now - dt.timedelta(minutes=1)).isoformat(),
                       "--to", (now + dt.timedelta(minutes=1)).isoformat())
    assert code == 0
    (line,) = out.splitlines()
    assert json.loads(line)["request"]["step"] == "6" and json.loads(line)["location"] == "here"
    listeners.write_text("listeners:\n  - event: mars\n   request: {")
    code, _, err = run(capsys, "listen", str(listeners))
    assert code == 2 and str(listeners) in err and len(err.strip().splitlines()) == 1


def test_endpoints_from_environment_config_file_and_option(store: Store, unique_date: str, etcd_url: str,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    store.notify({"event": "mars", **_fields(unique_date), "step": 0})
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", f"{dead_endpoint()},{etcd_url}")  # fails over to the second
    assert run(capsys, "value", pairs(unique_date))[0] == 0
    dead = dead_endpoint()
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", dead)
    code, _, err = run(capsys, "value", pairs(unique_date))
    assert code == 2 and dead in err
    assert run(capsys, "value", pairs(unique_date), "--endpoint", etcd_url)[0] == 0
    monkeypatch.delenv("AVISO_WORKFLOWS_ENDPOINTS")
    config = tmp_path / "config.yaml"
    config.write_text(f"endpoints: [{etcd_url}]\ntimeout: 5\n")
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(config))
    code, out, _ = run(capsys, "value", pairs(unique_date))
    assert code == 0 and mars_key(unique_date) in out
    other = tmp_path / "other.yaml"
    other.write_text(f"endpoints: [{dead}]\n")
    code, _, err = run(capsys, "value", pairs(unique_date), "--config", str(other))
    assert code == 2 and dead in err
    config.write_text("endpoints: [\n")
    code, _, err = run(capsys, "value", pairs(unique_date))
    assert code == 2 and str(config) in err
    config.write_text("endpoint: http://x\n")
    code, _, err = run(capsys, "value", pairs(unique_date))
    assert code == 2 and "endpoint" in err


def test_server_start_stop_status_keeps_data(tmp_path: Path, unique_date: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("AVISO_WORKFLOWS_ENDPOINTS", raising=False)
    data_dir, port = tmp_path / "etcd", server.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        code, out, _ = run(capsys, "server", "start", "--data-dir", str(data_dir), "--port", str(port))
        assert code == 0 and endpoint in out
        code, out, _ = run(capsys, "server", "status", "--data-dir", str(data_dir))
        assert code == 0 and f"running at {endpoint}" in out
        assert run(capsys, "notify", pairs(unique_date), "--endpoint", endpoint, "--location", "kept")[0] == 0
        code, out, _ = run(capsys, "server", "stop", "--data-dir", str(data_dir))
        assert code == 0 and "stopped" in out
        code, out, _ = run(capsys, "server", "status", "--data-dir", str(data_dir))
        assert code == 1 and "not running" in out
        assert run(capsys, "value", pairs(unique_date), "--endpoint", endpoint)[0] == 2
        assert run(capsys, "server", "start", "--data-dir", str(data_dir))[0] == 0  # same port as before
        code, out, _ = run(capsys, "value", pairs(unique_date), "--endpoint", endpoint)
        assert code == 0 and out.split() == [mars_key(unique_date), "kept"]
    finally:
        server.stop(data_dir)
    assert server.status(data_dir) is None


def test_real_command_in_a_subprocess(store: Store, unique_date: str, etcd_url: str) -> None:
    env = {**os.environ, "AVISO_WORKFLOWS_ENDPOINTS": etcd_url}
    waiter = subprocess.Popen([str(COMMAND), "wait", pairs(unique_date, step="0/6"), "--timeout", "20", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: list_waiters(store, {"date": unique_date, "pid": str(waiter.pid)}),
                   what="the wait in its own process listed among the waiters")
        notified = subprocess.run([str(COMMAND), "notify", pairs(unique_date, step="0/6"), "--location", "sub"],
                                  env=env, capture_output=True, text=True, timeout=30)
        assert notified.returncode == 0, notified.stderr
        out, err = waiter.communicate(timeout=20)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert [json.loads(line)["location"] for line in out.splitlines()] == ["sub", "sub"]
    dead = dead_endpoint()
    failed = subprocess.run([str(COMMAND), "wait", pairs(unique_date), "--endpoint", dead, "--timeout", "2"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1  # timed out: a wait rides an outage out until its timeout, and says why
    last_line = failed.stderr.strip().splitlines()[-1]
    assert "timed out" in last_line and dead in last_line and "Traceback" not in failed.stderr
    bad = subprocess.run([str(COMMAND), "notify", pairs(unique_date, time=1)], env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.startswith("aviso-workflows: time: '1' is not valid")


def _fields(date: str) -> dict[str, object]:
    return {"class": "od", "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper"}
