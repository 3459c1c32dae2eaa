"""The Cylc adapter's parts without a scheduler: cycle points, one read, results, action specs, cylc-notify, the
push listener on the listener runtime."""

from __future__ import annotations

import logging
import os

import pytest
from cylc_helpers import CYLC, cylc_missing

from aviso_workflows import Store, ValidationError
from aviso_workflows.cli import main
from aviso_workflows.cylc.actions import cylc_action
from aviso_workflows.cylc.core import check, cycle_point, cycle_request, point_fields, shell_safe
from aviso_workflows.cylc.xtrigger import aviso, validate
from aviso_workflows.listeners import parse_listeners
from aviso_workflows.listening import ListenOptions, run_listener

FORECAST = {"class": "od", "expver": 1, "domain": "g", "stream": "oper"}


@pytest.mark.parametrize(("point", "fields"), [
    ("20261201T0000Z", {"date": "20261201", "time": "0000"}),
    ("20261201T06Z", {"date": "20261201", "time": "0600"}),
    ("2026-12-01T12:00Z", {"date": "20261201", "time": "1200"}),
    ("20261201T0100+01", {"date": "20261201", "time": "0000"}),
    ("20261201T0000+0100", {"date": "20261130", "time": "2300"}),
    ("20261201", {"date": "20261201", "time": "0000"}),
])
def test_cycle_points_give_date_and_time_in_utc(point: str, fields: dict[str, str]) -> None:
    assert point_fields(point) == fields


@pytest.mark.parametrize("point", ["1", "%(point)s", "20261301T0000Z", "2026120"])
def test_what_is_not_a_date_time_point_is_refused_naming_date(point: str) -> None:
    with pytest.raises(ValidationError, match="^date: "):
        point_fields(point)


def test_a_notification_names_its_cycle_point() -> None:
    assert cycle_point({"date": "20261201", "time": "06"}) == "20261201T0600Z"
    assert cycle_point({"date": "20261201"}) == "20261201T0000Z"
    with pytest.raises(ValidationError, match="^date: "):
        cycle_point({"time": "00"})


def test_the_request_takes_time_from_the_point_unless_given(store: Store) -> None:
    assert cycle_request(store, "mars", {**FORECAST, "step": 0}, "20261201T1200Z").values["time"] == ("12",)
    assert cycle_request(store, "mars", {**FORECAST, "step": 0, "time": 0}, "20261201T1200Z").values["time"] == ("00",)
    with pytest.raises(ValidationError, match="^time: "):  # mars has no 03 UTC forecast
        cycle_request(store, "mars", {**FORECAST, "step": 0}, "20261201T0300Z")


def test_values_are_escaped_for_the_job_shell_or_left_out() -> None:
    assert shell_safe('a$(b)`c`"d"\\e') == 'a\\$(b)\\`c\\`\\"d\\"\\\\e'
    assert shell_safe("file:///data/x.grib") == "file:///data/x.grib"
    assert shell_safe("~/x") is None and shell_safe("'x") is None and shell_safe("a\nb") is None


def test_one_read_releases_when_every_key_exists(store: Store, unique_date: str) -> None:
    point = f"{unique_date}T0000Z"
    request = cycle_request(store, "mars", {**FORECAST, "step": "0/6"}, point)
    assert check(store, request) == (False, {})
    store.notify("mars", {**FORECAST, "date": unique_date, "time": 0, "step": 0}, location="file:///s0")
    assert check(store, request, "any")[0] is True
    assert check(store, request)[0] is False
    store.notify("mars", {**FORECAST, "date": unique_date, "time": 0, "step": 6}, location="file:///s6")
    satisfied, values = aviso("mars", point, step="0/6", endpoint=store.config.endpoints[0], **FORECAST)
    assert satisfied and values["location_0"] == "file:///s0" and values["location_6"] == "file:///s6"
    assert values["count"] == "2" and len(values["keys"].split()) == 2
    one = aviso("mars", point, step=6, **FORECAST)[1]
    assert one["location"] == "file:///s6"


def test_validate_names_the_field_and_accepts_templates() -> None:
    good = {"event": "mars", "date": "%(point)s", "mode": "all", "timeout": 10.0, "endpoint": "",
            "fields": {**FORECAST, "step": "0/6"}}
    validate(good)
    with pytest.raises(ValueError, match="stream: 'opre' is not valid"):
        validate({**good, "fields": {**FORECAST, "stream": "opre", "step": 0}})
    with pytest.raises(ValueError, match="step"):
        validate({**good, "fields": FORECAST})  # mode all needs every key field
    validate({**good, "mode": "any", "fields": FORECAST})
    with pytest.raises(ValueError, match="mode: "):
        validate({**good, "mode": "some"})


