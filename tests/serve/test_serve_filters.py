"""Constraint objects of Aviso 2's watch as requests: the one matcher of the project takes them."""

from __future__ import annotations

import pytest

from aviso_workflows.errors import ValidationError
from aviso_workflows.request import Comparison, Request

KEY = {"date": "20261201", "class": "od", "expver": "0001", "domain": "g", "time": "06", "stream": "oper"}


@pytest.mark.parametrize(("constraint", "matching"), [
    ({"eq": 6}, [6]), ({"in": [0, "12"]}, [0, 12]), ({"gt": 6}, [12, 18]), ({"gte": 6}, [6, 12, 18]),
    ({"lt": 6}, [0]), ({"lte": 6}, [0, 6]), ({"between": [6, 12]}, [6, 12]), ("0/to/12/by/12", [0, 12]),
])
def test_step_constraints(constraint: object, matching: list[int]) -> None:
    request = Request.build_filter("mars", {"step": constraint, "class": {"in": ["OD", "rd"]}})
    assert [s for s in (0, 6, 12, 18) if request.matches({**KEY, "step": str(s)})] == matching
    assert not request.matches({**KEY, "class": "ea", "step": str(matching[0])})


def test_time_compares_as_hours() -> None:
    request = Request.build_filter("mars", {"time": {"gte": "12"}})
    assert request.comparisons == {"time": Comparison("gte", (12,))}
    assert [t for t in ("00", "06", "12", "18") if request.matches({**KEY, "time": t})] == ["12", "18"]


@pytest.mark.parametrize(("identifier", "field", "reason"), [
    ({"step": {"gte": 1, "lt": 3}}, "step", "exactly one operator"),
    ({"step": {}}, "step", "exactly one operator"),
    ({"step": {"like": 3}}, "step", "unknown operator"),
    ({"stream": {"gt": "oper"}}, "stream", "not numeric"),
    ({"step": {"between": [1]}}, "step", r"expects \[low, high\]"),
    ({"step": {"between": [8, 2]}}, "step", "low <= high"),
    ({"step": {"gt": [1, 2]}}, "step", "expects one number"),
    ({"step": {"in": []}}, "step", "non-empty list"),
    ({"step": {"eq": [1]}}, "step", "single value"),
    ({"step": {"gte": 200000}}, "step", "from 0 to 100000"),
])
def test_bad_constraints_name_the_field(identifier: dict, field: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as caught:
        Request.build_filter("mars", identifier)
    assert caught.value.field == field


def test_notify_requests_take_no_constraint_objects() -> None:
    with pytest.raises(ValidationError):
        Request.build("mars", {"step": {"gte": 1}})
