"""From the values a DAG author writes to the core's Request: templates, the run's date, validation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError
from ..request import NON_KEY_ENTRIES, Request
from ..schema import BUILTIN_SCHEMAS
from ..store import Store

#: The request field that takes the run's date when the request leaves it out.
DATE_FIELD = "date"
WAIT_FOR = ("all", "any")


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


def check_static(event: Any, raw: Any, wait_for: str | None = None, *, complete: bool = False) -> None:
    """Validate a request written without templates at DAG parse time (built-in events only).

    A missing date is fine here: the run's date fills it in. Raises the core's ValidationError.
    """
    if wait_for is not None and wait_for not in WAIT_FOR:
        raise ValidationError("wait_for", wait_for, "expected 'all' or 'any'")
    if is_templated(event) or is_templated(raw) or event not in BUILTIN_SCHEMAS:
        return
    schema = BUILTIN_SCHEMAS[event]
    if not isinstance(raw, Mapping):
        raise ValidationError("request", raw, "expected a mapping of field names to values")
    fields = {k: v for k, v in raw.items() if k not in NON_KEY_ENTRIES}
    request = Request.build(schema, with_run_date(fields, DATE_FIELD in schema.fields, dt.date.today()))
    if complete:
        request.require_complete("waiting for all keys" if wait_for else "notify")
