"""Expected arrivals: the file is checked whole at load, a missed expectation fires its triggers once when
late and once when the data arrives, a met one fires nothing, and a restarted checker fires nothing again."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from freezegun import freeze_time
from helpers import COMMAND, FORECAST, until

from aviso_workflows import Store, ValidationError
from aviso_workflows.backends import CapabilityError
from aviso_workflows.expect import ExpectationChecker, checked_dates, load_expectation_file, parse_expectations


def entry(**overrides: Any) -> dict[str, Any]:
    base = {"name": "oper 00", "event": "mars", "request": {**FORECAST, "step": "0/to/12/by/6"}, "at": "05:40",
            "per_step": "2m", "grace": "10m", "triggers": [{"type": "echo"}]}
    return {**base, **overrides}


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"at": "5h40"}, "expectations[0].at", "time of day"),
    ({"at": "24:00"}, "expectations[0].at", "time of day"),
    ({"grace": "ten minutes"}, "expectations[0].grace", "duration"),
    ({"when": "soon"}, "expectations[0].when", "an expectation takes"),
    ({"request": {**FORECAST, "date": 20261122, "step": 0}}, "expectations[0].request.date", "leave the date out"),
    ({"request": {**FORECAST, "step": "zero"}}, "expectations[0].request: step", "zero"),
    ({"request": {"class": "od", "stream": "oper", "step": 0}}, "expectations[0].request: ", "needs every key"),
    ({"triggers": []}, "expectations[0].triggers", "at least one trigger"),
    ({"triggers": [{"type": "command", "command": "echo ${request.colour}"}]}, "expectations[0].triggers[0]",
     "placeholder"),
    ({"day": -1}, "expectations[0].day", "whole number of days"),
])
def test_a_bad_expectation_file_is_refused_naming_the_field(store: Store, overrides: dict[str, Any], field: str,
                                                            words: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_expectations(store, {"expectations": [entry(**overrides)]}, "late.yaml")
    assert str(error.value).startswith(f"late.yaml: {field}") and words in str(error.value)


def test_a_bad_file_is_refused_before_anything_runs(tmp_path: Path, etcd_url: str) -> None:
    path = tmp_path / "late.yaml"
    path.write_text(yaml.safe_dump({"expectations": [entry(at="25:00")]}))
    done = subprocess.run([COMMAND, "expect", str(path), "--endpoint", etcd_url, "--once"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "expectations[0].at: '25:00' is not valid" in done.stderr


def test_an_aviso_server_store_is_refused_naming_the_endpoint(store: Store) -> None:
    expectations = parse_expectations(store, {"expectations": [entry()]})
    with pytest.raises(CapabilityError, match=r"expectations.*aviso\+http://127.0.0.1:9 is an aviso-server.*etcd"):
        ExpectationChecker(Store(["aviso+http://127.0.0.1:9"]), expectations)


def test_due_times_and_dates_checked(store: Store) -> None:
    [expectation] = parse_expectations(store, {"expectations": [entry()]})
    assert expectation.due("20261122", {"step": "6"}) == dt.datetime(2026, 11, 22, 5, 52)
    with freeze_time("2026-11-22 00:30:00"):
        assert checked_dates() == ["20261122", "20261121"]
        assert checked_dates(3) == ["20261122", "20261121", "20261120"]
    with freeze_time("2026-12-31 23:59:59"):
        assert checked_dates(1) == ["20261231"]
    with pytest.raises(ValidationError, match="days"):
        checked_dates(0)


def test_a_missed_expectation_fires_once_when_late_and_once_on_arrival(store: Store, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if (now + dt.timedelta(seconds=30)).date() != now.date():
        pytest.skip("too close to midnight UTC for expectations due within seconds today")
    today = now.strftime("%Y%m%d")
    fired = tmp_path / "fired.log"
    log_action = [{"type": "log", "path": str(fired)}]
    met = entry(name="met", request={**FORECAST, "expver": 2, "step": 0},
                at=f"{now + dt.timedelta(seconds=4):%H:%M:%S}", grace=0, triggers=log_action)
    missed = entry(name="missed", request={**FORECAST, "expver": 3, "step": 0},
                   at=f"{now + dt.timedelta(seconds=1):%H:%M:%S}", grace="1s", triggers=log_action)
    path = tmp_path / "expect.yaml"
    path.write_text(yaml.safe_dump({"expectations": [met, missed]}))
    expectations = load_expectation_file(store, path)
    state_file = tmp_path / "state.json"

    def lines() -> list[dict[str, Any]]:
        text = fired.read_text() if fired.exists() else ""
        return [json.loads(line.split(" ", 1)[1]) for line in text.splitlines()]

    checker = ExpectationChecker(store, expectations, dates=[today], state_file=state_file)
    stop = threading.Event()
    thread = threading.Thread(target=checker.run, args=(stop,))
    thread.start()
    try:
        store.notify("mars", {**FORECAST, "expver": 2, "date": today, "step": 0}, location="file:///met")
        until(lambda: len(lines()) == 1, 15, "the late trigger of the missed expectation")
        [late] = lines()
        assert late["expectation"]["name"] == "missed" and late["expectation"]["state"] == "late"
        assert late["request"]["expver"] == "0003" and "location" not in late
        assert "not arrived" in late["expectation"]["message"]
        time.sleep(1.0)
        store.notify("mars", {**FORECAST, "expver": 3, "date": today, "step": 0}, location="file:///missed")
        until(lambda: len(lines()) == 2, 15, "the arrival trigger of the missed expectation")
        arrival = lines()[1]
        assert arrival["expectation"]["state"] == "arrived-late" and arrival["location"] == "file:///missed"
        assert arrival["expectation"]["late_by_seconds"] >= 2 and "arrived late by" in arrival["expectation"]["message"]
        time.sleep(2.5)  # past the met expectation's due time: it arrived on time and fires nothing
        states = {item.expectation.name: item for item in checker.states()}
        assert states["met"].state == "arrived" and states["met"].location == "file:///met"
        assert states["missed"].state == "arrived-late" and states["missed"].arrived_at is not None
        assert len(lines()) == 2
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()

    again = ExpectationChecker(store, expectations, dates=[today], state_file=state_file)
    again.start()
    again.tick()
    assert len(lines()) == 2  # a restarted checker fires nothing twice
    assert {item.expectation.name: item.state for item in again.states()} == {"met": "arrived",
                                                                               "missed": "arrived-late"}
    done = subprocess.run([COMMAND, "expect", str(path), "--endpoint", store.config.endpoints[0], "--once", "--json",
                           "--dates", today, "--state-file", str(state_file)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["state"] for line in done.stdout.splitlines()) == ["arrived", "arrived-late"]
