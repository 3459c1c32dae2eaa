"""What users hand us, good and bad: field values, requests, text, and the checks every outcome must pass."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from aviso_workflows import Store, ValidationError
from aviso_workflows.fields import FORBIDDEN_CHARACTERS, MAX_VALUES_PER_FIELD
from aviso_workflows.request import MAX_KEYS_PER_REQUEST, Request
from aviso_workflows.schema import DISSEMINATION, MARS, MARS_CLASSES, MARS_DOMAINS, MARS_STREAMS, EventSchema

#: Shared by every fuzz test: bounded in examples, no per-example deadline (etcd and processes under load).
#: ``AVISO_FUZZ_EXAMPLES=2000`` fuzzes longer than ``make test`` does.
FUZZ = settings(max_examples=int(os.environ.get("AVISO_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SCHEMAS: dict[str, EventSchema] = {"mars": MARS, "dissemination": DISSEMINATION}

# Text that has broken parsers before: separators, wildcards, paths, control characters, odd digits,
# impossible calendar values, spellings of numbers with signs, spaces and exponents, very long values.
NASTY_TEXT = [
    "", " ", "\t", "\n", "\r\n", " \n ", "\x00", "a\x00b", "\x1b[31m", "\x7f", "\x85", "\x9b", "\u2028", "\ufeff",
    "\u200b", "\ud800", "/", "//", "a/", "/a", "*", "a*", "..", ".", "../..", ",", "=", "a=b", "a,b", "a b", "{}",
    "{date}", "%s", "${x}", "'", '"', "\\", "~", "None", "null", "true", "false", "[]", "-", "+", "0", "-0", "+6",
    "-6", " 6 ", "6 ", "6e0", "1e3", "6.0", "6.5", "0x6", "0o6", "0b1", "1_0", "٦", "６", "²", "Ⅵ", "ß", "İ",
    "é", "日本", "\U0001f642",
    "20250230", "20250229", "20240229", "2025-02-30", "2025-13-01", "2025-1-1", "00000101", "99999999",
    "20250101T00", "2025-01-01T00:00:00", "2025-01-01X", "0", "-1", "-99999", "-100000", "+1", "1", "2400", "24:00",
    "12:30", "1200", "0600", "06:00", "600", "25", "odd", "OD", "od ", "oper", "ENFO", "g", "G", "0001", "1", "00001",
    "abcd", "ABCD", "abc", "abcde", "x" * 300, "9" * 5000, "1" + "0" * 4299, "a" * 100_000,
]

ranges = st.builds(
    lambda start, end, step, sep: f"{start}{sep}to{sep}{end}" + (f"{sep}by{sep}{step}" if step is not None else ""),
    st.one_of(st.integers(-10, 100_001), st.sampled_from(["20250101", "2025-02-28", "0", "-3", "1e3", " 0", ""])),
    st.one_of(st.integers(-10, 10**12), st.sampled_from(["20250110", "20250230", "99991231", "1200", "x"])),
    st.one_of(st.none(), st.integers(-2, 10**10), st.sampled_from(["0", "-1", "1.5", "", "by", "9" * 5000])),
    st.sampled_from(["/", " / ", "/ ", "//"]),
)
slash_lists = st.lists(st.sampled_from(["0", "6", "12", "od", "", " ", "to", "by", "*", "x"]), min_size=2,
                       max_size=5).map("/".join)
scalars = st.one_of(
    st.sampled_from(NASTY_TEXT), st.text(max_size=12), st.integers(), st.integers(-10**30, 10**30),
    st.floats(), st.booleans(), st.none(), st.binary(max_size=6), st.dates(), st.datetimes(), st.times(),
    st.decimals(allow_nan=True), st.complex_numbers(max_magnitude=10), ranges, slash_lists,
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.frozensets(st.sampled_from(["0", "6", 12]), max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)), max_leaves=8)
field_names = st.one_of(
    st.sampled_from(sorted(DISSEMINATION.fields) + ["event", "location", "ttl", "Class", "STEP", "claas"]),
    st.sampled_from(NASTY_TEXT[:40]), st.text(max_size=8), st.integers(), st.none(), st.booleans(),
    st.tuples(st.text(max_size=2)),
)


def spelled(words: list[str]) -> st.SearchStrategy[str]:
    """A name as written by people: lower, upper or capitalised."""
    return st.sampled_from(words).flatmap(lambda w: st.sampled_from([w, w.upper(), w.capitalize()]))


# Good spellings of every field, so that accepted inputs are explored as much as refused ones.
_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8)
GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "date": st.one_of(st.dates(dt.date(1000, 1, 1)).map(lambda d: d.strftime("%Y%m%d")),
                      st.dates(dt.date(1000, 1, 1)), st.dates(dt.date(1000, 1, 1)).map(dt.date.isoformat),
                      st.integers(-400, 0), st.just("20250101/to/20250103")),
    "time": st.sampled_from([0, 6, 12, 18, "0", "00", "6", "0600", "12:00", "1200", "18", "0/12", "0/to/18"]),
    "class": spelled(MARS_CLASSES),
    "stream": spelled(MARS_STREAMS),
    "domain": spelled(list(MARS_DOMAINS)),
    "expver": st.one_of(st.integers(0, 9999), st.integers(0, 9999).map(str), st.sampled_from(["abcd", "X001"])),
    "step": st.one_of(st.integers(0, 100000), st.integers(0, 100000).map(str), st.just("0/to/12/by/6"),
                      st.lists(st.integers(0, 240), min_size=1, max_size=3)),
    "destination": _words.filter(lambda w: FORBIDDEN_CHARACTERS.search(w.upper()) is None),
    "target": _words.filter(lambda w: FORBIDDEN_CHARACTERS.search(w) is None),
}


@st.composite
def good_request(draw: st.DrawFn, event: str) -> dict[str, Any]:
    """A complete request of ``event`` in any valid spelling (``event`` entry included)."""
    raw = {"event": event}
    for name in SCHEMAS[event].key_fields:
        raw[name] = draw(GOOD_VALUES[name])
    return raw


@st.composite
def requests(draw: st.DrawFn) -> dict[Any, Any]:
    """A good request with a few entries replaced, added or removed: mostly bad, sometimes still good."""
    raw: dict[Any, Any] = draw(good_request(draw(st.sampled_from(sorted(SCHEMAS)))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(field_names)
        if draw(st.booleans()) and name in raw:
            del raw[name]
        elif isinstance(name, str) and name in GOOD_VALUES and draw(st.booleans()):
            raw[name] = draw(GOOD_VALUES[name])
        else:
            raw[name] = draw(values)
    return raw

# The canonical spelling of each field, as pyaviso's listeners compare it.
CANONICAL = {
    "date": re.compile(r"\d{8}\Z"), "time": re.compile(r"(00|06|12|18)\Z"), "expver": re.compile(r"[0-9a-z]{4}\Z"),
    "step": re.compile(r"(0|[1-9][0-9]{0,4}|100000)\Z"), "class": re.compile("(" + "|".join(MARS_CLASSES) + r")\Z"),
    "stream": re.compile("(" + "|".join(MARS_STREAMS) + r")\Z"), "domain": re.compile(f"[{''.join(MARS_DOMAINS)}]\\Z"),
}


def assert_canonical(schema: EventSchema, fields: dict[str, str]) -> None:
    """Every value is spelled the one way pyaviso writes and compares it."""
    for name, value in fields.items():
        assert FORBIDDEN_CHARACTERS.search(value) is None, (name, value)
        assert value.encode("utf-8").decode("utf-8") == value  # no lone surrogates: etcd keys are UTF-8
        if name in CANONICAL:
            assert CANONICAL[name].match(value), (name, value)
        if name == "date":
            dt.datetime.strptime(value, "%Y%m%d")
        if name == "destination":
            assert value == value.upper(), value
        assert schema.fields[name].canonical(value) == value, f"{name}={value!r} changes when read again"


def assert_request_sound(request: Request) -> None:
    """An accepted request holds canonical values only, reads back to itself, and is bounded."""
    for name, options in request.values.items():
        assert options, name
        assert len(options) <= MAX_VALUES_PER_FIELD
        for option in options[:1000]:  # the rest come from the same range
            assert_canonical(request.schema, {name: option})
    again = Request.build(request.schema, request.as_dict())
    assert again.values == request.values
    combinations = math.prod(len(v) for n, v in request.values.items() if n in request.schema.key_fields)
    assert combinations <= MAX_KEYS_PER_REQUEST


def is_one_line(text: str) -> bool:
    """True for a message that a terminal shows on one line."""
    return bool(text) and not re.search(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", text)


def check_validation_error(error: ValidationError) -> None:
    """A clear error: names the field and the value, says what is valid, on one line."""
    assert isinstance(error.field, str) and error.field, f"no field named: {error!r}"
    assert isinstance(error.valid, str) and error.valid.strip(), f"does not say what is valid: {error!r}"
    message = str(error)
    assert message.startswith(f"{error.field}: ") or message.startswith(f"{error.field!r}: "), message
    assert is_one_line(message), f"message spans lines: {message!r}"
    assert len(message) < 2000, f"message too long to read: {len(message)} characters"


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The result of ``call``, or the ValidationError it raised after checking it is a clear one.

    Any other exception propagates and fails the test: that is a crash from deep inside.
    """
    try:
        return call(*args, **kwargs)
    except ValidationError as error:
        check_validation_error(error)
        return error


def revision(store: Store) -> int:
    """The store's revision now (it moves with every write)."""
    return store.current_revision()
