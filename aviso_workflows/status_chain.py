"""The pyaviso status chain: its status records, which revisions a time window covers, and replays of such a window.

Every notify writes the status key ``base/`` with the time of the post (``date_time``), the revision
of the previous status (``prev_rev``) and, from the first status of a day on, the revision of the last
status of the previous day (``last_prev_day_rev``). A window in time is found by walking that chain
back from the newest status; its notifications are then the history between the first and last
status of the window, every post of it (a key posted twice is there twice).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import HistoryCompacted
from .etcd import EtcdGateway, KeyValue
from .listen import listen
from .notification import Notification
from .position import Position
from .request import Request

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)
#: The layout of ``date_time`` in a status record (UTC).
STATUS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: A bound on the statuses one window search reads.
MAX_STATUS_STEPS = 10_000_000


def revision_window(store: Store, status_key: str, start: dt.datetime,
                    end: dt.datetime | None = None) -> tuple[int, int] | None:
    """Revisions of the first and last notification posted in [start, end) under ``status_key``.

    Walks the status chain back from the newest status (``prev_rev``, skipping whole days through
    ``last_prev_day_rev``); stops at compacted history. None when nothing was posted in the window.
    """
    _, status = store.gateway.get(status_key)
    first = last = 0
    for _ in range(MAX_STATUS_STEPS):
        info = _status_info(status) if status is not None else None
        if status is None or info is None:
            break
        when, previous, previous_day = info
        if end is None or when < end:
            if when < start:
                break
            last = last or status.mod_revision
            first = status.mod_revision
        skip_day = previous_day and end is not None and when.date() > end.date()
        target = previous_day if skip_day else previous
        if not target:
            break
        try:
            _, status = store.gateway.get(status_key, revision=target)
        except HistoryCompacted:
            log.warning("replay of %s: history before revision %s is compacted", status_key, target)
            break
    return (first, last) if first else None


def _status_info(status: KeyValue) -> tuple[dt.datetime, int, int] | None:
    data = status_record(status)
    try:
        when = dt.datetime.strptime(data["date_time"], STATUS_TIME_FORMAT)
    except (ValueError, KeyError, TypeError):
        return None
    return when, int(data.get("prev_rev") or 0), int(data.get("last_prev_day_rev") or 0)


def status_record(status: KeyValue) -> dict[str, Any]:
    """The JSON of a status; empty if another writer put something else there."""
    try:
        record = json.loads(status.value)
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
    status: dict[str, Any] = {
        "etcd_user": etcd_user,
        "message": message,
        "unix_user": _unix_user(),
        "aviso_version": f"aviso-workflows {__version__}",
        "engine": "ETCD_REST",
        "hostname": os.uname().nodename,
        "date_time": now.strftime(STATUS_TIME_FORMAT),
    }
    if previous is None:
        return status
    status["prev_rev"] = previous.mod_revision
    old = status_record(previous)
    try:
        old_day = dt.datetime.strptime(old["date_time"], STATUS_TIME_FORMAT).date()
    except (ValueError, KeyError, TypeError):
        return status
    if old_day == now.date():
        if "last_prev_day_rev" in old:
            status["last_prev_day_rev"] = old["last_prev_day_rev"]
    else:
        status["last_prev_day_rev"] = previous.mod_revision
    return status


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


def replay(store: Store, requests: list[Request], start: dt.datetime,
           end: dt.datetime | None = None) -> list[Notification]:
    """Every post between ``start`` and ``end`` (UTC, naive) that the requests match, in write order."""
    windows = {key: window for request in requests for key in request.status_keys()
               if (window := revision_window(store, key, start, end)) is not None}
    if not windows:
        return []
    first = min(window[0] for window in windows.values())
    last = max(window[1] for window in windows.values())
    posts = listen(store, requests, after=Position(first - 1), until_revision=last)
    return [n for n in posts if _inside(windows, n)]


def _inside(windows: dict[str, tuple[int, int]], notification: Notification) -> bool:
    """True when ``notification`` lies in the window of the status key it was posted with."""
    for status_key, (first, last) in windows.items():
        if notification.key.startswith(status_key):
            return first <= notification.revision <= last
    return False


__all__ = ["STATUS_TIME_FORMAT", "StatusChainTooLong", "new_status", "previous_revision", "replay",
           "revision_window", "status_after", "status_record"]
