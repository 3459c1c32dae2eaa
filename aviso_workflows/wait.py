"""Waits: released once the keys of a request exist, at once for data posted long ago.

A wait takes its feeds from the store's backend (:meth:`~aviso_workflows.backends.protocol.Backend.wait_feeds`):
on etcd, its share of the process's watch on the prefix its keys live under, after which it reads what
exists (every range pinned to one revision); on an aviso-server, one stream that replays history and goes
on live. The follower does the bookkeeping; this module only moves data in and out of it, in one loop for
a thread (:func:`wait`) and one for an asyncio loop without a thread of its own (:func:`wait_async`).

An outage — at the first read as later on — is ridden out within the wait's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import shared_reads, waiters
from .backends.protocol import WaitFeeds
from .errors import StoreUnavailable, TlsRefused, ValidationError, WaitTimeout
from .follow import Feed, Follower
from .notification import Notification
from .position import Position
from .request import Request, ready_prefix
from .watch import one_line

if TYPE_CHECKING:
    from .storelike import StoreLike

log = logging.getLogger(__name__)
#: The longest a waiting thread blocks for its next feed before it looks at its deadline again.
LOOK_EVERY = 1.0
#: Pauses between attempts of a first read that met an outage.
READ_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)
#: A bound on those attempts besides the wait's own timeout (about a month at the longest pause).
MAX_READ_ATTEMPTS = 1_300_000

Read = tuple[int, list[Notification]]


@dataclass(frozen=True)
class Progress:
    """Where a wait stands once it found one more key.

    ``ready`` is the progress to show and to trigger on: the keys found in request order with none missing
    before them (:func:`~aviso_workflows.request.ready_prefix`), so with steps 0, 6, 12, 18 and 30 found
    it is 4, and it reaches 5 only once step 24 is found too. ``found`` is the plain count (5 there).
    ``newest`` is the notification just found; ``last_ready`` the one of the prefix's last key (None while
    the first key is missing). A wait for any key (or an open request) has no order: ``ready`` is ``found``.
    """

    found: int
    total: int
    ready: int
    newest: Notification
    last_ready: Notification | None


ProgressCallback = Callable[[int, int, Notification], None]
ReadyCallback = Callable[[Progress], None]


class WaitResult(list[Notification]):
    """The notifications a wait found, in history order: a list, which also says what is ``missing`` when
    the wait was released at its deadline with only part of its keys (``min_found``)."""

    def __init__(self, found: Iterable[Notification] = (), missing: Iterable[str] = ()) -> None:
        super().__init__(found)
        self.missing = list(missing)

    @property
    def partial(self) -> bool:
        """Released at the deadline with keys still missing."""
        return bool(self.missing)


def check_min_found(min_found: Any, request: Request, mode: str = "all") -> int | None:
    """``min_found`` if it can release a wait for ``request`` at its deadline: 1 to the number of keys."""
    if min_found is None:
        return None
    if mode != "all":
        raise ValidationError("min_found", min_found, "only a wait for all keys can be released with part of them")
    total = request.count if request.is_complete else 0
    if isinstance(min_found, bool) or not isinstance(min_found, int) or not 1 <= min_found <= total:
        raise ValidationError("min_found", min_found, f"expected a whole number of keys from 1 to {total}")
    return min_found


def describe_missing(request: Request, keys: Sequence[str], shown: int = 20) -> str:
    """Missing keys by the fields that tell them apart (``step=3 step=5``), the first ``shown`` of them."""
    varying = [name for name in request.schema.key_fields if len(request.values.get(name, ())) > 1]
    words = []
    for key in keys[:shown]:
        fields = request.schema.parse_key(key) or {}
        words.append(",".join(f"{name}={fields.get(name, '?')}" for name in varying) or key)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return " ".join(words) + more


class _Tracker:
    """What every wait does besides waiting: its entry among the registered waiters (with ``who``), which
    follows the found count, and the release with part of the keys at the deadline (``min_found``)."""

    def __init__(self, store: StoreLike, request: Request, mode: str, timeout: float | None, known: list[Notification],
                 on_progress: ProgressCallback | None, min_found: int | None, who: Mapping[str, Any] | None,
                 on_ready: ReadyCallback | None = None) -> None:
        self.request = request
        self.min_found = check_min_found(min_found, request, mode)
        self.progress = on_progress
        self.ready = on_ready
        self.registration = None if who is None else self._register(store, request, mode, timeout, known, who)

    @staticmethod
    def _register(store: StoreLike, request: Request, mode: str, timeout: float | None, known: list[Notification],
                  who: Mapping[str, Any]) -> waiters.Registration:
        have = {n.key for n in known}
        ready = ready_prefix(request.keys(), have) if mode == "all" and request.is_complete else len(have)
        return waiters.register(store, request, who=who, mode=mode, found=len(have), ready=ready, timeout=timeout)

    def on_progress(self, progress: Progress) -> None:
        if self.registration is not None:
            self.registration.progress(progress.found, ready=progress.ready)
        if self.progress is not None:
            self.progress(progress.found, progress.total, progress.newest)
        if self.ready is not None:
            self.ready(progress)

    def released_short(self, timed_out: WaitTimeout) -> WaitResult:
        """At the deadline: what was found if that is at least ``min_found`` keys, else the timeout."""
        if self.min_found is None:
            raise timed_out
        have = {n.key for n in timed_out.found}
        if len(have) < self.min_found:
            raise WaitTimeout(f"{timed_out}; at least {self.min_found} are needed to release with part of them",
                              timed_out.found) from None
        missing = [key for key in self.request.keys() if key not in have]
        log.warning("released at the deadline with %d/%d keys of %s (min_found=%d); missing: %s", len(have),
                    self.request.count, self.request, self.min_found, describe_missing(self.request, missing))
        return WaitResult(timed_out.found, missing)

    def close(self, block: bool) -> None:
        """Remove the entry; ``block``: wait (bounded) for the removal if it is the process's last waiter."""
        if self.registration is not None:
            if block:
                self.registration.__exit__()
            else:
                self.registration.close()


