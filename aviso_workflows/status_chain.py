"""The pyaviso status chain: which revisions a time window covers, and replays of such a window.

Every notify writes the status key ``base/`` with the time of the post (``date_time``), the revision
of the previous status (``prev_rev``) and, from the first status of a day on, the revision of the last
status of the previous day (``last_prev_day_rev``). A window in time is found by walking that chain
back from the newest status; its notifications are then the history between the first and last
status of the window, every post of it (a key posted twice is there twice).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING

from .errors import HistoryCompacted
from .etcd import KeyValue
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
    try:
        data = json.loads(status.value)
        when = dt.datetime.strptime(data["date_time"], STATUS_TIME_FORMAT)
    except (ValueError, KeyError, TypeError):
        return None
    return when, int(data.get("prev_rev") or 0), int(data.get("last_prev_day_rev") or 0)


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


__all__ = ["STATUS_TIME_FORMAT", "replay", "revision_window"]
