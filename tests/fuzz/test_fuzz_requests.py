"""Fuzzed requests: each one is canonicalised or refused with a clear error, and etcd never gets a malformed key."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fuzz_strategies import (
    FUZZ,
    GOOD_VALUES,
    SCHEMAS,
    assert_canonical,
    assert_request_sound,
    good_request,
    outcome,
    requests,
    revision,
    values,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aviso_workflows import Store, ValidationError, WaitTimeout
from aviso_workflows.fields import MAX_VALUES_PER_FIELD
from aviso_workflows.request import MAX_KEYS_PER_REQUEST, Request
from aviso_workflows.store import NO_PAYLOAD

BAD_TTLS = [0, -1, True, False, 1.5, "", " ", "x", "1e3", "-5", 10**20, 10**10, "9" * 5000, [], {}, float("nan")]
BAD_LOCATIONS = ["", "a\nb", "\x00", "\ud800", "a\x7fb", 5, True, [], {}, b"bytes", "x" * 2_000_000]


@FUZZ
@given(event=st.one_of(st.sampled_from(sorted(SCHEMAS)), values), raw=st.one_of(requests(), values))
@example(event="mars", raw={"step": "9" * 5000})
@example(event="mars", raw={"step": 10**5000})
@example(event="mars", raw={"step": "0/to/10/by/" + "9" * 5000})
@example(event="dissemination", raw={"destination": "\ud800"})
@example(event="dissemination", raw={"destination": "A\x9bB"})
@example(event="mars", raw={"": "od"})
@example(event="mars", raw={"a\nb": "od"})
@example(event="mars", raw={"class": "x" * 100_000})
@example(event="mars", raw={"date": "20000101/to/20271231", "step": "0/to/99999", "expver": "0/to/9999",
                            "class": "od/rd/ea/ei/e4"})
def test_request_build(event: Any, raw: Any) -> None:
    built = outcome(Request.build, event, raw)
    if isinstance(built, Request):
        assert_request_sound(built)


@FUZZ
@given(raw=requests())
def test_store_request(fuzz_store: Store, raw: dict[Any, Any]) -> None:
    before = revision(fuzz_store)
    entries = {k: v for k, v in raw.items() if k not in ("location", "ttl")}
    built = outcome(fuzz_store.request, entries)
    if isinstance(built, Request):
        assert_request_sound(built)
    assert revision(fuzz_store) == before


def check_written(store: Store, request: Request, keys: list[str], location: str | None) -> None:
    """Every key written parses back to the canonical request it came from, with its value and status key."""
    expected = [request.schema.format_key(fields) for fields in request.concrete()]
    assert sorted(keys) == sorted(expected)
    for fields in request.concrete():
        key = request.schema.format_key(fields)
        assert request.schema.parse_key(key) == fields
        assert_canonical(request.schema, fields)
        _, kv = store.gateway.get(key)
        assert kv is not None and kv.value == (location if location is not None else NO_PAYLOAD)
        _, status = store.gateway.get(request.schema.status_key(fields))
        assert status is not None and "date_time" in json.loads(status.value)
        admin = request.schema.admin_key(fields)
        if admin is not None:
            assert store.gateway.get(admin)[1] is not None


small_notifies = requests().filter(lambda raw: "step" not in raw or not isinstance(raw["step"], str)
                                   or "to" not in raw["step"])


# TTLs of accepted posts outlive the run: an expiring lease deletes keys, which moves the revision compared.
@FUZZ
@given(raw=small_notifies, location=st.one_of(st.none(), st.sampled_from(BAD_LOCATIONS), st.text(max_size=20)),
       ttl=st.one_of(st.none(), st.sampled_from(BAD_TTLS), st.integers(86_400, 10**6), st.just("86400")))
@example(raw={"event": "dissemination", "destination": "\ud800", "target": "E1", "class": "od", "expver": 1,
              "domain": "g", "date": 20250101, "time": 0, "stream": "oper", "step": 0}, location=None, ttl=None)
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 0}, location="\udc80", ttl=None)
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": "0/to/127"}, location="x" * 20_000, ttl=None)
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 0}, location=None, ttl=10**20)
def test_notify(fuzz_store: Store, raw: dict[Any, Any], location: Any, ttl: Any) -> None:
    before = revision(fuzz_store)
    result = outcome(fuzz_store.notify, raw, location=location, ttl=ttl)
    if isinstance(result, ValidationError):
        assert revision(fuzz_store) == before, f"{result} but the store changed"
        return
    request = fuzz_store.request({k: v for k, v in raw.items() if k not in ("location", "ttl")})
    stored_location = location if location is not None else raw.get("location")
    check_written(fuzz_store, request, result.keys, stored_location)


@FUZZ
@given(raw=requests(), timeout=st.one_of(st.floats(-1, 0.05), st.sampled_from([
    0, -0.0, float("nan"), float("inf"), -float("inf"), 1e300, 10**400, True, "0.01", [], 2**64])),
       mode=st.sampled_from(["all", "any", "ANY", "", "some", None, 1]))
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 1}, timeout=float("nan"), mode="all")
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 1}, timeout=1e300, mode="all")
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 1}, timeout=10**400, mode="all")
@example(raw={"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": 20250101, "time": 0,
              "stream": "oper", "step": 1}, timeout="0.01", mode="all")
def test_wait(fuzz_store: Store, raw: dict[Any, Any], timeout: Any, mode: Any) -> None:
    before = revision(fuzz_store)
    try:
        found = outcome(fuzz_store.wait, raw, mode=mode, timeout=timeout)
    except WaitTimeout as timed_out:
        found = timed_out.found
    if not isinstance(found, ValidationError):
        request = fuzz_store.request(raw)
        assert all(request.match_key(notification.key) == notification.request for notification in found)
    assert revision(fuzz_store) == before


@settings(FUZZ, max_examples=40)  # each example expands up to a few hundred thousand values
@given(event=st.sampled_from(sorted(SCHEMAS)), data=st.data(),
       counts=st.lists(st.integers(1, MAX_VALUES_PER_FIELD), min_size=2, max_size=4))
def test_huge_expansions_are_refused_before_anything_is_written(fuzz_store: Store, event: str, data: st.DataObject,
                                                                counts: list[int]) -> None:
    """Ranges that multiply to more keys than one request may hold are refused with the limit named."""
    raw = data.draw(good_request(event))
    spans = {"step": lambda n: f"0/to/{n - 1}", "expver": lambda n: f"0/to/{min(n, 10_000) - 1}",
             "date": lambda n: f"19000101/to/{(dt.date(1900, 1, 1) + dt.timedelta(days=n - 1)):%Y%m%d}"}
    for name, count in zip(spans, counts):
        raw[name] = spans[name](count)
    if data.draw(st.booleans()):
        del raw["domain"]  # an open field: a wait for any key still may not walk more prefixes than the limit
    before = revision(fuzz_store)
    built = outcome(fuzz_store.request, raw)
    if isinstance(built, ValidationError):
        assert revision(fuzz_store) == before
        return
    assert_request_sound(built)


@pytest.mark.parametrize("raw", ["class=od", ["class", "od"], 5, None, b"class=od"])
def test_requests_that_are_not_mappings(fuzz_store: Store, raw: Any) -> None:
    """A request given as text, a list or a number: a clear error, as for a bad field."""
    before = revision(fuzz_store)
    for call in (fuzz_store.notify, fuzz_store.request, fuzz_store.wait):
        error = outcome(call, "mars", raw) if raw is not None else outcome(call, raw)
        assert isinstance(error, ValidationError), (call, error)
        assert error.field in ("request", "event"), error
    assert revision(fuzz_store) == before


def test_a_billion_keys_are_refused_at_once(fuzz_store: Store) -> None:
    """10⁹ keys: a clear error naming the limit, nothing written, nothing expanded beyond one field."""
    raw = {"event": "mars", "class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper",
           "date": "19000101/to/19270518", "step": "0/to/99999"}
    before = revision(fuzz_store)
    for call in (fuzz_store.notify, fuzz_store.request):
        error = outcome(call, raw)
        assert isinstance(error, ValidationError), error
        assert f"{MAX_KEYS_PER_REQUEST}" in error.valid
    assert revision(fuzz_store) == before


def test_good_values_cover_every_key_field() -> None:
    for schema in SCHEMAS.values():
        assert set(schema.key_fields) <= set(GOOD_VALUES)