class _Found:
    """What a wait has found so far, and whether that releases it."""

    def __init__(self, request: Request, mode: str, known: Iterable[Notification],
                 on_progress: ReadyCallback | None) -> None:
        if mode not in ("all", "any"):
            raise ValidationError("mode", mode, "expected 'all' or 'any'")
        if mode == "all":
            request.require_complete("waiting for all keys")
        self.request = request
        self.mode = mode
        self.wanted = request.keys() if request.is_complete else None
        self.total = len(self.wanted) if self.wanted is not None else 1
        self.on_progress = on_progress
        self.found: dict[str, Notification] = {n.key: n for n in known}
        self.ready = self._ready(0)

    def _ready(self, start: int) -> int:
        """The contiguous prefix of the wanted keys found so far (the plain count when there is no order)."""
        if self.mode != "all" or self.wanted is None:
            return len(self.found)
        return ready_prefix(self.wanted, self.found, start)

    def add(self, notifications: Iterable[Notification]) -> bool:
        """Count new notifications (in history order); True when the wait is released."""
        for notification in notifications:
            if notification.key not in self.found:
                self.found[notification.key] = notification
                self.ready = self._ready(self.ready)
                if self.on_progress is not None:
                    self.on_progress(self.progress(notification))
        return len(self.found) >= self.total if self.mode == "all" else bool(self.found)

    def progress(self, newest: Notification) -> Progress:
        """Where the wait stands, ``newest`` just found."""
        last_ready = None
        if self.ready:
            last_ready = self.found[self.wanted[self.ready - 1]] if self.wanted is not None and self.mode == "all" \
                else newest
        return Progress(len(self.found), self.total, self.ready, newest, last_ready)

    def ordered(self) -> list[Notification]:
        """Found notifications in history order."""
        return sorted(self.found.values(), key=lambda n: n.order)

    def timed_out(self, timeout: float | None, outage: Exception | None = None) -> WaitTimeout:
        """The error of a wait that ran out of time (``outage``: why the store could not be read meanwhile)."""
        why = f"; the store could not be read: {one_line(outage)}" if outage is not None else ""
        return WaitTimeout(f"timed out after {timeout:g} s with {len(self.found)}/{self.total} available for "
                           f"{self.request}{why}", self.ordered())


