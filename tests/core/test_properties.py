"""Property tests: keys round-trip to the canonical request, and canonicalising is idempotent."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviso_workflows import ValidationError
from aviso_workflows.fields import FORBIDDEN_CHARACTERS, Field
from aviso_workflows.request import Request
from aviso_workflows.schema import DISSEMINATION, MARS, MARS_CLASSES, MARS_DOMAINS, MARS_STREAMS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Raw spellings of each field, canonical or not.
dates = st.one_of(st.dates(), st.dates().map(lambda d: d.isoformat()),
                  st.dates(min_value=dt.date(1000, 1, 1)).map(lambda d: d.strftime("%Y%m%d")),
                  st.integers(-3000, 0))
times = st.sampled_from([0, 6, 12, 18]).flatmap(
    lambda h: st.sampled_from([h, str(h), f"{h:02d}", h * 100, f"{h:02d}00", f"{h}:00"]))
expvers = st.one_of(st.integers(0, 9999), st.integers(0, 9999).map(str),
                    st.text("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4,
                            max_size=4))
steps = st.one_of(st.integers(0, 100000), st.integers(0, 100000).map(str))


def spelled(values: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).flatmap(lambda v: st.sampled_from([v, v.upper(), v.capitalize()]))


# Free text for string fields: anything a key can hold (no separators, no whitespace, no control characters).
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda text: FORBIDDEN_CHARACTERS.search(text) is None)

mars_raw = st.fixed_dictionaries({
    "date": dates, "class": spelled(MARS_CLASSES), "expver": expvers, "domain": spelled(list(MARS_DOMAINS)),
    "time": times, "stream": spelled(MARS_STREAMS), "step": steps})
diss_raw = st.builds(lambda base, destination, target: {**base, "destination": destination, "target": target},
                     mars_raw, words, words)


def canonical(schema: Any, raw: dict[str, Any]) -> dict[str, str]:
    return {name: schema.fields[name].canonical(value) for name, value in raw.items()}


@SETTINGS
@given(mars_raw)
def test_mars_key_round_trip(raw: dict[str, Any]) -> None:
    values = canonical(MARS, raw)
    key = MARS.format_key(values)
    assert MARS.parse_key(key) == values
    assert Request.build(MARS, values).keys() == [key]
    assert Request.build(MARS, raw).match_key(key) == values


@SETTINGS
@given(diss_raw)
def test_dissemination_key_round_trip(raw: dict[str, Any]) -> None:
    values = canonical(DISSEMINATION, raw)
    key = DISSEMINATION.format_key(values)
    assert key.startswith(f"/ec/diss/{values['destination']}/date=")
    assert DISSEMINATION.parse_key(key) == values
    assert DISSEMINATION.parse_key(DISSEMINATION.status_key(values)) is None
    assert Request.build(DISSEMINATION, raw).match_key(key) == values


def _idempotent(field: Field, value: Any) -> None:
    try:
        once = field.canonical(value)
    except ValidationError as error:
        assert error.field == field.name
        return
    assert field.canonical(once) == once
    assert FORBIDDEN_CHARACTERS.search(once) is None


anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                     st.dates(), st.datetimes())


@SETTINGS
@given(st.sampled_from(sorted(DISSEMINATION.fields)), anything)
def test_canonicalising_twice_changes_nothing_for_any_input(name: str, value: Any) -> None:
    _idempotent(DISSEMINATION.fields[name], value)


@SETTINGS
@given(st.one_of(mars_raw, diss_raw))
def test_canonicalising_twice_changes_nothing_for_valid_input(raw: dict[str, Any]) -> None:
    for name, value in raw.items():
        field = DISSEMINATION.fields[name]
        once = field.canonical(value)
        assert field.canonical(once) == once
