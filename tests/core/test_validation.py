"""Every bad input of the issue: a ValidationError naming the field and the value, and nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_helpers import Snapshot, diss, mars

from aviso_workflows import Store, ValidationError, WaitTimeout
from aviso_workflows.fields import StringField
from aviso_workflows.listeners import load_listener_file
from aviso_workflows.request import Request
from aviso_workflows.schema import DISSEMINATION


def _error(call: Any, *args: Any, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert error.field and error.valid, "the error must say which field and what would be valid"
    assert str(error).startswith(f"{error.field}: "), str(error)
    return error


def _notify_fails(store: Store, raw: dict[str, Any], field: str, value: Any, **options: Any) -> ValidationError:
    """notify(raw) raises for ``field``/``value`` and leaves etcd exactly as it was."""
    snapshot = Snapshot(store, "/ec/mars/", "/ec/diss/COM/", "/ec/admin/")
    error = _error(store.notify, raw, **options)
    snapshot.assert_unchanged()
    assert error.field == field
    assert error.value == value
    if value is not None:
        assert repr(value) in str(error)
    return error


def test_unknown_event(store: Store, unique_date: str) -> None:
    raw = mars(unique_date, event="marz")
    error = _notify_fails(store, raw, "event", "marz")
    assert "mars" in error.valid and "dissemination" in error.valid


def test_missing_event(store: Store, unique_date: str) -> None:
    raw = mars(unique_date)
    del raw["event"]
    _notify_fails(store, raw, "event", None)


def test_unknown_field_lists_the_valid_fields(store: Store, unique_date: str) -> None:
    error = _notify_fails(store, mars(unique_date, claas="od"), "claas", "claas")
    assert "class" in error.valid and "stream" in error.valid


def test_missing_required_field_dissemination_without_destination(store: Store, unique_date: str) -> None:
    raw = diss(unique_date)
    del raw["destination"]
    error = _notify_fails(store, raw, "destination", None)
    assert "required" in error.valid


def test_notify_needs_every_key_field(store: Store, unique_date: str) -> None:
    error = _notify_fails(store, mars(unique_date, step=None), "step", None)
    assert "step" in error.valid


@pytest.mark.parametrize(("field", "value"), [
    ("step", "six"), ("step", 1.5), ("step", True), ("step", {"a": 1}), ("class", 3.5), ("class", None),
    ("time", True), ("date", 2026.5), ("date", True), ("expver", "1.5"), ("expver", "abcde"), ("domain", ["g", None]),
])
def test_wrong_type(store: Store, unique_date: str, field: str, value: Any) -> None:
    expected = None if isinstance(value, list) else value
    _notify_fails(store, mars(unique_date, **{field: value}), field, expected)


@pytest.mark.parametrize("value", [-1, 100001, "100001", "-6"])
def test_step_out_of_range(store: Store, unique_date: str, value: Any) -> None:
    error = _notify_fails(store, mars(unique_date, step=value), "step", value)
    assert "0 to 100000" in error.valid


@pytest.mark.parametrize("value", [20261340, "20261340", "20260230", "yesterday", "2026-13-01", "2026-11-22X",
                                   "1", 5, "202611", "22/11/2026x"])
def test_invalid_date(store: Store, unique_date: str, value: Any) -> None:
    error = _error(store.notify, mars(unique_date, date=value)) if "/" in str(value) else \
        _notify_fails(store, mars(unique_date, date=value), "date", value)
    assert error.field == "date"


@pytest.mark.parametrize("value", [1, "1", 24, "07", "1230", "noon", -6])
def test_time_not_allowed(store: Store, unique_date: str, value: Any) -> None:
    error = _notify_fails(store, mars(unique_date, time=value), "time", value)
    assert "00, 06, 12, 18" in error.valid


@pytest.mark.parametrize("field", ["step", "class", "date", "target"])
def test_empty_list(store: Store, unique_date: str, field: str) -> None:
    error = _notify_fails(store, diss(unique_date, **{field: []}), field, [])
    assert "empty" in error.valid


@pytest.mark.parametrize(("field", "value", "why"), [
    ("step", "0/to/24/by/0", "positive"),
    ("step", "0/to/24/by/-6", "positive"),
    ("step", "24/to/0", "smaller to the larger"),
    ("step", "24/to/0/by/6", "smaller to the larger"),
    ("date", "20261122/to/20261120", "smaller to the larger"),
    ("date", "20261120/to/20261122/by/0", "positive"),
    ("time", "18/to/0", "smaller to the larger"),
    ("step", "0/to/24/by/6/by/2", "start/to/end"),
    ("step", "0/to", "start/to/end"),
    ("step", "0//6", "no empty item"),
    ("step", "0/6/", "no empty item"),
    ("target", "a/to/b", "not supported"),
])
def test_bad_lists_and_ranges(store: Store, unique_date: str, field: str, value: str, why: str) -> None:
    error = _notify_fails(store, diss(unique_date, **{field: value}), field, value)
    assert why in error.valid


def test_oversized_range_is_refused_before_expanding(store: Store, unique_date: str) -> None:
    _notify_fails(store, mars(unique_date, step="0/to/99999", time="0/6/12/18", date="20260101/to/20261231"),
                  "request", 100000 * 4 * 365)


FORBIDDEN = ["E,1", "E=1", "E*", "E 1", " E1", "E1\t", "E\n1", "E\x00", "E\x1b", "E\x7f", "E\u00a0", ""]


@pytest.mark.parametrize("value", FORBIDDEN)
@pytest.mark.parametrize("field", ["target", "destination"])
def test_characters_that_would_corrupt_a_key(store: Store, unique_date: str, field: str, value: str) -> None:
    """Separators, wildcards, whitespace and control characters never reach a key."""
    expected = value.upper() if field == "destination" else value
    _notify_fails(store, diss(unique_date, **{field: value}), field, expected)


@pytest.mark.parametrize("value", ["a/b", "a,b", "a=b", "a*", "a b", "a\x01"])
def test_string_field_canonical_refuses_separators(value: str) -> None:
    error = _error(StringField("target").canonical, value)
    assert (error.field, error.value) == ("target", value)


def test_slash_in_a_string_value_is_list_syntax_not_part_of_a_key() -> None:
    """``target=E1/E2`` means two targets (pyaviso's list syntax): a '/' never ends up inside a key."""
    request = Request.build(DISSEMINATION, {"destination": "COM", "target": "E1/E2"})
    assert request.values["target"] == ("E1", "E2")


@pytest.mark.parametrize("location", ["file://x\n", "a\x00b", "", 5])
def test_bad_location(store: Store, unique_date: str, location: Any) -> None:
    _notify_fails(store, mars(unique_date), "location", location, location=location)


@pytest.mark.parametrize("ttl", [0, -5, "soon", True])
def test_bad_ttl(store: Store, unique_date: str, ttl: Any) -> None:
    _notify_fails(store, mars(unique_date), "ttl", ttl, ttl=ttl)


def test_one_bad_value_in_a_batch_writes_nothing(store: Store, unique_date: str) -> None:
    """A batch is validated completely before its first transaction."""
    _notify_fails(store, diss(unique_date, step="0/to/300", target=["E1", "E 2"]), "target", "E 2")


def test_listener_yaml_that_does_not_parse(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "listeners.yaml"
    path.write_text("listeners:\n  - event: mars\n    request: {class: od\n  bad: [")
    error = _error(load_listener_file, store, path)
    assert (error.field, error.value) == ("listener file", str(path))
    assert "YAML" in error.valid


@pytest.mark.parametrize("text", ["listeners: 5", "- a\n- b", "listeners: []",
                                  "listeners:\n  - request: {class: od}",
                                  "listeners:\n  - event: mars\n    request: {klass: od}",
                                  "listeners:\n  - event: mars\n    request: {class: od}\n"
                                  "    triggers: [{type: nope}]"])
def test_listener_yaml_with_bad_content(store: Store, tmp_path: Path, text: str) -> None:
    path = tmp_path / "listeners.yaml"
    path.write_text(text)
    _error(load_listener_file, store, path)


def test_listener_file_missing(store: Store, tmp_path: Path) -> None:
    error = _error(load_listener_file, store, tmp_path / "absent.yaml")
    assert error.value == str(tmp_path / "absent.yaml")


def test_wait_rejects_bad_mode_and_incomplete_all(store: Store, unique_date: str) -> None:
    assert _error(store.wait, mars(unique_date), mode="some", timeout=1).field == "mode"
    assert _error(store.wait, mars(unique_date, step=None), timeout=1).field == "step"


def test_dissemination_wait_needs_destination(store: Store, unique_date: str) -> None:
    raw = diss(unique_date)
    del raw["destination"]
    assert _error(store.wait, raw, mode="any", timeout=1).field == "destination"


def test_unreachable_etcd_names_the_endpoint(store: Store, unique_date: str) -> None:
    from aviso_workflows import StoreUnavailable, server

    dead = f"http://127.0.0.1:{server.free_port()}"
    unreachable = Store([dead])
    for call in (lambda: unreachable.notify(mars(unique_date)), lambda: unreachable.get(mars(unique_date))):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert dead in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(WaitTimeout) as timed_out:  # a wait rides an outage out until its timeout, and says why
        unreachable.wait(mars(unique_date), timeout=1)
    assert dead in str(timed_out.value) and "\n" not in str(timed_out.value)


@pytest.mark.parametrize("endpoint", ["ftp://host:1", "http://", "http://host:99999", ""])
def test_bad_endpoint(endpoint: str) -> None:
    error = _error(Store, [endpoint])
    assert error.field == "endpoint" and error.value == endpoint