class _Deadline:
    """When a wait gives up (never, without a timeout)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    @property
    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        remaining = self.remaining
        return remaining is not None and remaining <= 0

    def slice(self, longest: float) -> float:
        """How long to block now: at most ``longest``, and not past the deadline."""
        remaining = self.remaining
        return longest if remaining is None else max(0.0, min(longest, remaining))


def _follower(request: Request) -> Follower:
    return Follower([request], Position(0), capacity=None, label=f"wait for {request}")


def _take(follower: Follower, feed: Feed) -> bool:
    """Feed the follower; True if the wait must read again instead (history compacted, or too far behind)."""
    if feed.kind == "resync":
        return True
    follower.feed(feed)
    return False


class _OutageReport:
    """Decides what a wait does when a read meets an outage: one WARNING, then pauses until the deadline."""

    def __init__(self, deadline: _Deadline, found: _Found) -> None:
        self.deadline = deadline
        self.found = found
        self.failures = 0

    def failed(self, error: StoreUnavailable) -> float:
        """How long to pause before reading again; raises once the wait is over or can never succeed."""
        if isinstance(error, TlsRefused):  # waiting will not mend a setting
            raise error
        if self.deadline.passed:
            raise self.found.timed_out(self.deadline.timeout, error) from None
        if self.failures >= MAX_READ_ATTEMPTS:
            raise error
        if not self.failures:
            until = "its timeout" if self.deadline.timeout is not None else "it is reachable"
            log.warning("a wait cannot read etcd now (%s); trying again until %s", one_line(error), until)
        self.failures += 1
        return self.deadline.slice(READ_RETRY_DELAYS[min(self.failures - 1, len(READ_RETRY_DELAYS) - 1)])

    def succeeded(self) -> None:
        if self.failures:
            log.info("a wait reads etcd again after %d failed attempts", self.failures)


def _read(store: StoreLike, request: Request, follower: Follower, deadline: _Deadline, found: _Found) -> None:
    """Read what exists into the follower, riding out an outage until the deadline."""
    report = _OutageReport(deadline, found)
    while True:  # bounded by the deadline and MAX_READ_ATTEMPTS
        try:
            revision, notifications = shared_reads.read(store, request, follower.frontier.resume_revision)
            break
        except StoreUnavailable as error:
            time.sleep(report.failed(error))
    report.succeeded()
    follower.on_found(notifications, revision)


def _until_ready(feeds: WaitFeeds, deadline: _Deadline, found: _Found) -> None:
    """Block until the feeds know their start; a wait may not read before (bounded by the deadline, but
    the store gets its usual request timeout even when the wait's own is shorter)."""
    limit = _Deadline(None if deadline.timeout is None else max(deadline.timeout, feeds.patience))
    while not feeds.ready(limit.slice(1.0)):
        if limit.passed:
            raise found.timed_out(deadline.timeout, feeds.last_error)


def wait(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
         known: Iterable[Notification] = (), on_progress: ProgressCallback | None = None,
         min_found: int | None = None, who: Mapping[str, Any] | None = None,
         on_ready: ReadyCallback | None = None) -> WaitResult:
    """Block until every key of ``request`` exists (``mode="any"``: at least one matching key).

    Returns the notifications found, in history order. Raises WaitTimeout (with ``found``) after
    ``timeout`` seconds, unless ``min_found`` keys were found by then: the result then names the
    ``missing`` keys (and a WARNING says so). With ``who`` (fields saying who waits), the wait is listed
    among the registered waiters (waiters.py) while it waits.

    As keys are found, ``on_progress(found, total, notification)`` gets the plain count and the newest
    notification (keys come in any order: not for deciding what may start), and ``on_ready`` a
    :class:`Progress` whose ``ready`` counts the keys found in request order with no gap before them.
    """
    known = list(known)
    tracker = _Tracker(store, request, mode, timeout, known, on_progress, min_found, who, on_ready)
    try:
        return WaitResult(_wait(store, request, mode=mode, timeout=timeout, known=known,
                                on_progress=tracker.on_progress))
    except WaitTimeout as timed_out:
        return tracker.released_short(timed_out)
    finally:
        tracker.close(block=True)


def _wait(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
          known: Iterable[Notification] = (),
          on_progress: ReadyCallback | None = None) -> list[Notification]:
    """Block until every key of ``request`` exists (``mode="any"``: at least one matching key).

    Returns the notifications found, in history order. Keys already posted are found at once; the
    rest within milliseconds of their post. Raises WaitTimeout (with ``found``) after ``timeout``
    seconds. ``known`` notifications (found earlier) count as found already.
    """
    found, follower, deadline = _Found(request, mode, known, on_progress), _follower(request), _Deadline(timeout)
    feeds = store.backend.wait_feeds(request, found.wanted)
    feeds.start()
    try:
        _until_ready(feeds, deadline, found)
        if feeds.reads_state:
            _read(store, request, follower, deadline, found)
        while not found.add(follower.drain()):
            if deadline.passed:
                raise found.timed_out(timeout, feeds.last_error)
            feed = feeds.get(deadline.slice(LOOK_EVERY))
            if feed is not None and _take(follower, feed) and feeds.reads_state:
                _read(store, request, follower, deadline, found)
        return found.ordered()
    finally:
        rest = feeds.detach()
        if rest is not None:
            rest()


# -- asyncio ---------------------------------------------------------------------------------------
#: The threads reading the store for asyncio waiters: few, so their keep-alive connections to etcd are few.
_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aviso-read")
#: The thread stopping feeds (shared watches, streams) for asyncio waiters (never the loop's own thread).
_WATCH_KEEPERS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aviso-watch-keeper")


class _ReadBatch:
    """The reads of the asyncio waiters of one loop and store, gathered into shared transactions.

    A waiter's read joins the batch being gathered; one worker thread reads a whole batch while the
    next one gathers, so a thousand triggers starting together cost a few transactions, not a
    thousand requests.
    """

    _batches: dict[tuple[asyncio.AbstractEventLoop, Any], _ReadBatch] = {}
    _lock = threading.Lock()

    def __init__(self, store: StoreLike, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.pending: list[tuple[Request, asyncio.Future[Read]]] = []
        self.draining: asyncio.Task[None] | None = None

    @classmethod
    async def read(cls, store: StoreLike, request: Request) -> Read:
        """What :meth:`Store.read` returns for ``request``, read together with the other waiters' requests."""
        loop = asyncio.get_running_loop()
        with cls._lock:
            for stale in [key for key in cls._batches if key[0].is_closed()]:
                del cls._batches[stale]
            batch = cls._batches.setdefault((loop, (store.backend.identity, store.config.max_txn_ops)),
                                            cls(store, loop))
        future: asyncio.Future[Read] = loop.create_future()
        batch.pending.append((request, future))
        if batch.draining is None or batch.draining.done():
            batch.draining = loop.create_task(batch._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            taken, self.pending = self.pending, []
            try:
                answers = await self.loop.run_in_executor(_READERS, self.store.read_many, [r for r, _ in taken])
            except Exception as error:  # noqa: BLE001 - every waiter of the batch gets the read's error
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), answer in zip(taken, answers):
                if not future.done():
                    future.set_result(answer)


async def _read_async(store: StoreLike, request: Request, follower: Follower, deadline: _Deadline,
                      found: _Found) -> None:
    """:func:`_read` in a shared read of the loop's waiters; the pauses are the loop's, not a thread's."""
    report = _OutageReport(deadline, found)
    while True:  # bounded by the deadline and MAX_READ_ATTEMPTS
        try:
            revision, notifications = await _ReadBatch.read(store, request)
            break
        except StoreUnavailable as error:
            await asyncio.sleep(report.failed(error))
    report.succeeded()
    follower.on_found(notifications, revision)


async def _until_ready_async(feeds: WaitFeeds, deadline: _Deadline, found: _Found) -> None:
    """:func:`_until_ready` without blocking the loop: look, and sleep a little longer each time."""
    limit = _Deadline(None if deadline.timeout is None else max(deadline.timeout, feeds.patience))
    pause = 0.002
    while not feeds.ready(0) and not limit.passed:
        await asyncio.sleep(limit.slice(pause))
        pause = min(2 * pause, 0.1)
    if limit.passed and not feeds.ready(0):
        raise found.timed_out(deadline.timeout, feeds.last_error)


async def wait_async(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
                     known: Iterable[Notification] = (), on_progress: ProgressCallback | None = None,
                     min_found: int | None = None, who: Mapping[str, Any] | None = None,
                     on_ready: ReadyCallback | None = None) -> WaitResult:
    """:func:`wait` in an asyncio loop (``min_found``, ``who``, ``on_progress`` and ``on_ready`` as there):
    registering never blocks the loop, the process's keeper thread writes the entry."""
    known = list(known)
    tracker = _Tracker(store, request, mode, timeout, known, on_progress, min_found, who, on_ready)
    try:
        return WaitResult(await _wait_async(store, request, mode=mode, timeout=timeout, known=known,
                                            on_progress=tracker.on_progress))
    except WaitTimeout as timed_out:
        return tracker.released_short(timed_out)
    finally:
        tracker.close(block=False)


async def _wait_async(store: StoreLike, request: Request, *, mode: str = "all", timeout: float | None = None,
                      known: Iterable[Notification] = (),
                      on_progress: ReadyCallback | None = None) -> list[Notification]:
    """The asyncio form of :func:`wait`, for triggers: the shared watch feeds an asyncio queue, and
    the reads of waiters starting together share transactions in a worker thread, so thousands of
    waiters need no thread of their own and open no connection of their own.
    """
    found, follower, deadline = _Found(request, mode, known, on_progress), _follower(request), _Deadline(timeout)
    loop = asyncio.get_running_loop()
    feeds = store.backend.wait_feeds(request, found.wanted, loop)
    feeds.start()  # no I/O: a stream or a new shared watch starts in a thread of its own
    try:
        await _until_ready_async(feeds, deadline, found)
        if feeds.reads_state:
            await _read_async(store, request, follower, deadline, found)
        while not found.add(follower.drain()):
            try:
                feed = await asyncio.wait_for(feeds.aget(), deadline.remaining)
            except TimeoutError:
                raise found.timed_out(timeout, feeds.last_error) from None
            if _take(follower, feed) and feeds.reads_state:
                await _read_async(store, request, follower, deadline, found)
        return found.ordered()
    finally:
        rest = feeds.detach()  # on the loop: cheap; what may block (a watch's or a stream's end) in a thread
        if rest is not None:
            await loop.run_in_executor(_WATCH_KEEPERS, rest)


__all__ = ["Progress", "WaitResult", "check_min_found", "describe_missing", "wait", "wait_async"]
