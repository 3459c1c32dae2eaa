"""Canonical forms: one spelling per value, the one pyaviso's listeners compare with."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from freezegun import freeze_time

from aviso_workflows.errors import ValidationError
from aviso_workflows.request import Request, parse_pairs
from aviso_workflows.schema import DISSEMINATION, MARS

DATE = MARS.fields["date"]


@pytest.mark.parametrize(("value", "canonical"), [
    (20261122, "20261122"), ("20261122", "20261122"), (" 20261122 ", "20261122"),
    ("2026-11-22", "20261122"), ("2026-11-22T06:00:00", "20261122"), ("2026-11-22 18:30", "20261122"),
    (dt.date(2026, 11, 22), "20261122"), (dt.datetime(2026, 11, 22, 23, 59), "20261122"),
    ("2024-02-29", "20240229"), (19991231, "19991231"),
])
def test_date(value: Any, canonical: str) -> None:
    assert DATE.canonical(value) == canonical


@freeze_time("2026-03-01 00:30:00")
@pytest.mark.parametrize(("value", "canonical"), [
    (0, "20260301"), ("0", "20260301"), (-1, "20260228"), ("-1", "20260228"), (-365, "20250301"),
])
def test_relative_dates_count_back_from_today_utc(value: Any, canonical: str) -> None:
    assert DATE.canonical(value) == canonical


@freeze_time("2026-01-01 12:00:00")
def test_relative_date_ranges() -> None:
    assert DATE.expand("-2/to/0") == ("20251230", "20251231", "20260101")
    assert Request.build(MARS, {"date": [-1, 0]}).values["date"] == ("20251231", "20260101")


@pytest.mark.parametrize("relative", [-1, "-1", "-2/to/0", "20260101/-1"])
def test_a_relative_date_is_expanded_again_the_next_day(relative: Any) -> None:
    """Expanded values are kept for reuse; a relative date's are not, as they change at midnight."""
    with freeze_time("2026-01-01 23:59:59"):
        before = DATE.expand(relative)
    with freeze_time("2026-01-02 00:00:01"):
        after = DATE.expand(relative)
    assert before != after and after[-1] > before[-1]


def test_expanded_values_are_reused_only_for_the_same_raw_value() -> None:
    step = MARS.fields["step"]
    assert step.expand("0/to/12/by/6") is step.expand("0/to/12/by/6") == ("0", "6", "12")
    assert step.expand(6) == ("6",) and step.expand("6") == ("6",) and step.expand([6, 12]) == ("6", "12")
    with pytest.raises(ValidationError, match="step"):
        step.expand("x")
    with pytest.raises(ValidationError, match="step"):
        step.expand("x")  # refused again: a refusal is not kept as a value


@pytest.mark.parametrize(("value", "canonical"), [
    (0, "00"), ("0", "00"), ("00", "00"), (6, "06"), ("6", "06"), (1200, "12"), ("1200", "12"), ("12:00", "12"),
    (600, "06"), ("0600", "06"), (18, "18"), (" 18 ", "18"),
])
def test_time(value: Any, canonical: str) -> None:
    assert MARS.fields["time"].canonical(value) == canonical


@pytest.mark.parametrize(("value", "canonical"), [
    (1, "0001"), ("1", "0001"), ("0001", "0001"), (1.0, "0001"), (9999, "9999"), ("abcd", "abcd"), ("ABCD", "abcd"),
    ("x0y1", "x0y1"), (0, "0000"),
])
def test_expver(value: Any, canonical: str) -> None:
    assert MARS.fields["expver"].canonical(value) == canonical


@pytest.mark.parametrize(("field", "value", "canonical"), [
    ("class", "OD", "od"), ("class", "Od", "od"), ("stream", "OPER", "oper"), ("stream", "Enfo", "enfo"),
    ("domain", "G", "g"), ("step", "06", "6"), ("step", 6.0, "6"), ("step", "+12", "12"),
])
def test_enums_are_case_insensitive_and_lower_case(field: str, value: Any, canonical: str) -> None:
    assert MARS.fields[field].canonical(value) == canonical


def test_dissemination_destination_is_upper_case() -> None:
    assert DISSEMINATION.fields["destination"].canonical("com") == "COM"
    assert DISSEMINATION.fields["target"].canonical("E1") == "E1"


@pytest.mark.parametrize(("raw", "values"), [
    ("0/6/12", ("0", "6", "12")),
    ("0/to/24/by/6", ("0", "6", "12", "18", "24")),
    ("0/TO/24/BY/6", ("0", "6", "12", "18", "24")),
    ("0/to/3", ("0", "1", "2", "3")),
    ("12/to/12", ("12",)),
    ("0/to/10/by/4", ("0", "4", "8")),
    ([0, 6, "12/18"], ("0", "6", "12", "18")),
    ("6/0/6", ("6", "0")),
    (("0", 6), ("0", "6")),
])
def test_step_lists_and_ranges(raw: Any, values: tuple[str, ...]) -> None:
    assert MARS.fields["step"].expand(raw) == values


@pytest.mark.parametrize(("raw", "values"), [
    ("20261130/to/20261202", ("20261130", "20261201", "20261202")),
    ("2026-12-31/to/2027-01-02", ("20261231", "20270101", "20270102")),
    ("20261101/to/20261107/by/3", ("20261101", "20261104", "20261107")),
    ("20240228/to/20240301", ("20240228", "20240229", "20240301")),
    ("2026-11-22/20261123", ("20261122", "20261123")),
])
def test_date_lists_and_ranges(raw: Any, values: tuple[str, ...]) -> None:
    assert DATE.expand(raw) == values


def test_time_range_keeps_the_allowed_values() -> None:
    assert MARS.fields["time"].expand("0/to/18") == ("00", "06", "12", "18")
    assert MARS.fields["time"].expand("0/to/12/by/6") == ("00", "06", "12")


def test_request_from_pairs_is_canonical_and_keys_are_pyaviso_keys() -> None:
    pairs = parse_pairs("class=OD,expver=1,domain=G,date=2026-11-22,time=0,stream=ENFO,step=0/to/12/by/6")
    request = Request.build(MARS, pairs)
    assert request.as_dict() == {"date": "20261122", "class": "od", "expver": "0001", "domain": "g",
                                 "time": "00", "stream": "enfo", "step": ["0", "6", "12"]}
    assert request.keys() == [
        f"/ec/mars/date=20261122,class=od,expver=0001,domain=g,time=00,stream=enfo,step={s}" for s in (0, 6, 12)]
    assert str(request) == "event=mars,date=20261122,class=od,expver=0001,domain=g,time=00,stream=enfo,step=0/6/12"


def test_dissemination_keys_and_admin_key() -> None:
    request = Request.build(DISSEMINATION, {"destination": "com", "target": "E1", "class": "od", "expver": 1,
                                            "domain": "g", "date": 20261122, "time": 0, "stream": "enfo", "step": 6})
    (values,) = list(request.concrete())
    assert request.keys() == ["/ec/diss/COM/date=20261122,target=E1,class=od,expver=0001,domain=g,time=00,"
                              "stream=enfo,step=6"]
    assert DISSEMINATION.status_key(values) == "/ec/diss/COM/"
    assert DISSEMINATION.admin_key(values) == "/ec/admin/20261122/COM"


def test_rebuilding_a_request_from_its_dict_changes_nothing() -> None:
    raw = {"class": "OD", "expver": "1", "date": ["2026-11-22", 20261123], "time": "0/12", "step": "0/to/6/by/3"}
    request = Request.build(MARS, raw)
    assert Request.build(MARS, request.as_dict()) == request
