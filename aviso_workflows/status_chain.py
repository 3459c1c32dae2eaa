"""The pyaviso status chain: its status records, which revisions a time window covers, and replays of such a window.

Every notify writes the status key ``base/`` with the time of the post (``date_time``), the revision
of the previous status (``prev_rev``) and, from the first status of a day on, the revision of the last
status of the previous day (``last_prev_day_rev``). ``date_time`` grows with the revision along one
chain, so a window in time is found by a binary search over revisions (reading the status key as it
was at a revision), not by walking the chain status by status; its notifications are then the history
between the first and last status of the window, every post of it (a key posted twice is there twice).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from .backends.etcd_status import (
    STATUS_TIME_FORMAT,
    StatusChainTooLong,
    new_status,
    previous_revision,
    status_after,
    status_info,
    status_record,
)
from .errors import HistoryCompacted
from .etcd import KeyValue
from .listen import listen
from .notification import Notification, in_order, notification_from_kv
from .position import Position
from .request import Request

if TYPE_CHECKING:
    from .storelike import StoreLike

log = logging.getLogger(__name__)


#: Threads that search the windows of several status chains at once (each search is a few dozen reads).
SEARCH_THREADS = 4
#: A bound on the reads of one edge search: revisions are below 2**64, so bisection needs at most 64.
MAX_SEARCH_STEPS = 64
#: A window is watched, not read by ranges, when a watch from its first revision reads at most this many
#: times the window's own history to reach the head: the newest windows, where the watch costs the window.
WATCH_SPAN = 2

_T = TypeVar("_T")


class _Compacted:
    """A read at a revision whose history is compacted."""


_COMPACTED = _Compacted()


class _ChainReader:
    """The status key as it was at past revisions, each revision read once; remembers where history is compacted."""

    def __init__(self, store: StoreLike, key: str) -> None:
        self.store = store
        self.key = key
        self.reads: dict[int, KeyValue | None | _Compacted] = {}
        #: The highest revision found compacted (0: none).
        self.compacted_to = 0

    def at(self, revision: int) -> KeyValue | None | _Compacted:
        if revision not in self.reads:
            try:
                self.reads[revision] = self.store.gateway.get(self.key, revision=revision)[1]
            except HistoryCompacted:
                self.reads[revision] = _COMPACTED
                self.compacted_to = max(self.compacted_to, revision)
        return self.reads[revision]

    def time_at(self, revision: int) -> dt.datetime | None:
        """The time of the status in force at ``revision`` (None: none yet, unreadable, or compacted)."""
        status = self.at(revision)
        info = status_info(status) if isinstance(status, KeyValue) else None
        return info[0] if info is not None else None

    def status(self, revision: int) -> KeyValue:
        """The status in force at ``revision``, known to be a readable status of the chain."""
        status = self.at(revision)
        assert isinstance(status, KeyValue), f"{self.key} at {revision} was searched as a status"
        return status


def _first_revision(low: int, high: int, reached: Callable[[int], bool]) -> int:
    """The smallest revision in [low, high] for which ``reached`` holds (``high + 1`` when none does).

    ``reached`` must be monotonic: false up to some revision, true from there on. A status chain's
    times grow with its revisions, and compacted or earlier revisions count as not reached.
    """
    for _ in range(MAX_SEARCH_STEPS):
        if low > high:
            break
        middle = (low + high) // 2
        if reached(middle):
            high = middle - 1
        else:
            low = middle + 1
    return low


def revision_window(store: StoreLike, status_key: str, start: dt.datetime,
                    end: dt.datetime | None = None) -> tuple[int, int] | None:
    """Revisions of the first and last status posted in [start, end) under ``status_key``.

    The statuses of one chain are written in time order, so each edge of the window is found by a
    binary search over revisions, reading the status key as it was at a revision (about log2 of the
    revisions since the chain began, per edge), however long the chain. Where history is compacted it
    says so once and returns the part that can still be read. None when nothing was posted in the window.
    """
    _, newest = store.gateway.get(status_key)
    if newest is None:
        return None
    chain = _ChainReader(store, status_key)
    low, high = newest.create_revision or 1, newest.mod_revision
    first = _first_revision(low, high, lambda r: _not_before(chain.time_at(r), start))
    if first > high:
        return None
    readable = _past_compaction(chain, first, high, start)
    if readable is None:
        return None
    first = readable
    if end is None:
        return first, high
    after = _first_revision(first, high, lambda r: _not_before(chain.time_at(r), end))
    if after == first:
        return None
    return first, chain.status(after - 1).mod_revision


def _not_before(when: dt.datetime | None, edge: dt.datetime) -> bool:
    return when is not None and when >= edge


def _past_compaction(chain: _ChainReader, first: int, high: int, start: dt.datetime) -> int | None:
    """``first`` itself, or the first status after it when its own revision is compacted (warning once
    when the window may reach into compacted history); None when no later status exists."""
    if chain.compacted_to < first - 1:
        return first
    log.warning("replay of %s: history before revision %s is compacted; the window from %s is replayed from there",
                chain.key, chain.compacted_to + 1, start.strftime(STATUS_TIME_FORMAT))
    status = chain.status(first)
    if status.mod_revision == first:
        return first
    # The status in force here was posted before the compaction: its posts are gone, start at the next one.
    following = _first_revision(first + 1, high, lambda r: _moved_past(chain.at(r), status.mod_revision))
    return following if following <= high else None


def _moved_past(status: KeyValue | None | _Compacted, revision: int) -> bool:
    return isinstance(status, KeyValue) and status.mod_revision > revision


def replay(store: StoreLike, requests: list[Request], start: dt.datetime,
           end: dt.datetime | None = None) -> list[Notification]:
    """Every post between ``start`` and ``end`` (UTC, naive) that the requests match, in write order.

    A watch from a window's first revision gives its posts, but etcd's catch-up of a watch reads every
    revision from there to the head: an early window would cost the whole history written after it. So a
    window far from the head is read as the store held it at the window's last status (ranged reads pinned
    there), which costs the keys of the chain instead. A window near the head (the watch reads little more
    than the window), or whose snapshot cannot show every post (a key deleted or expired inside it), is
    watched: the watch sees every put however the key ended.
    """
    windows = revision_windows(store, sorted({key for request in requests for key in request.status_keys()}),
                               start, end)
    if not windows:
        return []
    head = store.gateway.current_revision()
    far = {key: window for key, window in windows.items() if _far_from(head, *window)}
    ranged = _in_parallel(lambda key: _window_posts(store, requests, key, *far[key]), list(far))
    found = [n for posts in ranged.values() if posts is not None for n in posts]
    watched = {key: window for key, window in windows.items() if ranged.get(key) is None}
    if watched:
        found += _watched_posts(store, requests, watched)
    return in_order(found)


def _far_from(head: int, first: int, last: int) -> bool:
    """True when a watch from ``first`` would read over WATCH_SPAN times the window's history to reach the head."""
    return head - first + 1 > WATCH_SPAN * (last - first + 1)


