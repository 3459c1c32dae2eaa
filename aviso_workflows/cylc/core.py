"""What the xtrigger, the push action and the producer share: cycle points, one read, results for a job.

Nothing here imports Cylc: the listener that pushes runs in the project's main environment, the
xtrigger inside Cylc's own.

A cycle point gives a request its ``date`` and, when the event has a ``time`` field that the request
leaves out, its ``time``: ``20261201T0600Z`` is date ``20261201``, time ``0600`` (``06`` for mars). A
point with a time zone is taken to UTC first (Aviso dates are UTC dates); a point without one is UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ValidationError
from ..notification import Notification
from ..request import Request
from ..store import Store

#: The cycle point forms Cylc writes: basic or extended ISO 8601, to the day, hour, minute or second.
POINT = re.compile(r"(?P<y>\d{4})-?(?P<m>\d{2})-?(?P<d>\d{2})"
                   r"(?:T(?P<H>\d{2})(?::?(?P<M>\d{2}))?(?::?(?P<S>\d{2}))?)?"
                   r"(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?\Z")
#: A point used to check a request at ``cylc validate``, where ``%(point)s`` is not filled in yet.
SAMPLE_POINT = "20000101T0000Z"
#: Cylc's template of the cycle point in xtrigger arguments.
POINT_TEMPLATE = re.compile(r"(?<!%)%\((\w+)\)s")
MODES = ("all", "any")
#: Characters that a double-quoted shell word would expand; Cylc writes job variables as "VALUE".
_SHELL_SPECIAL = re.compile(r'([\\$`"])')


def point_time(point: str) -> dt.datetime:
    """The UTC moment of a Cylc cycle point such as ``20261201T0000Z`` or ``2026-12-01T06:00+01:00``."""
    match = POINT.match(str(point).strip())
    if match is None:
        raise ValidationError("date", point, "expected a date-time cycle point such as 20261201T0000Z "
                              "(the xtrigger argument date=%(point)s)")
    parts = match.groupdict()
    zone = parts["zone"] or "Z"
    offset = dt.timedelta(0)
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)) * (1 if zone[0] == "+" else -1)
    try:
        moment = dt.datetime(int(parts["y"]), int(parts["m"]), int(parts["d"]), int(parts["H"] or 0),
                             int(parts["M"] or 0), int(parts["S"] or 0))
    except ValueError as error:
        raise ValidationError("date", point, f"not a calendar date-time ({error})") from None
    return moment - offset


def point_fields(point: str) -> dict[str, str]:
    """``date`` (``YYYYMMDD``) and ``time`` (``HHMM``) of a cycle point, in UTC."""
    moment = point_time(point)
    return {"date": moment.strftime("%Y%m%d"), "time": moment.strftime("%H%M")}


def cycle_point(request: Mapping[str, str]) -> str:
    """The cycle point (Cylc's default format, UTC) of a notification's ``date`` and ``time``.

    ``time`` of one or two digits is an hour, of three or four ``HHMM``; an event without ``time`` gives
    ``T0000Z``.
    """
    date = str(request.get("date", ""))
    if not re.fullmatch(r"\d{8}", date):
        raise ValidationError("date", date or None, "the notification needs a date YYYYMMDD to name a cycle point")
    time = str(request.get("time", "0"))
    if not re.fullmatch(r"\d{1,4}", time):
        raise ValidationError("time", time, "expected an hour (00) or HHMM to name a cycle point")
    hhmm = f"{int(time):02d}00" if len(time) <= 2 else f"{int(time):04d}"
    return f"{date}T{hhmm}Z"


def cycle_request(store: Store, event: str, fields: Mapping[str, Any], point: str) -> Request:
    """The request of an xtrigger or a producer at one cycle point: the point gives ``date`` (and ``time``
    unless it is among ``fields``); every field is validated as for any request."""
    if not isinstance(event, str) or not event:
        raise ValidationError("event", event, "expected an event name such as mars")
    raw = dict(fields)
    raw.pop("date", None)
    schema = store.schema(event)
    from_point = point_fields(point)
    raw["date"] = from_point["date"]
    if "time" in schema.fields and raw.get("time") in (None, ""):
        raw["time"] = from_point["time"]
    return store.request(event, raw)


def check_mode(mode: Any) -> str:
    """``all`` (every key of the request) or ``any`` (one matching key)."""
    if mode not in MODES:
        raise ValidationError("mode", mode, "expected 'all' (every requested key) or 'any' (one of them)")
    return str(mode)


def shell_safe(value: str) -> str | None:
    """``value`` written so that Cylc's job script gives it back as it is, or None if it cannot be.

    Cylc writes a job's variables as ``NAME="VALUE"``, expanded by the shell: ``$``, backquotes,
    backslashes and double quotes in a location would run or change. They are escaped here. A value
    with control characters, or one that starts with ``~`` (tilde expansion) or a quote (Cylc reads a
    quoted setting), cannot be passed intact and is left out.
    """
    if re.search(r"[\x00-\x1f\x7f]", value) or value.startswith(("~", "'", '"')) or value != value.strip():
        return None
    return _SHELL_SPECIAL.sub(r"\\\1", value)


def _suffix(request: Request, notification: Notification) -> str:
    """What tells one key of the request from another: the values of the fields it does not fix."""
    varying = [name for name in request.schema.key_fields if len(request.values.get(name, ())) != 1]
    parts = [notification.request.get(name, "") for name in varying]
    return "_".join(re.sub(r"[^A-Za-z0-9]", "_", part) for part in parts)


def results(request: Request, found: Sequence[Notification]) -> dict[str, str]:
    """What a released xtrigger hands to its tasks (as ``LABEL_NAME`` variables).

    ``location`` for a request of one key, else ``location_<values>`` per key, by the values of the fields
    the request leaves open or lists (``location_6`` for step 6); ``keys`` (space-separated) and ``count``.
    A location is the stored value (``None`` when posted without one), escaped for the job's shell.
    """
    values: dict[str, str] = {}
    for notification in found:
        suffix = _suffix(request, notification)
        safe = shell_safe(notification.value)
        if safe is not None:
            values[f"location_{suffix}" if suffix else "location"] = safe
    values["keys"] = " ".join(n.key for n in found)
    values["count"] = str(len(found))
    return values


def check(store: Store, request: Request, mode: str = "all") -> tuple[bool, dict[str, str]]:
    """One read of the store: whether ``request`` is satisfied now, and the results if it is."""
    _, satisfied, values = check_at(store, request, mode)
    return satisfied, values


def check_at(store: Store, request: Request, mode: str = "all") -> tuple[int, bool, dict[str, str]]:
    """:func:`check`, with the revision the store was read at (every key written up to it was seen)."""
    mode = check_mode(mode)
    if mode == "all":
        request.require_complete("an xtrigger in mode 'all'")
    revision, found = store.read(request)
    satisfied = bool(found) if mode == "any" else {n.key for n in found} >= set(request.keys())
    if not satisfied:
        return revision, False, {}
    return revision, True, results(request, found)


__all__ = ["MODES", "POINT_TEMPLATE", "SAMPLE_POINT", "check", "check_at", "check_mode", "cycle_point", "cycle_request",
           "point_fields", "point_time", "results", "shell_safe"]