@pytest.mark.parametrize(("argument", "meant"), [("tiemout", "timeout"), ("endpiont", "endpoint"),
                                                 ("mdoe", "mode"), ("evnet", "event")])
def test_a_misspelled_argument_is_named_with_the_valid_ones_not_taken_for_a_field(argument: str, meant: str) -> None:
    args = {"event": "mars", "date": "%(point)s", "mode": "all", "timeout": 10.0, "endpoint": "",
            "fields": {**FORECAST, "step": 0, argument: "5"}}
    with pytest.raises(ValueError) as refused:
        validate(args)
    message = str(refused.value)
    assert f"{argument}: " in message and f"did you mean {meant}?" in message, message
    assert "mode, timeout, endpoint, sequential" in message and "class, date, domain" in message, message
    assert "unknown field" not in message
    with pytest.raises(ValidationError, match=f"did you mean {meant}"):  # the same check when Cylc calls it
        aviso("mars", "20261201T0000Z", **{**FORECAST, "step": 0, argument: "5"})


def test_a_bad_option_value_is_refused_at_validate() -> None:
    good = {"event": "mars", "date": "%(point)s", "mode": "all", "timeout": 10.0, "endpoint": "",
            "fields": {**FORECAST, "step": 0}}
    with pytest.raises(ValueError, match="timeout: 'soon' is not valid"):
        validate({**good, "timeout": "soon"})
    with pytest.raises(ValueError, match="endpoint: "):
        validate({**good, "endpoint": "ftp://etcd"})


@pytest.mark.parametrize(("spec", "field"), [
    ({"task": "t", "xtrigger": "x"}, "cylc.workflow"),
    ({"workflow": "-w", "task": "t", "xtrigger": "x"}, "cylc.workflow"),
    ({"workflow": "w", "task": "t", "xtrigger": "1x"}, "cylc.xtrigger"),
    ({"workflow": "w", "task": "t", "xtrigger": "x", "tsak": "t"}, "cylc.tsak"),
    ({"workflow": "w", "task": "t", "xtrigger": "x", "cycle": "${locaton}"}, "cylc.cycle"),
    ({"workflow": "w", "task": "t", "xtrigger": "x", "request": {"event": "mars", "stream": "opre"}}, "stream"),
    ({"workflow": "w", "task": "t", "xtrigger": "x", "cylc": "/no/such/cylc"}, "cylc.cylc"),
])
def test_bad_action_specs_are_refused_naming_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        cylc_action({"type": "cylc", **spec})
    assert refused.value.field == field


def test_cylc_notify_dates_by_the_cycle_point_and_checks_without_writing(
        store: Store, unique_date: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYLC_TASK_CYCLE_POINT", f"{unique_date}T1200Z")
    pairs = "event=mars,class=od,expver=1,domain=g,stream=oper,step=0/6"
    assert main(["cylc-notify", pairs, "--check"]) == 0
    assert f"date={unique_date},class=od,expver=0001,domain=g,time=12,stream=oper,step=6" in capsys.readouterr().out
    assert store.value("mars", {**FORECAST, "date": unique_date, "time": 12, "step": 0}) != {} and \
        set(store.value("mars", {**FORECAST, "date": unique_date, "time": 12, "step": "0/6"}).values()) == {None}
    assert main(["cylc-notify", pairs, "--location", "file:///x"]) == 0
    assert set(store.value("mars", {**FORECAST, "date": unique_date, "time": 12, "step": "0/6"}).values()) == \
        {"file:///x"}
    assert main(["cylc-notify", pairs.replace("oper", "opre"), "--check"]) == 2
    assert "stream: 'opre' is not valid" in capsys.readouterr().err


def test_the_push_listener_runs_the_listener_runtime_with_typed_options_and_leaves_the_environment(
        store: Store, unique_date: str, caplog: pytest.LogCaptureFixture) -> None:
    reason = cylc_missing()
    if reason:
        pytest.skip(reason)
    listeners = parse_listeners(store, {"listeners": [{
        "event": "mars", "request": {**FORECAST, "date": unique_date, "time": 0},
        "triggers": [{"type": "cylc", "workflow": f"absent-{unique_date}", "task": "process", "xtrigger": "data",
                      "cylc": str(CYLC)}]}]})
    options = ListenOptions.of_listeners(listeners, None, start=store.now().revision + 1, count=1)
    before = dict(os.environ)
    store.notify("mars", {**FORECAST, "date": unique_date, "time": 0, "step": 0})
    with caplog.at_level(logging.WARNING):
        assert run_listener(store, options) == 0
    assert f"cylc absent-{unique_date}//{unique_date}T0000Z/process xtrigger/data" in caplog.text
    assert dict(os.environ) == before