def _window_posts(store: StoreLike, requests: list[Request], status_key: str, first: int,
                  last: int) -> list[Notification] | None:
    """The posts of one chain's window [first, last] read at revision ``last``; None when that read
    cannot be shown to hold every post of the window (the caller then watches it)."""
    try:
        _, kvs = store.gateway.range_all(status_key, revision=last, min_mod_revision=first, max_mod_revision=last)
        _, opening = store.gateway.get(status_key, revision=first)
        versions = [older for kv in kvs if kv.key != status_key for older in _versions_since(store, kv, first)]
    except HistoryCompacted:  # compacted since the window was searched: the watch says what is left
        return None
    closing = next((kv for kv in kvs if kv.key == status_key), None)
    if not _every_post_seen(opening, closing, {kv.mod_revision for kv in versions}):
        return None
    return [n for kv in versions if (n := _match(requests, kv)) is not None]


def _versions_since(store: StoreLike, kv: KeyValue, first: int) -> list[KeyValue]:
    """``kv`` and its earlier versions written from revision ``first`` on: a key posted twice in a window
    was posted twice (the snapshot shows only its last version; each earlier one is read at the revision
    before the later one, as long as the key existed then)."""
    versions = [kv]
    while versions[-1].version > 1 and versions[-1].mod_revision - 1 >= first:
        _, older = store.gateway.get(kv.key, revision=versions[-1].mod_revision - 1)
        if older is None or older.mod_revision < first:
            break
        versions.append(older)
    return versions


def _every_post_seen(opening: KeyValue | None, closing: KeyValue | None, revisions: set[int]) -> bool:
    """True when the posts found carry one revision per status of the window.

    Every post writes the status key once with its data keys, so the status key's versions count the
    window's posts (its version at the last status minus the one at the first, plus one). A data key
    deleted, or rewritten after a deletion, inside the window leaves a post without a key in the snapshot:
    fewer revisions than statuses. A chain restarted inside the window (the status key deleted and
    written anew) counts its versions from one again, so it is not counted at all.
    """
    if opening is None or closing is None or opening.create_revision != closing.create_revision:
        return False
    return closing.version - opening.version + 1 == len(revisions)


def _match(requests: list[Request], kv: KeyValue) -> Notification | None:
    """The notification of ``kv`` for the first request that matches it, as a listen of the requests gives it."""
    for request in requests:
        status_keys = tuple(request.status_keys())
        if kv.key.startswith(status_keys) and kv.key not in status_keys:
            notification = notification_from_kv(request, kv)
            if notification is not None:
                return notification
    return None


def _watched_posts(store: StoreLike, requests: list[Request],
                   windows: dict[str, tuple[int, int]]) -> list[Notification]:
    """The posts of ``windows`` from a watch of their revisions (every put, even of keys deleted since)."""
    first = min(window[0] for window in windows.values())
    last = max(window[1] for window in windows.values())
    posts = listen(store, requests, after=Position(first - 1), until_revision=last)
    return [n for n in posts if _inside(windows, n)]


def revision_windows(store: StoreLike, status_keys: list[str], start: dt.datetime,
                     end: dt.datetime | None = None) -> dict[str, tuple[int, int]]:
    """The windows of several status chains (those with a post in [start, end)), searched in parallel."""
    found = _in_parallel(lambda key: revision_window(store, key, start, end), status_keys)
    return {key: window for key, window in found.items() if window is not None}


def _in_parallel(read: Callable[[str], _T], status_keys: list[str]) -> dict[str, _T]:
    """``read`` of each status chain, on SEARCH_THREADS threads when there are several (each is a few reads)."""
    if len(status_keys) <= 1:
        return {key: read(key) for key in status_keys}
    with ThreadPoolExecutor(min(SEARCH_THREADS, len(status_keys)), thread_name_prefix="replay-search") as pool:
        return dict(zip(status_keys, pool.map(read, status_keys), strict=True))


def _inside(windows: dict[str, tuple[int, int]], notification: Notification) -> bool:
    """True when ``notification`` lies in the window of the status key it was posted with."""
    for status_key, (first, last) in windows.items():
        if notification.key.startswith(status_key):
            return first <= notification.revision <= last
    return False


__all__ = ["STATUS_TIME_FORMAT", "StatusChainTooLong", "new_status", "previous_revision", "replay",
           "revision_window", "revision_windows", "status_after", "status_record"]
