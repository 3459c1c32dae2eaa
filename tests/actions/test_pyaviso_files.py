"""pyaviso's documented listener files, re-typed as test data, run unchanged by ``aviso-workflows listen``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from actions_helpers import Receiver, mars, start_cursor

from aviso_workflows import Store

DATA = Path(__file__).with_name("data")
RUN_SECONDS = 60
RECORDER = """#!/bin/sh
# records its arguments (and a --jsonpath file's content) next to itself
here=$(dirname "$0")
printf 'call %s STEP=%s TIME=%s\\n' "$(basename "$0")" "${STEP-}" "${TIME-}" >> "$here/calls.txt"
printf 'arg %s\\n' "$@" >> "$here/calls.txt"
if [ "$1" = --jsonpath ]; then cat "$2" > "$here/from-jsonpath.json"; fi
"""


def diss(date: str, destination: str = "ZAG", **fields: Any) -> dict[str, Any]:
    return {"destination": destination, "target": "E1", **mars(date, stream="enfo"), **fields}


def install_script(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER)
    path.chmod(0o755)


def run_file(path: Path, count: int, cursor: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``aviso-workflows listen FILE`` as a separate process, in ``home`` (also its $HOME)."""
    command = [sys.executable, "-m", "aviso_workflows.cli", "listen", str(path), "--cursor", cursor,
               "--count", str(count)]
    done = subprocess.run(command, cwd=home, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
                          timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr
    return done


def calls(path: Path) -> list[list[str]]:
    """The recorded calls: one list per call, first the 'call' line, then one entry per argument."""
    found: list[list[str]] = []
    for line in path.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "call":
            found.append([rest])
        else:
            found[-1].append(rest)
    return found


def test_echo_listener(store: Store, unique_date: str, tmp_path: Path) -> None:
    start_cursor(store, "echo")
    store.notify("dissemination", diss(unique_date, stream="oper", step=1))  # another stream: ignored
    store.notify("dissemination", diss(unique_date, step="0/1/2/3"))
    done = run_file(DATA / "echo_listener.yaml", 3, "echo", tmp_path)
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [n["request"]["step"] for n in printed] == ["1", "2", "3"]
    assert all(n["event"] == "dissemination" and n["request"]["stream"] == "enfo" for n in printed)
    assert {n["request"]["date"] for n in printed} == {unique_date}


def test_multiple_triggers(store: Store, unique_date: str, tmp_path: Path) -> None:
    install_script(tmp_path / "aviso" / "examples" / "script.sh")
    start_cursor(store, "multiple")
    store.notify("dissemination", diss(unique_date, step="0/6"), location="https://data.example/E1.grib")
    done = run_file(DATA / "multiple_triggers.yaml", 2, "multiple", tmp_path)
    echoed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [n["location"] for n in echoed] == ["https://data.example/E1.grib"] * 2
    logged = (tmp_path / "log" / "testLog.log").read_text().splitlines()
    assert [json.loads(line.split(" ", 1)[1])["request"]["step"] for line in logged] == ["0", "6"]
    recorded = calls(tmp_path / "aviso" / "examples" / "calls.txt")
    assert recorded == [[f"script.sh STEP={step} TIME=The time is 00", "--stream", "enfo", "--date", unique_date,
                         "--time", "00", "--step", step] for step in ("0", "6")]


def test_command_json_and_jsonpath(store: Store, unique_date: str, tmp_path: Path) -> None:
    install_script(tmp_path / "examples" / "script.sh")
    start_cursor(store, "json")
    store.notify("dissemination", diss(unique_date, step=12), location="https://data.example/{a b}.grib")
    run_file(DATA / "command_json_listener.yaml", 1, "json", tmp_path)
    first, second = calls(tmp_path / "examples" / "calls.txt")
    assert first[1] == "--json" and len(first) == 3
    sent = json.loads(first[2])
    assert sent["location"] == "https://data.example/{a b}.grib" and sent["request"]["step"] == "12"
    assert second[1] == "--jsonpath" and not Path(second[2]).exists()  # removed after the command
    assert json.loads((tmp_path / "examples" / "from-jsonpath.json").read_text()) == sent


def test_mars_command_listener(store: Store, unique_date: str, tmp_path: Path) -> None:
    install_script(tmp_path / "aviso" / "examples" / "mars_script.sh")
    start_cursor(store, "mars")
    store.notify("mars", mars(unique_date, stream="enfo", step="0/1/2"))
    run_file(DATA / "mars_command_listener.yaml", 2, "mars", tmp_path)
    recorded = calls(tmp_path / "aviso" / "examples" / "calls.txt")
    assert [call[1:] for call in recorded] == [["--stream", "enfo", "--date", unique_date, "--time", "00",
                                                "--step", step] for step in ("0", "1")]


def test_post_listener(store: Store, unique_date: str, tmp_path: Path, receiver: Receiver) -> None:
    text = (DATA / "post_listener.yaml").read_text()
    assert "127.0.0.1:8001" in text
    listener_file = tmp_path / "post_listener.yaml"
    listener_file.write_text(text.replace("http://127.0.0.1:8001", receiver.url))  # only the port differs
    start_cursor(store, "post-file")
    store.notify("dissemination", diss(unique_date, destination="FOO", step=3), location="s3://bucket/obj")
    run_file(listener_file, 1, "post-file", tmp_path)
    (request,) = receiver.wait_for(1, "/test")
    assert request.headers["content-type"].startswith("application/cloudevents+json")
    event = request.json()
    assert (event["type"], event["source"], event["specversion"]) == ("aviso_cloudevent", "my_test", "1.0")
    assert event["data"]["location"] == "s3://bucket/obj" and event["data"]["request"]["destination"] == "FOO"


DRY_RUN_SHOWS = {
    "echo_listener.yaml": lambda date, home: ["echo: print the notification as JSON"],
    "multiple_triggers.yaml": lambda date, home: [
        "log: append a line to log/testLog.log",
        f"command: run in {home}/aviso/examples: ./script.sh --stream enfo --date {date} --time 00 --step 1"],
    "command_json_listener.yaml": lambda date, home: [
        'command: run: examples/script.sh --json {"event": "dissemination"',
        "command: run: examples/script.sh --jsonpath <temporary JSON file>"],
    "mars_command_listener.yaml": lambda date, home: [
        f"command: run in {home}/aviso/examples: ./mars_script.sh --stream enfo --date {date} --time 00 --step 1"],
    "post_listener.yaml": lambda date, home: [
        "post: POST a CloudEvent (type aviso_cloudevent, source my_test) to http://127.0.0.1:8001/test"],
}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.yaml")))
def test_dry_run_shows_and_does_nothing(store: Store, unique_date: str, tmp_path: Path, name: str) -> None:
    text = (DATA / name).read_text()
    start_cursor(store, "dry")
    cursor_file = next((tmp_path / "state").rglob("dry.json"))
    saved = cursor_file.read_text()
    event = "mars" if "event: mars" in text else "dissemination"
    destination = "FOO" if "destination: FOO" in text else "ZAG"
    fields = mars(unique_date, stream="enfo", step=1) if event == "mars" else diss(unique_date, destination, step=1)
    store.notify(event, fields, location="https://data.example/dry")
    command = [sys.executable, "-m", "aviso_workflows.cli", "listen", str(DATA / name), "--cursor", "dry",
               "--count", "1", "--dry-run"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr
    assert f"date={unique_date}" in done.stdout
    for expected in DRY_RUN_SHOWS[name](unique_date, tmp_path):
        assert expected in done.stdout, done.stdout
    assert cursor_file.read_text() == saved, "a dry run moved the cursor"
    assert not any(tmp_path.rglob("*.log")) and not any(tmp_path.rglob("calls.txt"))
