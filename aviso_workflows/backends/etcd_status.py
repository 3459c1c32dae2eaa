"""The pyaviso status record that every notify on etcd writes: its fields, and walking its chain back.

Kept below the backends (no store, no listener) so that the etcd backend's notify and the status-chain
searches (status_chain.py) share one definition.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import json
import os
import re
from importlib import metadata
from typing import Any

from ..etcd import EtcdGateway, KeyValue

#: The layout of ``date_time`` in a status record (UTC).
STATUS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _version() -> str:
    try:
        return metadata.version("aviso-workflows")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


VERSION = _version()


def status_info(status: KeyValue) -> tuple[dt.datetime, int, int] | None:
    data = status_record(status)
    try:
        when = dt.datetime.strptime(data["date_time"], STATUS_TIME_FORMAT)
    except (ValueError, KeyError, TypeError):
        return None
    return when, int(data.get("prev_rev") or 0), int(data.get("last_prev_day_rev") or 0)


def status_record(status: KeyValue) -> dict[str, Any]:
    """The JSON of a status; empty if another writer put something else there."""
    return _record_of(status.value)


def _record_of(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def previous_revision(status: KeyValue) -> int | None:
    """The revision of the status before ``status`` (None: the first of its chain, or unreadable)."""
    prev_rev = status_record(status).get("prev_rev")
    return prev_rev if isinstance(prev_rev, int) and not isinstance(prev_rev, bool) else None


def new_status(previous: KeyValue | None, message: str, etcd_user: str | None) -> dict[str, Any]:
    """The status record a notify writes after ``previous`` (None: the first of its chain), as pyaviso does."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    status: dict[str, Any] = {"etcd_user": etcd_user, "message": message, **_writer(),
                              "date_time": now.isoformat(timespec="microseconds") + "Z"}  # STATUS_TIME_FORMAT, faster
    if previous is None:
        return status
    status["prev_rev"] = previous.mod_revision
    old_day, carried = _what_follows(previous.value)
    if old_day is None:
        return status
    if old_day == now.date():
        if carried is not _ABSENT:
            status["last_prev_day_rev"] = carried
    else:
        status["last_prev_day_rev"] = previous.mod_revision
    return status


#: A status without ``last_prev_day_rev``.
_ABSENT = object()


@functools.lru_cache(maxsize=256)
def _what_follows(text: str) -> tuple[dt.date | None, Any]:
    """What the next status takes from a status's text: the day of its ``date_time`` and its ``last_prev_day_rev``
    (``_ABSENT`` without one). A producer's next notify follows its own last status: parsed once, not each time."""
    old = _record_of(text)
    return _day_of(old.get("date_time")), old.get("last_prev_day_rev", _ABSENT)


#: ``date_time`` as every writer of the chain formats it (STATUS_TIME_FORMAT), with the ranges strptime checks.
_STATUS_TIME = re.compile(r"(\d{4}-\d\d-\d\d)T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|6[01])\.\d{6}Z", re.ASCII)


def _day_of(date_time: Any) -> dt.date | None:
    """The day of a status's ``date_time`` (None: not a time in STATUS_TIME_FORMAT). A previous status is
    read at every notify: the usual shape is checked by a pattern, anything else by strptime."""
    if not isinstance(date_time, str):
        return None
    shaped = _STATUS_TIME.fullmatch(date_time)
    try:
        if shaped is not None:
            return dt.date.fromisoformat(shaped.group(1))
        return dt.datetime.strptime(date_time, STATUS_TIME_FORMAT).date()
    except ValueError:
        return None


@functools.cache
def _writer() -> dict[str, str]:
    """The fields of a status that say who wrote it: the same for every notify of a process."""
    return {"unix_user": _unix_user(), "aviso_version": f"aviso-workflows {VERSION}", "engine": "ETCD_REST",
            "hostname": os.uname().nodename}


def _unix_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class StatusChainTooLong(Exception):
    """A walk of a status chain read its limit of statuses without reaching the one it looked for."""


def status_after(gateway: EtcdGateway, key: str, previous: KeyValue | None, current: KeyValue | None, *,
                 limit: int) -> KeyValue | None:
    """The status whose ``prev_rev`` is ``previous`` (or the first one, when there was none), found by
    walking prev_rev back from ``current``; None if the chain does not lead back to ``previous``.

    Reads at most ``limit`` statuses (then raises StatusChainTooLong); raises HistoryCompacted where
    the chain's history is compacted.
    """
    floor = previous.mod_revision if previous is not None else 0
    status = current
    for _ in range(limit):
        if status is None or status.mod_revision <= floor:
            return None
        prev_rev = previous_revision(status)
        if prev_rev is None:  # the start of a chain: ours only if the key did not exist when we compared
            return status if previous is None else None
        if prev_rev <= floor:  # below ``previous``: the chain skipped it (it cannot be ours)
            return status if prev_rev == floor and previous is not None else None
        _, status = gateway.get(key, revision=prev_rev)
    raise StatusChainTooLong(f"more than {limit} statuses were written since")


__all__ = ["STATUS_TIME_FORMAT", "StatusChainTooLong", "new_status", "previous_revision", "status_after",
           "status_info", "status_record"]
