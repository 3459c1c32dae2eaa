"""From the values a DAG author writes to the core's Request: templates, the run's date, validation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ValidationError
from ..request import NON_KEY_ENTRIES, Request, check_location, check_ttl
from ..schema import BUILTIN_SCHEMAS
from ..store import Store

#: The request field that takes the run's date when the request leaves it out.
DATE_FIELD = "date"
WAIT_FOR = ("all", "any")
#: Missing keys a timeout message names (it gives the count of the others).
MISSING_SHOWN = 5


def is_templated(value: Any) -> bool:
    """True when ``value`` (or anything inside it) still holds Jinja markup."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(k) or is_templated(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_templated(v) for v in value)
    return False


def run_date(context: Mapping[str, Any]) -> dt.date:
    """The run's date: its logical date, or when it was due for runs without one (manual, asset-driven)."""
    moment = context.get("logical_date") or context["dag_run"].run_after
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()


def with_run_date(raw: Mapping[str, Any], has_date: bool, date: dt.date) -> dict[str, Any]:
    """``raw`` with ``date`` filled in when the event has a date field and the request leaves it out."""
    values = dict(raw)
    if has_date and DATE_FIELD not in values:
        values[DATE_FIELD] = date
    return values


def resolve(store: Store, event: str, raw: Mapping[str, Any], context: Mapping[str, Any]) -> Request:
    """The validated request of a rendered task, dated by the run when it names no date."""
    schema = store.schema(event)
    return store.request(event, with_run_date(raw, DATE_FIELD in schema.fields, run_date(context)))


def check_static(event: Any, raw: Any, wait_for: str | None = None, *, complete: bool = False,
                 templates: bool = True) -> Request | None:
    """Validate a request written without templates at DAG parse time (built-in events only).

    A missing date is fine here: the run's date fills it in. ``templates=False`` (triggers, which are
    never rendered) validates Jinja markup as the literal text it stays. Raises the core's ValidationError.
    Returns the request built when it is exactly ``raw`` (nothing filled in or left out; a trigger reuses
    it rather than validating the same fields twice), else None.
    """
    if wait_for is not None and wait_for not in WAIT_FOR:
        raise ValidationError("wait_for", wait_for, "expected 'all' or 'any'")
    if templates and (is_templated(event) or is_templated(raw)):
        return None
    if not isinstance(event, str) or not event.strip():
        raise ValidationError("event", event, "expected the name of an event, such as 'mars'")
    if not isinstance(raw, Mapping):
        raise ValidationError("request", raw, "expected a mapping of field names to values")
    if event not in BUILTIN_SCHEMAS:  # a custom event's schema comes with the connection, read at run time
        return None
    schema = BUILTIN_SCHEMAS[event]
    fields = {k: v for k, v in raw.items() if k not in NON_KEY_ENTRIES}
    dated = with_run_date(fields, DATE_FIELD in schema.fields, dt.date.today())
    request = Request.build(schema, dated)
    if complete:
        request.require_complete("waiting for all keys" if wait_for else "notify")
    return request if dated == raw else None


def check_conn_id(conn_id: Any) -> None:
    """An ``aviso_conn_id`` is the non-empty name of a connection."""
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ValidationError("aviso_conn_id", conn_id, "expected the name of an Airflow connection")


def check_payload(location: Any, ttl: Any) -> None:
    """The notify operator's ``location`` and ``ttl`` when written as plain values (not templates or XComs)."""
    if isinstance(location, str) and not is_templated(location):
        check_location(location)
    elif location is not None and not isinstance(location, str) and not _is_deferred_value(location):
        raise ValidationError("location", location, "expected text, a template or a task's output")
    if isinstance(ttl, (int, str)) and not is_templated(ttl):
        check_ttl(ttl)
    elif ttl is not None and not isinstance(ttl, (int, str)) and not _is_deferred_value(ttl):
        raise ValidationError("ttl", ttl, "expected a whole number of seconds, a template or a task's output")


def _is_deferred_value(value: Any) -> bool:
    """A value Airflow resolves when the task runs (a task's output, ``XComArg``, or anything it renders)."""
    return hasattr(value, "resolve")


def missing_keys(request: Request, found: Iterable[str], wait_for: str) -> str:
    """What a wait still lacks, for its timeout message: the first few missing keys and their count."""
    if wait_for == "any" or not request.is_complete:
        return f"no key matching {request} exists yet"
    have = set(found)
    missing = [key for key in request.keys() if key not in have]
    shown = ", ".join(missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    return f"{len(missing)} of {request.count} key(s) still missing: {shown}{more}"
